"""The figures the dashboard shows (and the REST API may): readers by status and by
tag, digests and messages per day, the send in progress and recent failures.

Every query takes a session and reads only. Counting a million readers and their
follows takes a few hundred milliseconds on PostgreSQL, and its planner's estimates
are not counts, so the reader and per-day figures are exact counts kept for
`CACHE_SECONDS` in the process (`cached`) and shown with the time they were counted.
The send in progress and the failures are read on every request: they are index
range scans on deliveries (status, created_at).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from sqlalchemy import ScalarSelect, func, select
from sqlalchemy.orm import Session

from newsletter.db import utcnow
from newsletter.models import Cadence, Delivery, DeliveryStatus, Digest, Tag
from subscribers.models import Subscriber, SubscriberStatus, subscriber_tags

log = logging.getLogger(__name__)

T = TypeVar("T")

CACHE_SECONDS = 60
DAYS = 30
FAILURES_SHOWN = 20
# A finished send older than this is no longer shown as the latest one.
RUN_HORIZON = dt.timedelta(hours=24)
FINAL = (DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED)
_ADDRESS = re.compile(r"[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+")


# -- readers ----------------------------------------------------------------------


@dataclass(frozen=True)
class TagCount:
    slug: str
    name: str
    followers: int


@dataclass(frozen=True)
class ReaderCounts:
    """Readers by status and cadence, and every tag with its number of followers
    (whatever their status), most followed first."""

    by_status: dict[SubscriberStatus, dict[Cadence, int]]
    tags: list[TagCount]

    def in_status(self, status: SubscriberStatus) -> int:
        return sum(self.by_status.get(status, {}).values())

    @property
    def total(self) -> int:
        return sum(self.in_status(s) for s in SubscriberStatus)


def reader_counts(session: Session) -> ReaderCounts:
    by_status: dict[SubscriberStatus, dict[Cadence, int]] = {
        s: dict.fromkeys(Cadence, 0) for s in SubscriberStatus
    }
    rows = session.execute(
        select(Subscriber.status, Subscriber.cadence, func.count()).group_by(
            Subscriber.status, Subscriber.cadence
        )
    )
    for status, cadence, n in rows:
        by_status[status][cadence] = n
    # One index range count per tag (on subscriber_tags.tag_id): cheaper than
    # grouping every follow, and a tag nobody follows still shows, with 0.
    followers = (
        select(func.count())
        .where(subscriber_tags.c.tag_id == Tag.id)
        .correlate(Tag)
        .scalar_subquery()
    )
    tags = [
        TagCount(slug, name, n)
        for slug, name, n in session.execute(select(Tag.slug, Tag.name, followers))
    ]
    tags.sort(key=lambda t: (-t.followers, t.slug))
    return ReaderCounts(by_status, tags)


# -- per day ----------------------------------------------------------------------


@dataclass(frozen=True)
class Day:
    """One UTC day: digests made, and messages sent and failed, counted on the day
    their delivery was planned (a retry that succeeds after midnight counts for the
    day it was meant for)."""

    day: dt.date
    digests: int = 0
    sent: int = 0
    failed: int = 0

    @property
    def messages(self) -> int:
        return self.sent + self.failed


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def _count(
    status: DeliveryStatus, start: dt.datetime, end: dt.datetime | None = None
) -> ScalarSelect[int]:
    """Deliveries in `status` planned from `start` until `end`: an index range count."""
    query = select(func.count()).select_from(Delivery)
    query = query.where(Delivery.status == status, Delivery.created_at >= start)
    if end is not None:
        query = query.where(Delivery.created_at < end)
    return query.scalar_subquery()


def daily_counts(session: Session, now: dt.datetime | None = None, days: int = DAYS) -> list[Day]:
    """The last `days` UTC days, today included, oldest first, each one present."""
    today = (now or utcnow()).astimezone(dt.UTC).date()
    dates = [today - dt.timedelta(days=days - 1 - i) for i in range(days)]
    bounds = [day_start(d) for d in dates] + [day_start(today + dt.timedelta(days=1))]
    # One statement of 2 x `days` counts, each a range on deliveries (status,
    # created_at): the index answers them without reading the table, where a GROUP BY
    # on the day would compute a date for each of millions of rows.
    wanted = (DeliveryStatus.SENT, DeliveryStatus.FAILED)
    counts = session.execute(
        select(*(_count(s, bounds[i], bounds[i + 1]) for i in range(days) for s in wanted))
    ).one()
    made = dict.fromkeys(dates, 0)
    for created in session.scalars(
        select(Digest.created_at).where(
            Digest.created_at >= bounds[0], Digest.created_at < bounds[-1]
        )
    ):
        made[created.astimezone(dt.UTC).date()] += 1
    return [
        Day(d, digests=made[d], sent=counts[2 * i], failed=counts[2 * i + 1])
        for i, d in enumerate(dates)
    ]


# -- the send in progress ---------------------------------------------------------


@dataclass(frozen=True)
class SendProgress:
    """What became of the deliveries planned since `since`: the current send while
    some are still queued or being sent (`running`), else the latest one."""

    since: dt.datetime | None
    running: bool
    counts: dict[DeliveryStatus, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in FINAL)

    @property
    def percent(self) -> int:
        """Done out of all, rounded down: 100 only when nothing is left."""
        return 100 * self.done // self.total if self.total else 0


def send_progress(session: Session, now: dt.datetime | None = None) -> SendProgress:
    """The current send as `newsletter deliveries status` counts it: one definition
    (`newsletter.delivery.progress`) for the console, the API and the command line.
    A send that ended more than RUN_HORIZON ago is no longer shown."""
    from newsletter.delivery.progress import send_status

    now = now or utcnow()
    status = send_status(session, now=now)
    if not status.runs:
        return SendProgress(None, False)
    running = status.in_flight > 0
    last = status.runs[-1].end
    if not running and last is not None and last < now - RUN_HORIZON:
        return SendProgress(None, False)
    counts = {
        DeliveryStatus.QUEUED: status.queued + status.deferred,
        DeliveryStatus.SENDING: status.sending,
        DeliveryStatus.SENT: status.sent,
        DeliveryStatus.FAILED: status.failed,
        DeliveryStatus.SKIPPED: status.skipped,
    }
    return SendProgress(status.runs[0].start, running, counts)


# -- failures ---------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A delivery that failed for good, with the SMTP server's reply."""

    delivery_id: int
    created_at: dt.datetime
    failed_at: dt.datetime
    digest_id: int
    subject: str
    cadence: Cadence
    error: str
    # None once the reader was deleted, and in what an editor is shown.
    subscriber_id: int | None
    email: str | None

    def without_reader(self) -> Failure:
        """The failure without who it was for: no reader, addresses in the reply masked
        (a reply often quotes the recipient). Readers' data is for admins only."""
        return replace(
            self, subscriber_id=None, email=None, error=_ADDRESS.sub("[address]", self.error)
        )


