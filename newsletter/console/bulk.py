"""Bulk actions, CSV import and export over the subscriber list's filtered selection."""

from __future__ import annotations

from fastapi import APIRouter

from newsletter.console.security import ConsoleRoute

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)
