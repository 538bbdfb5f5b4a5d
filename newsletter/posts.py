"""Posts in: validation, sanitising and tagging, then the trigger after commit."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.db import utcnow
from newsletter.dispatch import enqueue_after_commit
from newsletter.errors import InvalidInput
from newsletter.models import Post
from newsletter.sanitize import clean_html, html_to_text
from newsletter.tags import get_or_create_tags, parse_tag_names
from newsletter.text import one_line

SUMMARY_LENGTH = 400


@dataclass
class PostInput:
    """A post as any source (CLI, API, feed, webhook) hands it in, before validation."""

    title: str
    url: str
    tags: str | list[str] = field(default_factory=list)
    summary: str = ""
    body_html: str = ""
    author: str | None = None
    published_at: str | dt.datetime | None = None
    guid: str | None = None


def parse_datetime(value: str | dt.datetime | None, default: dt.datetime) -> dt.datetime:
    """ISO 8601 in, aware UTC out; a naive value is taken as UTC."""
    if value is None or value == "":
        return default
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(
                f"cannot read date {value!r}: use ISO 8601, like 2026-05-01T09:30:00+02:00"
            ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def validate_url(url: str, what: str = "URL") -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc or any(c in url for c in " \r\n"):
        raise InvalidInput(f"{what} must be an absolute http(s) URL, got {url!r}")
    if len(url) > 2000:
        raise InvalidInput(f"{what} is longer than 2000 characters")
    return url


def add_post(session: Session, data: PostInput, now: dt.datetime | None = None) -> Post:
    """Store a new post and schedule its planning for after the commit.

    Raises InvalidInput, leaving the session untouched, for any bad field or a known guid.
    """
    now = now or utcnow()
    title = one_line(data.title, 500)
    if not title:
        raise InvalidInput("a post needs a title")
    url = validate_url(data.url, "post URL")
    tag_names = parse_tag_names(data.tags)
    published_at = parse_datetime(data.published_at, now)
    guid = one_line(data.guid or url, 512)
    if session.scalar(select(Post.id).where(Post.guid == guid)) is not None:
        raise InvalidInput(f"a post with guid {guid!r} already exists")
    body_html = clean_html(data.body_html, base_url=url) if data.body_html else ""
    summary = html_to_text(data.summary) if data.summary else html_to_text(body_html)
    author = one_line(data.author, 255) if data.author else None

    post = Post(
        guid=guid,
        title=title,
        url=url,
        author=author or None,
        summary=_shorten(summary, SUMMARY_LENGTH),
        body_html=body_html,
        published_at=published_at,
        received_at=now,
    )
    post.tags = get_or_create_tags(session, tag_names)
    session.add(post)
    session.flush()
    enqueue_after_commit(session, "post_published", post.id)
    return post


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",.;:") + "\u2026"


def recent_posts(session: Session, limit: int = 50) -> list[Post]:
    return list(session.scalars(select(Post).order_by(Post.received_at.desc()).limit(limit)))
