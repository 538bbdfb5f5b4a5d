"""What a reader would get now, for editors, through the same rendering path as a send.

A preview for a tag set belongs to no reader: its preferences and unsubscribe links
open a page explaining that they are samples, never "this subscription no longer
exists". Before the first post exists, the console can preview sample posts, built
in memory and never stored.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.config import get_settings
from newsletter.delivery.compose import digest_headers, message_for, personal_values
from newsletter.delivery.mime import OutgoingMessage, new_message_id
from newsletter.delivery.personalise import fill
from newsletter.delivery.planning import pending_posts
from newsletter.delivery.rendering import render_digest
from newsletter.errors import InvalidInput
from newsletter.models import Cadence, Delivery, Digest, Post, Tag, post_tags
from newsletter.tags import existing_tags, parse_tag_names
from newsletter.text import one_line
from subscribers.cadence import parse_cadence
from subscribers.models import Subscriber
from subscribers.services import get_by_email

RECENT_LIMIT = 10
SAMPLE_LINK_PATH = "/admin/preview/sample-link"
SAMPLE_POSTS = (
    ("Sample: a first post", "A sample summary: the first lines of a real post go here."),
    ("Sample: a second post", "Sample posts show the layout before any post exists."),
)


@dataclass(frozen=True)
class Preview:
    subject: str
    html: str
    text: str
    posts: list[Post]
    pending: bool
    # The reader's copy exactly as it would go on the wire (headers included).
    message: OutgoingMessage
    # The list headers of that copy, for a test copy sent to someone else.
    headers: dict[str, str]
    # The posts are samples built in memory: nothing was published yet.
    sample: bool = False


def sample_link(which: str) -> str:
    """Where a sample preview's links lead: a page saying what the real link would do."""
    return f"{get_settings().public_base_url}{SAMPLE_LINK_PATH}?link={which}"


def sample_posts(tag_names: list[str], now: dt.datetime) -> list[Post]:
    """Posts that look like real ones, clearly marked, never added to a session."""
    tags = [Tag(name=name, slug=name) for name in tag_names]
    return [
        Post(
            id=-n,
            guid=f"sample-{n}",
            title=title,
            url=sample_link("post"),
            author=None,
            summary=summary,
            published_at=now - dt.timedelta(hours=n),
            received_at=now,
            tags=tags,
        )
        for n, (title, summary) in enumerate(SAMPLE_POSTS, start=1)
    ]


def _recent_for_tags(session: Session, tag_ids: list[int]) -> list[Post]:
    query = (
        select(Post)
        .join(post_tags, post_tags.c.post_id == Post.id)
        .where(post_tags.c.tag_id.in_(tag_ids), Post.held_at.is_(None))
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
    samples: bool = False,
    sample_links: bool = False,
) -> Preview:
    """The subscriber's pending digest, or the recent posts for the tags if nothing is pending.

    With `samples`, a tag set no post carries yet is previewed with sample posts. With
    `sample_links` (a test copy mailed to staff), a reader's own links are replaced too:
    a click in someone else's inbox must not unsubscribe them.
    """
    settings = get_settings()
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
            send_hour=settings.default_send_hour,
        )
        subscriber.tags = existing_tags(session, parse_tag_names(tags))
        posts = []
    pending = bool(posts)
    if not posts:
        posts = _recent_for_tags(session, [t.id for t in subscriber.tags])
    sample = not posts and samples and not subscriber_email
    if sample:
        posts = sample_posts([t.name for t in subscriber.tags], now)
    if not posts and subscriber_email:
        raise InvalidInput(
            f"nothing new for {subscriber.email}, and no post carries their tags yet"
        )
    if not posts:
        raise InvalidInput("no posts carry these tags yet: nothing to preview")
    subscriber.cadence = cadence
    rendered = render_digest(posts, cadence).with_web_url(sample_link("web-copy"))
    values = personal_values(subscriber, settings)
    if sample_links or not subscriber_email:
        values["PREFERENCES_URL"] = sample_link("preferences")
        values["UNSUBSCRIBE_URL"] = sample_link("unsubscribe")
    digest = Digest(subject=rendered.subject, html=rendered.html, text=rendered.text)
    delivery = Delivery(message_id=new_message_id(settings.from_))
    return Preview(
        subject=one_line(fill(rendered.subject, values, escape=False), 300),
        html=fill(rendered.html, values, escape=True),
        text=fill(rendered.text, values, escape=False),
        posts=posts,
        pending=pending,
        message=message_for(delivery, digest, subscriber, settings, values),
        headers=digest_headers(values["UNSUBSCRIBE_URL"], settings),
        sample=sample,
    )
