"""The one code path every bounce and complaint goes through, however it arrived.

CONTRACT (the mailbox poller and the webhooks call only these two functions):

- `ingest_message(raw, source=...)`: one email as received at the bounce address
  (a DSN, an ARF report, an auto-reply or anything else), parsed and applied in
  one transaction.
- `ingest_events(events, source=...)`: events a provider already parsed (webhooks).

`source` says how it arrived ("cli", "imap", "webhook:ses", ...); it is recorded
with each event. Both are safe to call twice with the same report: it counts once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError

from newsletter.bounces import parsing, policy
from newsletter.bounces.events import BounceEvent, EventKind, IngestResult, MessageKind
from newsletter.config import Settings, get_settings
from newsletter.db import session_scope, utcnow

__all__ = [
    "BounceEvent",
    "EventKind",
    "IngestResult",
    "MessageKind",
    "ingest_events",
    "ingest_message",
]


def _apply(
    events: Sequence[BounceEvent],
    via: str,
    settings: Settings,
    now: dt.datetime,
    message_id: str | None = None,
) -> tuple[list[BounceEvent], list[str]]:
    """Apply the events in one transaction. Two copies of one report read at the same
    moment both miss the other's row; the loser's insert fails on the unique key, and
    its second try finds the row and counts nothing."""
    for attempt in (1, 2):
        try:
            with session_scope(settings.database_url) as session:
                delivery_id = policy.resolve_message_id(session, message_id)
                if delivery_id is not None:
                    events = [
                        e if e.delivery_id else dataclasses.replace(e, delivery_id=delivery_id)
                        for e in events
                    ]
                effects = policy.apply(session, events, settings, now, via)
            return list(events), effects
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def ingest_message(
    raw: bytes,
    *,
    source: str,
    settings: Settings | None = None,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Read one message from the bounce address and apply what it reports."""
    settings = settings or get_settings()
    parsed = parsing.read(raw, settings)
    if parsed.kind not in ("bounce", "complaint"):
        return IngestResult(parsed.kind, reason=parsed.reason)
    events, effects = _apply(
        parsed.events, source, settings, now or utcnow(), parsed.original_message_id
    )
    return IngestResult(parsed.kind, events, effects)


def ingest_events(
    events: Sequence[BounceEvent],
    *,
    source: str,
    settings: Settings | None = None,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Apply events a provider already parsed; "complaint" when they all are one."""
    if not events:
        return IngestResult("unrelated", reason="no bounce or complaint events")
    settings = settings or get_settings()
    applied, effects = _apply(events, source, settings, now or utcnow())
    kind: MessageKind = "complaint" if all(e.kind == "complaint" for e in events) else "bounce"
    return IngestResult(kind, applied, effects)
