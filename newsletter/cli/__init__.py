"""The `newsletter` command: one module per command group, shared helpers in `common`.

Errors go to stderr with exit status 2 and change nothing.
"""

from __future__ import annotations

import typer

from newsletter.cli import (
    bounces,
    db,
    deliveries,
    digests,
    dkim,
    doctor,
    feeds,
    posts,
    serve,
    subscribers,
    suppressions,
    tags,
    tokens,
    users,
)
from newsletter.cli.common import setup

app = typer.Typer(no_args_is_help=True, help="Per-tag email digests on each reader's cadence.")
app.callback()(setup)
app.command("preview")(digests.preview)
app.command("serve")(serve.serve)
app.command("demo")(serve.demo)
app.command("doctor")(doctor.doctor)
app.add_typer(db.app, name="db")
app.add_typer(posts.app, name="posts")
app.add_typer(tags.app, name="tags")
app.add_typer(subscribers.app, name="subscribers")
app.add_typer(digests.app, name="digests")
app.add_typer(deliveries.app, name="deliveries")
app.add_typer(tokens.app, name="tokens")
app.add_typer(feeds.app, name="feeds")
app.add_typer(suppressions.app, name="suppressions")
app.add_typer(users.app, name="users")
app.add_typer(dkim.app, name="dkim")
app.add_typer(bounces.app, name="bounces")


def main() -> None:
    app()


__all__ = ["app", "main"]
