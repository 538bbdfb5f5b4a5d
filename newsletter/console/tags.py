"""Tags for editors and admins: rename, merge, describe, list on the sign-up page."""

from __future__ import annotations

from fastapi import APIRouter

from newsletter.console.security import ConsoleRoute

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)
