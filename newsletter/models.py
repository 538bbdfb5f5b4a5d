"""Posts, tags, rendered digests and the delivery ledger."""

from __future__ import annotations

import datetime as dt
import enum
from typing import TYPE_CHECKING

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from newsletter.db import Base, UTCDateTime, created_ts, intpk, utcnow

if TYPE_CHECKING:
    from subscribers.models import Subscriber


class Cadence(enum.StrEnum):
    IMMEDIATE = "immediate"
    DAILY = "daily"
    WEEKLY = "weekly"


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"
    # Claimed by a send task; a lease (claimed_at) lets the sweeper take back a
    # batch whose worker died without risking two live senders on one row.
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"


def str_enum(enum_cls: type[enum.StrEnum], name: str) -> Enum:
    """A portable enum column: VARCHAR plus a CHECK constraint, same on every backend."""
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
    )


post_tags = Table(
    "post_tags",
    Base.metadata,
    Column("post_id", ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True, index=True),
)


class Tag(Base):
    __tablename__ = "tags"

    id: Mapped[intpk]
    slug: Mapped[str] = mapped_column(String(120), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    # Offered on the sign-up and preference pages; an unlisted tag is still followed
    # by whoever follows it, it is just not offered to new readers.
    listed: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[created_ts]

    def __repr__(self) -> str:
        return f"Tag({self.slug!r})"


class Post(Base):
    __tablename__ = "posts"

    id: Mapped[intpk]
    guid: Mapped[str] = mapped_column(String(512), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    url: Mapped[str] = mapped_column(String(2000))
    author: Mapped[str | None] = mapped_column(String(255))
    summary: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str] = mapped_column(Text, default="")
    # For display only: feeds back-date and re-date posts.
    published_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # When the post reached the pipeline: what decides who is eligible for it.
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    # Set once immediate readers were planned; NULL rows are found by the sweeper.
    planned_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), index=True)
    # Set when the post could not be rendered even alone: planning leaves it out
    # (the rest of each digest still goes) until an edit clears it.
    failed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    failed_reason: Mapped[str | None] = mapped_column(Text)
    # Held by an editor: planning leaves the post out for everyone until it is
    # released; readers' eligibility (by arrival) is unchanged, so a release sends it.
    held_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    held_by: Mapped[str | None] = mapped_column(String(320))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # Where it came from: cli, api, webhook, feed (feed_id says which), import, or
    # backlog: found on a feed's first poll, stored as already published, never mailed.
    source: Mapped[str] = mapped_column(String(16), default="cli")
    feed_id: Mapped[int | None] = mapped_column(
        ForeignKey("feeds.id", ondelete="SET NULL"), index=True
    )

    tags: Mapped[list[Tag]] = relationship(secondary=post_tags, lazy="selectin", order_by=Tag.slug)


class Feed(Base):
    """An RSS/Atom feed polled for new posts, with what conditional GET needs."""

    __tablename__ = "feeds"

    id: Mapped[intpk]
    url: Mapped[str] = mapped_column(String(2000), unique=True)
    title: Mapped[str] = mapped_column(String(500), default="")
    # Tags added to every post from this feed (a tag archive feed names one tag).
    extra_tags: Mapped[str] = mapped_column(String(1000), default="")
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    poll_interval: Mapped[int] = mapped_column(Integer, default=900)
    # The first poll imports the backlog as already published; this many of the
    # newest backlog posts are mailed all the same.
    mail_newest: Mapped[int] = mapped_column(Integer, default=0)
    first_polled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_polled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    next_poll_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), index=True)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[created_ts]


class ApiToken(Base):
    """A bearer token for the REST API; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters, so an admin can tell tokens apart without the secret.
    prefix: Mapped[str] = mapped_column(String(16))
    # What the token may reach, with the console's roles: "admin" or "editor".
    role: Mapped[str] = mapped_column(String(16), default="admin", server_default="admin")
    created_at: Mapped[created_ts]
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class Digest(Base):
    """One rendered digest, shared by every reader who gets the same posts in the same cadence.

    Bodies hold `@@NL_...@@` placeholders filled per reader by substitution.
    """

    __tablename__ = "digests"

    id: Mapped[intpk]
    content_key: Mapped[str] = mapped_column(String(64), unique=True)
    cadence: Mapped[Cadence] = mapped_column(str_enum(Cadence, "cadence"))
    post_ids: Mapped[list[int]] = mapped_column(JSON)
    subject: Mapped[str] = mapped_column(String(500))
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[created_ts]


class Delivery(Base):
    """The ledger: one row per (subscriber, digest), and every outcome recorded on it."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "digest_id"),
        Index("ix_deliveries_status_created", "status", "created_at"),
    )

    id: Mapped[intpk]
    # NULL once the reader is deleted with their personal data: the row stays, so
    # the digest's sent / failed / skipped counts stay true.
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL")
    )
    digest_id: Mapped[int] = mapped_column(ForeignKey("digests.id", ondelete="CASCADE"), index=True)
    status: Mapped[DeliveryStatus] = mapped_column(
        str_enum(DeliveryStatus, "delivery_status"), default=DeliveryStatus.QUEUED
    )
    skip_reason: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[created_ts]
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    digest: Mapped[Digest] = relationship()
    subscriber: Mapped[Subscriber | None] = relationship()

    @property
    def post_ids(self) -> list[int]:
        """The posts this reader was promised: their digest's, whatever `delivery_posts`
        still holds (ledger compaction removes its older rows)."""
        return sorted(self.digest.post_ids)


class DeliveryPost(Base):
    """A post promised to a subscriber: the primary key makes "never twice" a database fact.

    A short-lived guard: once a post is settled for the reader (received at or before
    their `settled_through`), planning never looks at it again and
    `newsletter.delivery.ledger.compact` deletes the row. What a reader got, and
    when, is read from their deliveries and each digest's post ids.
    """

    __tablename__ = "delivery_posts"

    # No foreign keys: checking them was a sixth of planning's time in the database
    # (migration 0012). A reader's guard rows go with the reader (`forget`,
    # `expire_pending`), a post's with the post; a planning that raced a deletion
    # fails on its delivery row's key to the reader, written in the same transaction.
    subscriber_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    post_id: Mapped[int] = mapped_column(Integer, primary_key=True, index=True)
    # The delivery that made the promise, for reading only: no foreign key and no index,
    # whose upkeep cost more than the rest of the row (nothing deletes deliveries, and a
    # guard row outliving one still means "promised").
    delivery_id: Mapped[int] = mapped_column(Integer)


__all__ = [
    "Cadence",
    "Delivery",
    "DeliveryPost",
    "DeliveryStatus",
    "Digest",
    "Post",
    "Tag",
    "post_tags",
]

# Delivery refers to Subscriber by name: make sure it is mapped whenever models are;
# the console's tables (staff, sessions, audit log) too, so migrations see them.
import newsletter.bounces.models  # noqa: E402
import newsletter.console.models  # noqa: E402, F401
import subscribers.models  # noqa: E402, F401
