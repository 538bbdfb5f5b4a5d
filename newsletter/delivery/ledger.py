"""The delivery ledger: written in bulk by planning, kept small by compaction.

What it answers, and from where (docs/storage.md has the sizes):

- what did this reader get, and when: their `deliveries` (one row per reader and
  digest, with every outcome) and each digest's `post_ids`;
- never the same post twice: `delivery_posts` (subscriber, post) is the primary key
  a second promise runs into, for posts not yet settled for the reader; a post
  received at or before the reader's `settled_through` is settled (promised, or never
  to be), planning does not look at it, and its guard row can go.

`compact` moves each reader's `settled_through` on as far as is safe and deletes the
guard rows it covers, so `delivery_posts` holds days of promises, not years.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    SQLColumnExpression,
    String,
    and_,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from newsletter.config import get_settings
from newsletter.db import UTCDateTime, pg_array, session_scope, utcnow
from newsletter.db import among as db_among
from newsletter.delivery.mime import new_message_id
from newsletter.models import Delivery, DeliveryPost, DeliveryStatus, Post, post_tags
from newsletter.posts import SOURCE_BACKLOG
from subscribers.models import Subscriber, subscriber_tags

log = logging.getLogger(__name__)

# A post's received_at is set before its transaction commits, and a planning's clock
# is read before its statements run: a planning at T may miss a post received just
# before T. A day is far longer than any transaction, so every post received a day
# before a planning was visible to it.
SAFETY_LAG = dt.timedelta(days=1)
# Readers per compaction transaction. Each brings its guard rows (posts a day times
# days since their last planning: tens), so a chunk deletes some tens of thousands of
# rows: short enough that a planner waiting on one of these readers waits well under
# a second, long enough that the three statements per chunk are not where time goes.
COMPACT_CHUNK = 2000
# settled_through is rounded down to the hour: readers planned by the same runs share
# one value, so a chunk needs a handful of UPDATEs rather than one per reader.
ROUNDING = dt.timedelta(hours=1)
# Posts received at or before a reader's settled_through are settled: one that may
# still be promised to them keeps the bound this much below its arrival.
JUST_BEFORE = dt.timedelta(microseconds=1)


def id_slice(column: SQLColumnExpression[int], ids: Sequence[int]) -> ColumnElement[bool]:
    """`column` is one of `ids` (`db.among`: one array parameter on PostgreSQL), with
    the range of the ids stated too, so a chunk of neighbouring ids reads a slice of
    an index on `column`, not the whole table."""
    if not ids:
        return false()
    return and_(column >= min(ids), column <= max(ids), db_among(column, ids))


# -- writing: one chunk's promises in bulk ----------------------------------------


@dataclass
class Promise:
    """Deliveries to write for a group of readers: one per member, all with this digest
    (which holds these posts)."""

    digest_id: int
    post_ids: Sequence[int]
    members: Sequence[int]
    status: DeliveryStatus
    error: str | None = None


DELIVERY_COLUMNS = [
    "subscriber_id",
    "digest_id",
    "status",
    "attempts",
    "last_error",
    "message_id",
    "created_at",
    "updated_at",
]
GUARD_COLUMNS = ["subscriber_id", "post_id", "delivery_id"]


def _insert_deliveries(
    session: Session,
    promises: Sequence[Promise],
    status: DeliveryStatus,
    error: str | None,
    stamp: dt.datetime,
) -> list[tuple[int, int, int]]:
    """One Delivery per member of these promises (all with this status and error), in
    bulk; (id, subscriber, digest) of each. Message-IDs are made here: random, so no
    database can."""
    sender = get_settings().from_
    subscriber_ids = [s for p in promises for s in p.members]
    digest_ids = [p.digest_id for p in promises for _ in p.members]
    message_ids = [new_message_id(sender) for _ in subscriber_ids]
    table: Any = Delivery.__table__
    made = (table.c.id, table.c.subscriber_id, table.c.digest_id)
    if session.get_bind().dialect.name == "postgresql":
        # INSERT ... SELECT over three arrays: one statement, three parameters.
        rows = (
            func.unnest(
                pg_array(subscriber_ids),
                pg_array(digest_ids),
                pg_array(message_ids, String),
            )
            .table_valued("subscriber_id", "digest_id", "message_id")
            .render_derived(name="r")
        )
        when = literal(stamp, UTCDateTime())
        query = select(
            rows.c.subscriber_id,
            rows.c.digest_id,
            literal(status.value),
            literal(0),
            null() if error is None else literal(error),
            rows.c.message_id,
            when,
            when,
        )
        statement = insert(table).from_select(DELIVERY_COLUMNS, query).returning(*made)
        return [(i, s, d) for i, s, d in session.execute(statement)]
    values = [
        dict(zip(DELIVERY_COLUMNS, (sid, did, status, 0, error, mid, stamp, stamp), strict=True))
        for sid, did, mid in zip(subscriber_ids, digest_ids, message_ids, strict=True)
    ]
    return [(i, s, d) for i, s, d in session.execute(insert(table).returning(*made), values)]


def write_promises(session: Session, promises: Sequence[Promise], stamp: dt.datetime) -> list[int]:
    """Write these promises in bulk: the deliveries, then a DeliveryPost for each post
    promised, whose primary key stops a second promise (INSERT ... SELECT over arrays on
    PostgreSQL, executemany on SQLite); the ids of the queued deliveries, in order."""
    by_outcome: dict[tuple[DeliveryStatus, str | None], list[Promise]] = defaultdict(list)
    posts_of = {promise.digest_id: promise.post_ids for promise in promises}
    for promise in promises:
        by_outcome[(promise.status, promise.error)].append(promise)
    queued: list[int] = []
    guards: list[tuple[int, int, int]] = []
    for (status, error), group in by_outcome.items():
        for delivery_id, subscriber_id, digest_id in _insert_deliveries(
            session, group, status, error, stamp
        ):
            guards.extend((subscriber_id, post, delivery_id) for post in posts_of[digest_id])
            if status is DeliveryStatus.QUEUED:
                queued.append(delivery_id)
    if not guards:
        return []
    if session.get_bind().dialect.name == "postgresql":
        subscribers, posts, deliveries = zip(*guards, strict=True)
        rows = (
            func.unnest(pg_array(subscribers), pg_array(posts), pg_array(deliveries))
            .table_valued(*GUARD_COLUMNS)
            .render_derived(name="g")
        )
        session.execute(
            insert(DeliveryPost).from_select(GUARD_COLUMNS, select(*rows.c).select_from(rows))
        )
    else:
        session.execute(
            insert(DeliveryPost), [dict(zip(GUARD_COLUMNS, row, strict=True)) for row in guards]
        )
    return sorted(queued)


# -- compaction ---------------------------------------------------------------------


@dataclass
class CompactReport:
    # Readers looked at (every reader planned at least once).
    readers: int = 0
    # Readers whose settled_through moved on.
    advanced: int = 0
    # Guard rows (delivery_posts) deleted.
    deleted: int = 0
    # Readers left for the next run because a planner held their row.
    busy: int = 0


class _Replanned:
    """Posts planned at or after a given instant, by when they were received.

    A released post (or a failed one edited) is planned again when it becomes
    eligible; a reader planned before that could not have been promised it, so it
    must not be settled for them until they are planned again. Its planned_at tells
    when that was (at or after the release: the task runs after the commit).
    """

    def __init__(self, rows: Sequence[tuple[dt.datetime, dt.datetime]]) -> None:
        self.planned_at = [planned for planned, _ in rows]
        # earliest[i]: the earliest received_at among rows i and after.
        self.earliest: list[dt.datetime] = []
        for _, received in reversed(rows):
            self.earliest.append(min(received, self.earliest[-1]) if self.earliest else received)
        self.earliest.reverse()

    def earliest_received(self, planned_since: dt.datetime) -> dt.datetime | None:
        index = bisect.bisect_left(self.planned_at, planned_since)
        return self.earliest[index] if index < len(self.earliest) else None


def _replanned(session: Session, since: dt.datetime, before: dt.datetime) -> _Replanned:
    """Posts planned at or after `since` that were received before `before`: only
    those can lie below a reader's bound yet be planned after their last planning."""
    rows = session.execute(
        select(Post.planned_at, Post.received_at)
        .where(
            Post.planned_at >= since,
            Post.received_at < before,
            Post.source != SOURCE_BACKLOG,
        )
        .order_by(Post.planned_at)
    ).all()
    return _Replanned([(planned, received) for planned, received in rows if planned is not None])


