"""Posts for editors: the recent list, hold and release, corrections before sending,
and the upcoming sends."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from newsletter.console.security import ConsoleRoute, EditorDep
from newsletter.console.views import page
from newsletter.db import session_scope
from newsletter.posts import recent_posts

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)


@router.get("/posts")
def posts(staff: EditorDep) -> HTMLResponse:
    with session_scope() as session:
        rows = recent_posts(session, 50)
        return page("posts.html", staff, "posts", posts=rows)
