"""Bounce and complaint events as they were applied: on the delivery and in the
reader's history."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from newsletter.db import Base, UTCDateTime, created_ts, intpk


class BounceRecord(Base):
    """One recipient's bounce or complaint, kept with the raw diagnostic.

    `key` makes a report count once however often it arrives (a mailbox read twice,
    the same DSN piped again, a provider retrying its webhook). The reader's rows go
    with the reader (a diagnostic often quotes the address); the delivery's stay.
    """

    __tablename__ = "bounce_events"
    __table_args__ = (
        # The soft-bounce count: one address's recent soft bounces.
        Index("ix_bounce_events_email_kind_occurred", "email", "kind", "occurred_at"),
    )

    id: Mapped[intpk]
    key: Mapped[str] = mapped_column(String(64), unique=True)
    # hard, soft or complaint
    kind: Mapped[str] = mapped_column(String(16))
    email: Mapped[str | None] = mapped_column(String(320))
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL"), index=True
    )
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    diagnostic: Mapped[str] = mapped_column(Text, default="")
    # How the report was read (dsn, arf, or a provider's name) and how it arrived
    # (cli, imap, webhook).
    source: Mapped[str] = mapped_column(String(32))
    via: Mapped[str] = mapped_column(String(32), default="")
    # What it did: "suppressed", "counted 2 of 3", "nothing: already suppressed", ...
    outcome: Mapped[str] = mapped_column(String(200), default="")
    # When the report says it happened (received_at when it does not say).
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[created_ts]
