"""`newsletter serve` and `newsletter demo`: the web app, and the whole pipeline locally."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from newsletter.cli.common import console, user_errors


@user_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run the web app (subscriber pages and API)."""
    import uvicorn

    from newsletter.config import settings_or_exit
    from newsletter.web.app import server_log_config

    # Bad settings stop the server here, not as an error on every request.
    settings_or_exit()
    uvicorn.run(
        "newsletter.web.app:create_app",
        factory=True,
        host=host,
        port=port,
        # The app decides who the client is (NEWSLETTER_TRUSTED_PROXIES); uvicorn's
        # own default would believe X-Forwarded-For from any local peer.
        proxy_headers=False,
        forwarded_allow_ips="",
        log_config=server_log_config(),
    )


@user_errors
def demo(
    directory: Annotated[Path, typer.Option(help="Where outbox/ and the demo database go.")] = Path(
        "."
    ),
) -> None:
    """Run the whole pipeline on SQLite with a built-in SMTP server; mail lands in ./outbox/."""
    from newsletter.demo import run_demo

    run_demo(directory, console)