def recent_failures(session: Session, limit: int = FAILURES_SHOWN) -> list[Failure]:
    """The newest failed deliveries, newest first (by when they were planned: the
    order of the (status, created_at) index)."""
    rows = session.execute(
        select(
            Delivery.id,
            Delivery.created_at,
            Delivery.updated_at,
            Delivery.digest_id,
            Digest.subject,
            Digest.cadence,
            Delivery.last_error,
            Delivery.subscriber_id,
            Subscriber.email,
        )
        .join(Digest, Digest.id == Delivery.digest_id)
        .outerjoin(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.status == DeliveryStatus.FAILED)
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .limit(limit)
    )
    return [
        Failure(did, created, updated, digest_id, subject, cadence, error or "", sid, email)
        for did, created, updated, digest_id, subject, cadence, error, sid, email in rows
    ]


# -- the cache --------------------------------------------------------------------


@dataclass(frozen=True)
class Counted(Generic[T]):
    """A figure and when it was counted."""

    value: T
    as_of: dt.datetime
    stored: float  # time.monotonic() when it was stored


_entries: dict[tuple[str, str], Counted[Any]] = {}
_locks: dict[tuple[str, str], threading.Lock] = {}


def cached(
    session: Session, name: str, compute: Callable[[Session], T], max_age: float = CACHE_SECONDS
) -> Counted[T]:
    """`compute(session)`, counted at most `max_age` seconds ago in this process, per
    database. Once a figure is older, the request still gets it at once while one
    background thread counts again (stale while revalidating): at a million readers a
    count takes a second or more, and no page view should wait for it. Only the very
    first request in a process counts while it waits."""
    key = (str(session.get_bind().engine.url), name)
    entry = _entries.get(key)
    if entry is not None and time.monotonic() - entry.stored < max_age:
        return entry
    lock = _locks.setdefault(key, threading.Lock())
    if entry is not None:
        if lock.acquire(blocking=False):
            bind = session.get_bind()
            threading.Thread(
                target=_recount, args=(key, bind, compute, lock), name=f"count-{name}", daemon=True
            ).start()
        return entry
    with lock:
        entry = _entries.get(key)
        if entry is not None:
            return entry
        return _store(key, compute(session))


def _store(key: tuple[str, str], value: T) -> Counted[T]:
    fresh = Counted(value, utcnow(), time.monotonic())
    _entries[key] = fresh
    return fresh


def _recount(
    key: tuple[str, str], bind: Any, compute: Callable[[Session], T], lock: threading.Lock
) -> None:
    """Count again in a session of its own; a failure keeps the old figure (logged)."""
    try:
        with Session(bind) as session:
            _store(key, compute(session))
    except Exception:
        log.exception("dashboard counts (%s) could not be refreshed", key[1])
    finally:
        lock.release()


def clear_cache() -> None:
    """Forget every cached figure (tests do, between data sets)."""
    _entries.clear()


@dataclass(frozen=True)
class Overview:
    readers: Counted[ReaderCounts]
    days: Counted[list[Day]]
    progress: SendProgress
    failures: list[Failure]


def warm_up() -> threading.Thread:
    """Count the dashboard's figures in the background as the server starts, so the
    first dashboard view does not wait for them either. A database that cannot be
    counted yet (no schema) is only logged: the page counts when it is first shown."""

    def count() -> None:
        from newsletter.db import session_scope

        try:
            with session_scope() as session:
                cached(session, "readers", reader_counts)
                cached(session, "days", daily_counts)
        except Exception as exc:
            log.warning("dashboard counts not made at start-up: %s", exc)

    thread = threading.Thread(target=count, name="count-warm-up", daemon=True)
    thread.start()
    return thread


def overview(session: Session, failures: int = FAILURES_SHOWN) -> Overview:
    """Everything the dashboard shows: counts from the cache, the rest read now."""
    return Overview(
        readers=cached(session, "readers", reader_counts),
        days=cached(session, "days", daily_counts),
        progress=send_progress(session),
        failures=recent_failures(session, failures),
    )