def _open_posts(session: Session, reader_ids: Sequence[int]) -> dict[int, dt.datetime]:
    """For each of these readers, the earliest arrival among posts of theirs (on their
    tags, arrived since they subscribed and followed the tag) that may still be
    promised to them later: held, failed (an edit may fix it) or not planned yet (just
    arrived, or released)."""
    st, pt = subscriber_tags, post_tags
    rows = session.execute(
        select(st.c.subscriber_id, func.min(Post.received_at))
        .join(pt, pt.c.tag_id == st.c.tag_id)
        .join(Post, Post.id == pt.c.post_id)
        .join(Subscriber, Subscriber.id == st.c.subscriber_id)
        .where(
            id_slice(st.c.subscriber_id, reader_ids),
            Post.received_at >= st.c.created_at,
            Post.received_at >= Subscriber.subscribed_at,
            Post.source != SOURCE_BACKLOG,
            or_(Post.held_at.is_not(None), Post.failed_at.is_not(None), Post.planned_at.is_(None)),
        )
        .group_by(st.c.subscriber_id)
    )
    return {reader: earliest for reader, earliest in rows}


def _round_down(value: dt.datetime) -> dt.datetime:
    epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    return value - (value - epoch) % ROUNDING


def settle_bound(
    planned_through: dt.datetime,
    now: dt.datetime,
    replanned: _Replanned,
    open_since: dt.datetime | None,
) -> dt.datetime:
    """How far a reader last planned at `planned_through` may be settled."""
    seen = planned_through - SAFETY_LAG
    bound = min(seen, now - SAFETY_LAG)
    # A post that may still be promised must stay above the bound: just before it.
    for waiting in (replanned.earliest_received(seen), open_since):
        if waiting is not None:
            bound = min(bound, waiting - JUST_BEFORE)
    return _round_down(bound)


