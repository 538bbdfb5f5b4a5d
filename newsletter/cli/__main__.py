"""`python -m newsletter.cli`: the `newsletter` command without its installed script."""

from newsletter.cli import main

main()
