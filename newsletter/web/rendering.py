"""Web pages from `templates/web/`, with the site name (and its link) every page shows."""

from __future__ import annotations

from typing import Any

from fastapi.responses import HTMLResponse

from newsletter.config import get_settings
from newsletter.templating import environment


def render_page(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    settings = get_settings()
    # The site name links to the blog (site_url), or to this app when there is none.
    site_url = settings.site_url or f"{settings.public_base_url}/"
    site = {"site_name": settings.site_name, "site_url": site_url}
    html = environment().get_template(template).render(**site, **context)
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
