"""App factory: tests, `newsletter serve` and any ASGI server build their own instance."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from newsletter import __version__
from newsletter.config import get_settings
from newsletter.errors import InvalidInput, NotFound
from newsletter.web import api, hooks, subscriber_pages, subscribers_api
from newsletter.web.rendering import render_page


def create_app() -> FastAPI:
    app = FastAPI(title="Tag-digest newsletter", version=__version__)
    app.include_router(subscriber_pages.router)
    app.include_router(subscribers_api.router)
    app.include_router(api.router)
    app.include_router(hooks.router)

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
