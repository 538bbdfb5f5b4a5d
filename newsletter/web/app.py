"""App factory: tests, `newsletter serve` and any ASGI server build their own instance."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter import __version__, stats
from newsletter.config import get_settings, settings_or_exit
from newsletter.console.routes import CONSOLE_ROUTERS
from newsletter.errors import InvalidInput, NotFound
from newsletter.redaction import RedactingFilter
from newsletter.templating import templates_dir
from newsletter.web import (
    api,
    archive,
    bounce_hooks,
    docs,
    hooks,
    subscriber_pages,
    subscribers_api,
)
from newsletter.web.rendering import render_page

# Pages load styles and scripts from /static only; nothing may frame them, and no
# link token leaks to another site through the Referer header.
PAGE_CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
# /docs and /redoc load their viewer from the app itself (web/docs.py) and start it
# with an inline script: inline allowed there, but nothing from another origin.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
DOCS_PATHS = ("/docs", "/redoc")
SECURITY_HEADERS = {
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}


class SecurityHeaders:
    """Adds CSP, Referrer-Policy, X-Content-Type-Options and X-Frame-Options to every
    response (a plain ASGI middleware: it never buffers or delays a body)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        csp = DOCS_CSP if path.startswith(DOCS_PATHS) else PAGE_CSP
        wanted = {"content-security-policy": csp, **SECURITY_HEADERS}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.decode("latin-1").lower() for name, _ in headers}
                headers += [
                    (name.encode("latin-1"), value.encode("latin-1"))
                    for name, value in wanted.items()
                    if name not in present
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def server_log_config() -> dict[str, Any]:
    """uvicorn's logging set-up, with link tokens redacted from every line it writes.

    The access log prints each path, and /unsubscribe/<token> is a key to a reader's
    subscription: whoever reads the logs must not be able to use it.
    """
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": RedactingFilter}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact")
    return config


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """At start-up the dashboard's counts are made in the background (newsletter.stats)."""
    stats.warm_up()
    yield


def create_app() -> FastAPI:
    # Any ASGI server building the app refuses to start on bad settings, rather than
    # answering 500 to every request.
    settings_or_exit()
    app = FastAPI(
        title="Tag-digest newsletter",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    docs.install_docs(app)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=templates_dir() / "web" / "static"), name="static")
    app.include_router(subscriber_pages.router)
    app.include_router(subscribers_api.router)
    app.include_router(api.router)
    app.include_router(hooks.router)
    app.include_router(bounce_hooks.router)
    app.include_router(archive.router)
    for router in CONSOLE_ROUTERS:
        app.include_router(router)

    @app.exception_handler(InvalidInput)
    async def invalid_input(request: Request, exc: InvalidInput) -> HTMLResponse:
        return render_page(
            "web/error.html", status_code=400, title="Link not valid", message=str(exc)
        )

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> HTMLResponse:
        return render_page("web/error.html", status_code=404, title="Not found", message=str(exc))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok", "site": get_settings().site_name}

    return app
