"""The public archive: sent digests per listed tag as web pages, with an Atom feed,
when NEWSLETTER_PUBLIC_ARCHIVE is on."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
