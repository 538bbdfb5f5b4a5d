"""Adding, listing and removing subscribers; every write validates first and writes whole."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.config import get_settings
from newsletter.db import utcnow
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import Cadence
from newsletter.tags import existing_tags, parse_tag_names
from newsletter.text import has_line_break, one_line
from subscribers.cadence import next_slot, parse_cadence, parse_hour, parse_timezone, parse_weekday
from subscribers.models import Subscriber, SubscriberStatus


def normalize_email(raw: str) -> str:
    """A deliverable-looking address, lower-cased, so one person is one row.

    Providers treat the local part case-insensitively in practice; keeping two rows
    for Ana@x and ana@x would mail one person twice.
    """
    if has_line_break(raw):
        raise InvalidInput("invalid email address: it contains a line break")
    try:
        result = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput(f"invalid email address {raw.strip()!r}: {exc}") from None
    return result.normalized.lower()


@dataclass
class SubscriberInput:
    email: str
    tags: str | Sequence[str]
    cadence: str = "immediate"
    name: str = ""
    timezone: str = "UTC"
    send_hour: int | str | None = None
    send_weekday: int | str | None = None
    confirmed: bool = True


def add_subscriber(
    session: Session, data: SubscriberInput, now: dt.datetime | None = None
) -> Subscriber:
    """Create a subscriber following existing tags; InvalidInput leaves nothing written."""
    now = now or utcnow()
    settings = get_settings()
    email = normalize_email(data.email)
    cadence = parse_cadence(data.cadence)
    timezone = parse_timezone(data.timezone or "UTC")
    hour = parse_hour(settings.default_send_hour if data.send_hour is None else data.send_hour)
    weekday = parse_weekday(
        settings.default_send_weekday if data.send_weekday is None else data.send_weekday
    )
    names = parse_tag_names(data.tags)
    if not names:
        raise InvalidInput("a subscriber must follow at least one tag")
    tags = existing_tags(session, names)
    if session.scalar(select(Subscriber.id).where(Subscriber.email == email)) is not None:
        raise InvalidInput(f"{email} is already subscribed")

    subscriber = Subscriber(
        email=email,
        name=one_line(data.name, 200),
        cadence=cadence,
        timezone=timezone,
        send_hour=hour,
        send_weekday=weekday,
        status=SubscriberStatus.ACTIVE if data.confirmed else SubscriberStatus.PENDING,
        subscribed_at=now,
        confirmed_at=now if data.confirmed else None,
        next_digest_at=next_slot(cadence, timezone, hour, weekday, now),
    )
    subscriber.tags = tags
    session.add(subscriber)
    session.flush()
    return subscriber


def get_by_email(session: Session, email: str) -> Subscriber:
    normalized = normalize_email(email)
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == normalized))
    if subscriber is None:
        raise NotFound(f"no subscriber {normalized}")
    return subscriber


def remove_subscriber(session: Session, email: str) -> None:
    """Delete the subscriber and, by cascade, their preferences and ledger rows."""
    session.delete(get_by_email(session, email))
    session.flush()


def list_subscribers(
    session: Session, status: SubscriberStatus | None = None, limit: int | None = None
) -> list[Subscriber]:
    query = select(Subscriber).order_by(Subscriber.email)
    if status is not None:
        query = query.where(Subscriber.status == status)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def count_active(session: Session) -> int:
    query = select(func.count()).where(Subscriber.status == SubscriberStatus.ACTIVE)
    return int(session.scalar(query) or 0)


def cadence_label(cadence: Cadence) -> str:
    return {"immediate": "as soon as posts appear", "daily": "daily", "weekly": "weekly"}[
        cadence.value
    ]


def by_uid(session: Session, uid: str) -> Subscriber:
    subscriber = session.scalar(select(Subscriber).where(Subscriber.uid == uid))
    if subscriber is None:
        raise NotFound("this subscription no longer exists")
    return subscriber


def unsubscribe(session: Session, subscriber: Subscriber, now: dt.datetime | None = None) -> None:
    """Stop all mail at once: digests already planned are skipped at send time."""
    if subscriber.status is not SubscriberStatus.UNSUBSCRIBED:
        subscriber.status = SubscriberStatus.UNSUBSCRIBED
        subscriber.unsubscribed_at = now or utcnow()
        subscriber.next_digest_at = None
    session.flush()
