"""Web pages from `templates/web/`, with the site name every page shows."""

from __future__ import annotations

from typing import Any

from fastapi.responses import HTMLResponse

from newsletter.config import get_settings
from newsletter.templating import environment


def render_page(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = (
        environment().get_template(template).render(site_name=get_settings().site_name, **context)
    )
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})
