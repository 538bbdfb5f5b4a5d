"""What a reader would get now, for editors, through the same rendering path as a send."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.config import get_settings
from newsletter.errors import InvalidInput
from newsletter.models import Cadence, Post, post_tags
from newsletter.personalize import fill
from newsletter.planning import pending_posts
from newsletter.rendering import render_digest
from newsletter.sending import personal_values
from newsletter.tags import existing_tags, parse_tag_names
from subscribers.cadence import parse_cadence
from subscribers.models import Subscriber
from subscribers.services import get_by_email

RECENT_LIMIT = 10


@dataclass(frozen=True)
class Preview:
    subject: str
    html: str
    text: str
    posts: list[Post]
    pending: bool


def _recent_for_tags(session: Session, tag_ids: list[int]) -> list[Post]:
    query = (
        select(Post)
        .join(post_tags, post_tags.c.post_id == Post.id)
        .where(post_tags.c.tag_id.in_(tag_ids))
        .distinct()
        .order_by(Post.received_at.desc(), Post.id.desc())
        .limit(RECENT_LIMIT)
    )
    return list(session.scalars(query))


def build_preview(
    session: Session,
    tags: str | None,
    frequency: str | None,
    subscriber_email: str | None,
    now: dt.datetime,
) -> Preview:
    """The subscriber's pending digest, or the recent posts for the tags if nothing is pending."""
    if subscriber_email:
        subscriber = get_by_email(session, subscriber_email)
        cadence = parse_cadence(frequency) if frequency else subscriber.cadence
        pending_ids = pending_posts(session, [subscriber.id], now).get(subscriber.id, [])
        posts = list(session.scalars(select(Post).where(Post.id.in_(pending_ids))))
        session.expunge(subscriber)
    else:
        if not tags:
            raise InvalidInput("give --tags or --subscriber")
        cadence = parse_cadence(frequency or Cadence.IMMEDIATE)
        subscriber = Subscriber(
            email="reader@example.com",
            name="",
            uid="preview",
            cadence=cadence,
            timezone="UTC",
            send_hour=get_settings().default_send_hour,
        )
        subscriber.tags = existing_tags(session, parse_tag_names(tags))
        posts = []
    pending = bool(posts)
    if not posts:
        posts = _recent_for_tags(session, [t.id for t in subscriber.tags])
    if not posts:
        raise InvalidInput("no posts carry these tags yet: nothing to preview")
    subscriber.cadence = cadence
    rendered = render_digest(posts, cadence)
    values = personal_values(subscriber, get_settings())
    return Preview(
        subject=fill(rendered.subject, values, escape=False),
        html=fill(rendered.html, values, escape=True),
        text=fill(rendered.text, values, escape=False),
        posts=posts,
        pending=pending,
    )
