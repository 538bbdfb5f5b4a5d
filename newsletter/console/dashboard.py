"""The console's first page: readers, sends and failures at a glance."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from newsletter.console.security import ConsoleRoute, EditorDep
from newsletter.console.views import page

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)


@router.get("/")
def dashboard(staff: EditorDep) -> HTMLResponse:
    return page("dashboard.html", staff, "dashboard")
