"""What intake takes and gives back: the types of the one bounce code path."""

from __future__ import annotations

import datetime as dt
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
    # What makes the same report count once however often it arrives: a provider's
    # event id, or a report's Message-ID. None: a hash of the event's fields.
    key: str | None = None


@dataclass
class IngestResult:
    kind: MessageKind
    events: list[BounceEvent] = field(default_factory=list)
    # One plain line per effect, for the CLI and the logs ("ana@example.org
    # suppressed: hard bounce", "bob@example.org: soft bounce 2 of 3 in 14 days").
    effects: list[str] = field(default_factory=list)
    # Why a message changed nothing ("an auto-reply (Auto-Submitted: auto-replied)",
    # "not a bounce report"), "" when it was handled.
    reason: str = ""

    @property
    def recognised(self) -> bool:
        return self.kind in ("bounce", "complaint")
