"""Subscribers and their tag preferences."""

from __future__ import annotations

import datetime as dt
import enum
import secrets

from sqlalchemy import Column, ForeignKey, Index, SmallInteger, String, Table, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from newsletter.db import Base, UTCDateTime, created_ts, intpk, utcnow
from newsletter.models import Cadence, Tag, str_enum


class SubscriberStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    PAUSED = "paused"
    UNSUBSCRIBED = "unsubscribed"


def new_uid() -> str:
    """The random key that signed links carry, so no token holds a guessable id."""
    return secrets.token_urlsafe(16)


subscriber_tags = Table(
    "subscriber_tags",
    Base.metadata,
    Column("subscriber_id", ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True, index=True),
    # A tag followed later only brings posts that arrived after it was followed.
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
)


class Subscriber(Base):
    __tablename__ = "subscribers"
    __table_args__ = (
        Index("ix_subscribers_due", "status", "cadence", "next_digest_at"),
        # The console's list filtered by status, in address order (subscribers.search).
        Index("ix_subscribers_status_email", "status", "email"),
    )

    id: Mapped[intpk]
    uid: Mapped[str] = mapped_column(String(32), unique=True, default=new_uid)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[SubscriberStatus] = mapped_column(
        str_enum(SubscriberStatus, "subscriber_status"), default=SubscriberStatus.ACTIVE
    )
    cadence: Mapped[Cadence] = mapped_column(str_enum(Cadence, "cadence"))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    send_hour: Mapped[int] = mapped_column(SmallInteger, default=8)
    send_weekday: Mapped[int] = mapped_column(SmallInteger, default=0)
    # Posts that reached the pipeline before this instant are never sent to them.
    subscribed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Next daily/weekly slot in UTC; the planner picks rows whose slot has come.
    next_digest_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # When planning last looked at every post for this reader (and promised what was
    # theirs): what ledger compaction may settle up to, less a safety lag.
    planned_through: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # Every post received at or before this is settled for the reader: promised (its
    # delivery_posts row may be gone) or never to be. NULL: no bound yet.
    settled_through: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    unsubscribed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[created_ts]
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    tags: Mapped[list[Tag]] = relationship(
        secondary=subscriber_tags, lazy="selectin", order_by=Tag.slug
    )

    def __repr__(self) -> str:
        return f"Subscriber({self.email!r}, {self.cadence.value})"


# The search by name prefix (subscribers.search) is an index range scan on this; on
# PostgreSQL it also carries what the search reads, so the table is not visited.
Index(
    "ix_subscribers_name_lower",
    func.lower(Subscriber.name),
    postgresql_include=["email", "id", "name"],
)


class SuppressionReason(enum.StrEnum):
    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBED = "unsubscribed"
    MANUAL = "manual"


class Suppression(Base):
    """An address we never mail again, whatever list it comes back on, until an admin
    lifts it on purpose (the row is then deleted and the lift logged)."""

    __tablename__ = "suppressions"

    id: Mapped[intpk]
    email: Mapped[str] = mapped_column(String(320), unique=True)
    reason: Mapped[SuppressionReason] = mapped_column(
        str_enum(SuppressionReason, "suppression_reason")
    )
    detail: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[created_ts]


class SuppressionEvent(Base):
    """The history of an address on the suppression list: every add, change and lift,
    with who or what did it. Kept when the suppression is lifted."""

    __tablename__ = "suppression_events"

    id: Mapped[intpk]
    email: Mapped[str] = mapped_column(String(320), index=True)
    # "added", "changed" or "lifted"
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(String(2000))
    actor: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[created_ts]


class SignupAttempt(Base):
    """One sign-up request, kept briefly to rate-limit by IP and by address."""

    __tablename__ = "signup_attempts"
    __table_args__ = (
        Index("ix_signup_attempts_ip_at", "ip", "created_at"),
        Index("ix_signup_attempts_email_at", "email", "created_at"),
    )

    id: Mapped[intpk]
    ip: Mapped[str] = mapped_column(String(64))
    email: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[created_ts]
