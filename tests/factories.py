"""Small builders for rows, through the same services users go through."""

from __future__ import annotations

import datetime as dt
import itertools

from newsletter.db import session_scope
from newsletter.posts import PostInput, add_post
from newsletter.tags import get_or_create_tags, parse_tag_names
from subscribers.services import SubscriberInput, add_subscriber

_counter = itertools.count(1)


def make_tags(names: str) -> None:
    with session_scope() as session:
        get_or_create_tags(session, parse_tag_names(names))


def make_subscriber(
    email: str,
    tags: str,
    cadence: str = "immediate",
    now: dt.datetime | None = None,
    timezone: str = "UTC",
    send_hour: int = 8,
    send_weekday: int | str = 0,
    name: str = "",
) -> int:
    make_tags(tags)
    with session_scope() as session:
        data = SubscriberInput(email, tags, cadence, name, timezone, send_hour, send_weekday)
        return add_subscriber(session, data, now=now).id


def make_post(tags: str, now: dt.datetime | None = None, title: str | None = None) -> int:
    n = next(_counter)
    data = PostInput(
        title=title or f"Post number {n}",
        url=f"https://blog.example.org/posts/{n}/",
        tags=tags,
        summary=f"Summary of post {n}.",
        author="Marta Reis",
    )
    with session_scope() as session:
        return add_post(session, data, now=now).id
