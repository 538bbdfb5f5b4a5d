"""The console's archive: every sent digest with its counts and its rendered copy."""

from __future__ import annotations

from fastapi import APIRouter

from newsletter.console.security import ConsoleRoute

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)
