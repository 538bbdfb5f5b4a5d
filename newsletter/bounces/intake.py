"""The one code path every bounce and complaint goes through, however it arrived.

CONTRACT (filled in by the bounces work; the mailbox poller and the webhooks call
only these two functions):

- `ingest_message(raw, source=...)`: one email as received at the bounce address
  (a DSN, an ARF report, an auto-reply or anything else), parsed and applied in
  one transaction.
- `ingest_events(events, source=...)`: events a provider already parsed (webhooks).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

EventKind = Literal["hard", "soft", "complaint"]
# What a message turned out to be: only "bounce" and "complaint" are handled (and
# so deleted or moved by the mailbox poller); the rest change nothing.
MessageKind = Literal["bounce", "complaint", "auto_reply", "unrelated"]


@dataclass(frozen=True)
class BounceEvent:
    """One recipient's bounce or complaint, before it is applied."""

    kind: EventKind
    # The address it concerns, when the report names it.
    email: str | None
    # The delivery it answers, from the VERP token (or a provider's metadata).
    delivery_id: int | None
    # The raw diagnostic (status code and the remote server's words), kept as is.
    diagnostic: str
    # dsn, arf, mailgun, json, ...
    source: str
    occurred_at: dt.datetime | None = None


@dataclass
class IngestResult:
    kind: MessageKind
    events: list[BounceEvent] = field(default_factory=list)
    # One plain line per effect, for the CLI and the logs ("ana@example.org
    # suppressed: hard bounce", "bob@example.org: soft bounce 2 of 3 in 14 days").
    effects: list[str] = field(default_factory=list)

    @property
    def recognised(self) -> bool:
        return self.kind in ("bounce", "complaint")


def ingest_message(raw: bytes, *, source: str) -> IngestResult:
    raise NotImplementedError


def ingest_events(events: Sequence[BounceEvent], *, source: str) -> IngestResult:
    raise NotImplementedError