def _compact_chunk(
    session: Session, after: int, size: int, now: dt.datetime
) -> tuple[int | None, CompactReport]:
    """Compact the next `size` planned readers after id `after`; the last id looked at."""
    report = CompactReport()
    ids = list(
        session.scalars(
            select(Subscriber.id)
            .where(Subscriber.id > after, Subscriber.planned_through.is_not(None))
            .order_by(Subscriber.id)
            .limit(size)
        )
    )
    if not ids:
        return None, report
    # Rows a planner is writing are skipped, not waited for: compaction never waits on
    # a planner, so the two can never deadlock (a planner may wait a chunk for us).
    rows = [
        (reader, planned_through, settled_through)
        for reader, planned_through, settled_through in session.execute(
            select(Subscriber.id, Subscriber.planned_through, Subscriber.settled_through)
            .where(id_slice(Subscriber.id, ids))
            .with_for_update(skip_locked=True, key_share=True)
        )
        if planned_through is not None
    ]
    report.readers = len(ids)
    report.busy = len(ids) - len(rows)
    if not rows:
        return ids[-1], report
    # In this order: a post being released is held, then unplanned, then planned
    # again; read after the open posts, the re-planned ones cannot miss it.
    open_posts = _open_posts(session, [reader for reader, _, _ in rows])
    seen = [planned_through - SAFETY_LAG for _, planned_through, _ in rows]
    replanned = _replanned(session, min(seen), max(seen))
    moves: dict[dt.datetime, list[int]] = defaultdict(list)
    for reader, planned_through, settled_through in rows:
        bound = settle_bound(planned_through, now, replanned, open_posts.get(reader))
        if settled_through is None or bound > settled_through:
            moves[bound].append(reader)
    for bound, readers in sorted(moves.items()):
        session.execute(
            update(Subscriber)
            .where(id_slice(Subscriber.id, readers))
            .values(settled_through=bound)
            .execution_options(synchronize_session=False)
        )
        report.advanced += len(readers)
    settled = exists().where(
        Subscriber.id == DeliveryPost.subscriber_id,
        Post.id == DeliveryPost.post_id,
        Post.received_at <= Subscriber.settled_through,
    )
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        delete(DeliveryPost)
        .where(id_slice(DeliveryPost.subscriber_id, [reader for reader, _, _ in rows]), settled)
        .execution_options(synchronize_session=False)
    )
    report.deleted = max(result.rowcount, 0)
    return ids[-1], report


def drop_guards(
    session: Session,
    readers: ColumnElement[bool] | None = None,
    posts: ColumnElement[bool] | None = None,
) -> None:
    """Delete the guard rows of the readers or posts being deleted (`readers` and
    `posts` say which, as conditions on `DeliveryPost`): the table has no foreign
    keys to do it (migration 0012)."""
    for where in (readers, posts):
        if where is not None:
            session.execute(delete(DeliveryPost).where(where))


def compact(now: dt.datetime | None = None, chunk_size: int = COMPACT_CHUNK) -> CompactReport:
    """Move every reader's settled_through on as far as is safe, and delete the guard
    rows (delivery_posts) it covers; in chunks of readers, one transaction each.

    A reader is settled up to the earliest of: their last planning less the safety lag
    (that planning saw, and promised, every post of theirs received by then); now less
    the lag; the arrival of any post on their tags still held, failed or not planned
    (it may be promised to them later); the arrival of any post planned since their
    last planning less the lag (released or fixed after it, so never offered to them).
    It never moves back.

    Safe against a planner running at the same time: planning reads a reader's pending
    posts in ONE statement, which sees the guard rows and the watermark from one
    snapshot; this moves the watermark and deletes the rows it covers in one
    transaction, so a planner sees either the rows or the watermark that replaces
    them, never neither. Rows a planner holds are skipped, not waited for.
    """
    now = now or utcnow()
    report = CompactReport()
    after = 0
    while True:
        with session_scope() as session:
            last, chunk = _compact_chunk(session, after, chunk_size, now)
        if last is None:
            break
        report.readers += chunk.readers
        report.advanced += chunk.advanced
        report.deleted += chunk.deleted
        report.busy += chunk.busy
        after = last
    log.info(
        "ledger compacted: %d reader(s), %d moved on, %d guard row(s) deleted, %d busy",
        report.readers,
        report.advanced,
        report.deleted,
        report.busy,
    )
    return report
