"""The console's routers, one module per page family, in the order the app mounts them."""

from __future__ import annotations

from fastapi import APIRouter

from newsletter.console import (
    archive,
    bulk,
    dashboard,
    feeds,
    posts,
    preview,
    subscribers,
    suppressions,
    tags,
    tokens,
    views,
)

CONSOLE_ROUTERS: tuple[APIRouter, ...] = (
    views.router,
    dashboard.router,
    posts.router,
    preview.router,
    archive.router,
    tags.router,
    subscribers.router,
    bulk.router,
    suppressions.router,
    feeds.router,
    tokens.router,
)
