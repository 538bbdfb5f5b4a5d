"""API tokens for admins: created with the secret shown once, and revoked."""

from __future__ import annotations

from fastapi import APIRouter

from newsletter.console.security import ConsoleRoute

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)
