"""What a bounce or complaint does to a reader, and the record it leaves.

- A hard bounce suppresses the address at once.
- Soft bounces count: `soft_bounce_limit` of them within `soft_bounce_window_days`
  (one per delivery, so an MTA's "still trying" warnings and its final failure for
  one message count once) suppress the address as a hard bounce would.
- A complaint suppresses the address and unsubscribes the reader.

Each event is recorded in `bounce_events` with its delivery, its reader and the raw
diagnostic; an event already recorded (same key) changes nothing. A report that
names no delivery (no VERP token, no known Message-ID) is applied only to an address
that is a reader here: anyone can mail the bounce address, and only a token proves a
report answers our mail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.bounces.events import BounceEvent
from newsletter.bounces.models import BounceRecord
from newsletter.config import Settings
from newsletter.errors import InvalidInput
from newsletter.models import Delivery
from newsletter.text import one_line
from subscribers import suppression
from subscribers.models import Subscriber, SuppressionReason
from subscribers.services import normalize_email, unsubscribe

_LABELS = {"hard": "hard bounce", "soft": "soft bounce", "complaint": "complaint"}


def event_key(event: BounceEvent) -> str:
    """The record's unique key: the report's own id with the recipient, or a hash of
    everything the event says when the report has no id."""
    if event.key:
        parts = [event.key, event.kind, event.email or "", str(event.delivery_id or "")]
    else:
        when = event.occurred_at.isoformat() if event.occurred_at else ""
        parts = [
            event.source,
            event.kind,
            event.email or "",
            str(event.delivery_id or ""),
            event.diagnostic,
            when,
        ]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def _normalised(address: str | None) -> str | None:
    if not address:
        return None
    try:
        return normalize_email(address)
    except InvalidInput:
        return None


def _reader(
    session: Session, event: BounceEvent
) -> tuple[Delivery | None, Subscriber | None, str | None]:
    """The delivery, the reader and the address an event concerns. The delivery's
    reader wins over the address a report names (a forwarding address, a rewritten
    recipient, a provider's redaction)."""
    delivery = session.get(Delivery, event.delivery_id) if event.delivery_id else None
    reader = delivery.subscriber if delivery is not None else None
    reported = _normalised(event.email)
    if reader is None and reported is not None:
        reader = session.scalar(select(Subscriber).where(Subscriber.email == reported))
    email = reader.email if reader is not None else reported
    return delivery, reader, email


def _soft_count(session: Session, email: str, since: dt.datetime, until: dt.datetime) -> int:
    rows = session.execute(
        select(BounceRecord.id, BounceRecord.delivery_id).where(
            BounceRecord.email == email,
            BounceRecord.kind == "soft",
            BounceRecord.occurred_at >= since,
            BounceRecord.occurred_at <= until,
        )
    )
    return len({("d", d) if d is not None else ("e", i) for i, d in rows})


def _apply_one(
    session: Session, event: BounceEvent, settings: Settings, now: dt.datetime, via: str
) -> str:
    label = _LABELS[event.kind]
    key = event_key(event)
    if session.scalar(select(BounceRecord.id).where(BounceRecord.key == key)) is not None:
        return f"{event.email or 'a ' + label}: {label} already recorded, counted once"
    delivery, reader, email = _reader(session, event)
    occurred = min(event.occurred_at or now, now)
    record = BounceRecord(
        key=key,
        kind=event.kind,
        email=email,
        delivery_id=delivery.id if delivery is not None else None,
        subscriber_id=reader.id if reader is not None else None,
        diagnostic=event.diagnostic,
        source=event.source[:32],
        via=via[:32],
        occurred_at=occurred,
        received_at=now,
    )
    session.add(record)
    if delivery is not None:
        # On the delivery too, where its SMTP reply is read (console, `subscribers show`):
        # the message was accepted, then came back.
        delivery.last_error = f"{label} after sending: {one_line(event.diagnostic, 1000)}"
    actor = f"{label} ({event.source} via {via})"[:320]
    if email is None or (delivery is None and reader is None):
        record.outcome = "nothing: names no reader here"
        return f"{label} for {email or 'no address'}: not a reader here, nothing changed"
    if event.kind == "hard":
        suppression.suppress(session, email, SuppressionReason.HARD_BOUNCE, event.diagnostic, actor)
        record.outcome = "suppressed"
        return f"{email} suppressed: hard bounce"
    if event.kind == "complaint":
        suppression.suppress(session, email, SuppressionReason.COMPLAINT, event.diagnostic, actor)
        if reader is not None:
            unsubscribe(session, reader, now, actor=actor)
        record.outcome = "suppressed and unsubscribed"
        return f"{email} suppressed and unsubscribed: complaint"
    session.flush()
    days = settings.soft_bounce_window_days
    count = _soft_count(session, email, occurred - dt.timedelta(days=days), occurred)
    tally = f"soft bounce {count} of {settings.soft_bounce_limit} in {days} days"
    if count < settings.soft_bounce_limit:
        record.outcome = f"counted: {count} of {settings.soft_bounce_limit}"
        return f"{email}: {tally}"
    detail = f"{tally}; last: {event.diagnostic}"
    suppression.suppress(session, email, SuppressionReason.HARD_BOUNCE, detail, actor)
    record.outcome = f"suppressed: {count} of {settings.soft_bounce_limit}"
    return f"{email} suppressed: {tally}"


def apply(
    session: Session,
    events: Sequence[BounceEvent],
    settings: Settings,
    now: dt.datetime,
    via: str,
) -> list[str]:
    """Apply each event in the caller's transaction; one plain line per effect."""
    effects = [_apply_one(session, event, settings, now, via) for event in events]
    session.flush()
    return effects


def resolve_message_id(session: Session, message_id: str | None) -> int | None:
    """The delivery sent with this Message-ID (a report that kept no VERP token)."""
    if not message_id:
        return None
    return session.scalar(select(Delivery.id).where(Delivery.message_id == message_id))
