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


# An email shown in a sandboxed frame on this site: its inline styles and remote
# images, no script, no form, and only this site may frame it.
FRAME_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)


def framed(html: str) -> HTMLResponse:
    """An email's HTML for a sandboxed frame on this site, under the frame's own policy."""
    response = HTMLResponse(html)
    response.headers["content-security-policy"] = FRAME_CSP
    response.headers["x-frame-options"] = "SAMEORIGIN"
    response.headers["cache-control"] = "no-store"
    return response
