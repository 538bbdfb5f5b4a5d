"""Feeds for admins: their last poll result, and a poll on demand."""

from __future__ import annotations

from fastapi import APIRouter

from newsletter.console.security import ConsoleRoute

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)
