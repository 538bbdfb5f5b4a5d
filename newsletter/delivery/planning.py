"""Who is due, which posts each of them gets, and one rendering per distinct digest.

Planning is set-based. Readers are taken in chunks in id order (a keyset: no list of
every due reader is ever held), one transaction per chunk. For a chunk the database
works out each reader's pending posts and groups the readers by content (cadence and
sorted post ids) in one statement, without loading a reader object; each group's
digest is rendered once (or reused); the ledger is written in bulk (a Delivery per
reader and digest, a DeliveryPost per post promised: INSERT ... SELECT over arrays on
PostgreSQL, executemany on SQLite); and the next daily/weekly slot is computed once
per (cadence, time zone, hour, weekday) and written with one UPDATE per group. On
PostgreSQL two chunks are planned side by side (`chunks_in_flight`), each committed
chunk's new deliveries handed on in order (`on_chunk`) while the next are planned.

The primary key of DeliveryPost (subscriber, post) makes a second promise of the same
post impossible, so a re-run, a retried task or two planners racing can only ever add
nothing. A reader's `settled_through` bounds the posts planning looks at: older ones
are settled for them, and their guard rows may be gone (`newsletter.delivery.ledger`).

One bad item never stops the rest: a post that cannot be rendered is recorded as
failed and left out (its digest goes without it), a digest that cannot be rendered
at all is recorded as failed for its readers, and any other error in one chunk is
logged and counted while planning goes on with the next.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from secrets import token_hex
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Select,
    and_,
    case,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from newsletter.config import get_settings
from newsletter.db import UTCDateTime, get_engine, pg_array, session_scope, utcnow
from newsletter.delivery.ledger import Promise, id_slice, write_promises
from newsletter.delivery.rendering import content_key, render_digest
from newsletter.models import (
    Cadence,
    Delivery,
    DeliveryPost,
    DeliveryStatus,
    Digest,
    Post,
    post_tags,
)
from newsletter.posts import SOURCE_BACKLOG
from newsletter.text import one_line
from subscribers.cadence import next_slot
from subscribers.models import Subscriber, SubscriberStatus, subscriber_tags
from subscribers.suppression import suppressed_among

log = logging.getLogger(__name__)

# Called with each committed chunk's new (queued) delivery ids, so senders can start
# while planning goes on.
ChunkCallback = Callable[[list[int]], None]

# One rendering at a time: premailer and cssutils are not known to be thread-safe, and
# renders are few (one per distinct digest), so waiting for one costs next to nothing.
RENDERING = threading.Lock()

# Chunks planned side by side at most, and never more than there are cores (see
# chunks_in_flight): on two cores, two plan 100,000 readers in about 60% of the time
# one at a time takes (measured with bench/plan.py).
MAX_CHUNKS_IN_FLIGHT = 2

# An immediate reader's planned_through is written again only once it is this much
# older than the planning: planning one post for a million immediate readers would
# otherwise rewrite a million rows. An older value only settles their ledger later.
PLANNED_THROUGH_STEP = dt.timedelta(hours=1)


def unplanned_grace() -> dt.timedelta:
    """A post not planned this long after it arrived is taken to have lost its task
    (broker down at commit, worker killed) and is planned by the sweeper."""
    return dt.timedelta(seconds=get_settings().unplanned_grace)


def stale_queued() -> dt.timedelta:
    """A queued delivery untouched this long has lost its send task; re-enqueue it (a
    second task for a row whose first one is only late finds nothing to claim)."""
    return dt.timedelta(seconds=get_settings().stale_queued)


def sending_lease() -> dt.timedelta:
    """A claim older than this belongs to a worker that died mid-batch: a live sender
    renews its claim every third of it (NEWSLETTER_SENDING_LEASE)."""
    return dt.timedelta(seconds=get_settings().sending_lease)


T = TypeVar("T")

# The database itself is unreachable or busy: nothing else could be planned either,
# so these end the run and the sweeper's next run picks the work up again.
DATABASE_DOWN = (OperationalError, InterfaceError)


def chunked(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


@dataclass
class PlanReport:
    """What a planning run did; skips are counted by name, never dropped silently."""

    subscribers: int = 0
    # Deliveries queued for sending by this run.
    planned: int = 0
    # Their ids, only when no `on_chunk` took them as they came: a run that streams
    # them to senders holds none, however many readers it plans.
    deliveries: list[int] = field(default_factory=list)
    digests_rendered: int = 0
    digests_reused: int = 0
    posts_swept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    # Posts that could not be rendered even alone: post id -> reason.
    failed_posts: dict[int, str] = field(default_factory=dict)
    # Readers whose digest could not be rendered although each post could.
    failed_deliveries: int = 0
    # Chunks or swept posts whose planning raised something else.
    planning_errors: int = 0
    # One line per failure of any kind, for the logs and the CLI summary.
    failures: list[str] = field(default_factory=list)

    def merge(self, other: PlanReport) -> None:
        self.subscribers += other.subscribers
        self.planned += other.planned
        self.deliveries.extend(other.deliveries)
        self.digests_rendered += other.digests_rendered
        self.digests_reused += other.digests_reused
        self.posts_swept += other.posts_swept
        self.skipped.update(other.skipped)
        self.failed_posts.update(other.failed_posts)
        self.failed_deliveries += other.failed_deliveries
        self.planning_errors += other.planning_errors
        self.failures.extend(other.failures)

    def fail(self, message: str, exc: BaseException | None = None) -> None:
        """Record a failure that planning went past; logged at ERROR so it alerts."""
        log.error("%s", message, exc_info=exc)
        self.failures.append(message)


class RenderFailed(Exception):
    """A digest could not be rendered; `reason` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe(exc: BaseException) -> str:
    """An exception as one short line: its type and message."""
    return one_line(f"{type(exc).__name__}: {exc}", 300)


def eligible_posts() -> ColumnElement[bool]:
    """The posts planning may promise to anyone: eligible posts exclude held and failed
    ones. Every planning path (immediate, daily, weekly, the sweeper) and the preview of
    "what X would get" go through this one condition."""
    return and_(
        # A feed's backlog was imported as already published: never mailed.
        Post.source != SOURCE_BACKLOG,
        # A post that could not be rendered waits, unpromised, for an edit.
        Post.failed_at.is_(None),
        # A held post waits, unpromised, for an editor to release it; who is eligible
        # for it (by arrival) does not change, so the release sends it to them.
        Post.held_at.is_(None),
    )


def _pending_pairs(
    now: dt.datetime, *where: ColumnElement[bool], between: tuple[int, int] | None = None
) -> Select[int, int]:
    """(subscriber, post) for each matching post that reached us after the reader
    subscribed and followed its tag, that is not settled for them, and that was never
    promised to them. One statement: it reads the guard rows and the watermark from
    one snapshot, which is what makes deleting settled guard rows safe."""
    st, pt = subscriber_tags, post_tags
    # The readers' id range, stated for the guard rows too: however the database joins
    # them, it reads only this slice of delivery_posts, never the whole table (its
    # statistics lag behind a table that grows by millions of rows in one run).
    guarded = () if between is None else (DeliveryPost.subscriber_id.between(*between),)
    return (
        select(st.c.subscriber_id, Post.id.label("post_id"))
        .join(pt, pt.c.tag_id == st.c.tag_id)
        .join(Post, Post.id == pt.c.post_id)
        .join(Subscriber, Subscriber.id == st.c.subscriber_id)
        .where(
            *where,
            Post.received_at >= Subscriber.subscribed_at,
            Post.received_at >= st.c.created_at,
            Post.received_at <= now,
            or_(
                Subscriber.settled_through.is_(None), Post.received_at > Subscriber.settled_through
            ),
            eligible_posts(),
            ~exists().where(
                DeliveryPost.subscriber_id == st.c.subscriber_id,
                DeliveryPost.post_id == Post.id,
                *guarded,
            ),
        )
        .distinct()
    )


def pending_posts(
    session: Session, subscriber_ids: Sequence[int], now: dt.datetime
) -> dict[int, list[int]]:
    """For each subscriber, the matching posts that reached us after they subscribed and
    that were never promised to them."""
    query = _pending_pairs(now, subscriber_tags.c.subscriber_id.in_(subscriber_ids))
    result: dict[int, list[int]] = defaultdict(list)
    for subscriber_id, post_id in session.execute(query):
        result[subscriber_id].append(post_id)
    return {sid: sorted(ids) for sid, ids in result.items()}


Content = tuple[Cadence, tuple[int, ...]]


def _ints(value: Any) -> list[int]:
    """An aggregate of ids: a list on PostgreSQL (array_agg), text on SQLite."""
    if isinstance(value, str):
        return [int(part) for part in value.split(",")]
    return [int(part) for part in value]


def content_groups(
    session: Session, reader_ids: Sequence[int], now: dt.datetime
) -> dict[Content, list[int]]:
    """These readers grouped by what they are due: (cadence, sorted post ids) -> reader
    ids, worked out by the database in one statement; readers with nothing new are in
    no group."""
    pairs = _pending_pairs(
        now,
        id_slice(subscriber_tags.c.subscriber_id, reader_ids),
        between=(min(reader_ids), max(reader_ids)),
    )
    pending = pairs.subquery("pending")
    if session.get_bind().dialect.name == "postgresql":
        posts: ColumnElement[Any] = func.array_agg(
            aggregate_order_by(pending.c.post_id, pending.c.post_id)
        )
        members: ColumnElement[Any] = func.array_agg(Subscriber.id)
    else:
        # SQLite (before 3.44) cannot order inside an aggregate: the ids are sorted
        # below, and groups that differ only in order merged.
        posts = func.group_concat(pending.c.post_id, ",")
        members = func.group_concat(Subscriber.id, ",")
    per_reader = (
        select(pending.c.subscriber_id, posts.label("posts"))
        .group_by(pending.c.subscriber_id)
        .subquery("per_reader")
    )
    query = (
        select(Subscriber.cadence, per_reader.c.posts, members)
        .join(per_reader, per_reader.c.subscriber_id == Subscriber.id)
        .group_by(Subscriber.cadence, per_reader.c.posts)
    )
    groups: dict[Content, list[int]] = defaultdict(list)
    for cadence, post_ids, reader_ids_found in session.execute(query):
        groups[(cadence, tuple(sorted(_ints(post_ids))))].extend(_ints(reader_ids_found))
    return groups


class _Reader(NamedTuple):
    """What planning needs of a reader, read as a plain row (no ORM object)."""

    id: int
    cadence: Cadence
    timezone: str
    send_hour: int
    send_weekday: int
    blocked: bool


@dataclass
class _Chunk:
    """One chunk's planning, until it is written."""

    report: PlanReport
    stamp: dt.datetime
    # content key -> digest id, or None where no digest has it yet.
    known: dict[str, int | None] = field(default_factory=dict)
    renders_alone: set[tuple[Cadence, int]] = field(default_factory=set)
    promises: list[Promise] = field(default_factory=list)


def _digest_for(session: Session, cadence: Cadence, post_ids: Sequence[int], chunk: _Chunk) -> int:
    """The id of the digest with this content, rendering it only if nobody has yet."""
    report = chunk.report
    key = content_key(cadence, post_ids)
    existing = (
        chunk.known[key]
        if key in chunk.known
        else session.scalar(select(Digest.id).where(Digest.content_key == key))
    )
    if existing is not None:
        report.digests_reused += 1
        return existing
    posts = list(session.scalars(select(Post).where(Post.id.in_(post_ids))))
    try:
        with RENDERING:
            rendered = render_digest(posts, cadence)
    except Exception as exc:
        raise RenderFailed(describe(exc)) from exc
    try:
        with session.begin_nested():
            digest = Digest(
                content_key=key,
                cadence=cadence,
                post_ids=list(post_ids),
                subject=rendered.subject,
                html=rendered.html,
                text=rendered.text,
            )
            session.add(digest)
            session.flush()
    except IntegrityError:
        # Another planner rendered the same content a moment ago: use theirs.
        report.digests_reused += 1
        found = session.scalars(select(Digest.id).where(Digest.content_key == key)).one()
        chunk.known[key] = found
        return found
    report.digests_rendered += 1
    chunk.known[key] = digest.id
    return digest.id


def _plan_group(
    session: Session,
    cadence: Cadence,
    post_ids: Sequence[int],
    members: Sequence[int],
    chunk: _Chunk,
) -> None:
    """Promise these posts to these readers in one digest.

    If the digest cannot be rendered, each post is rendered alone: those that fail
    are recorded as failed and the rest are planned again without them, so readers
    still get the good posts now. If every post renders alone, the group itself is
    recorded as failed.
    """
    report = chunk.report
    while True:
        ids = [p for p in post_ids if p not in report.failed_posts]
        if not ids:
            report.skipped["only_failed_posts"] += len(members)
            return
        try:
            digest_id = _digest_for(session, cadence, ids, chunk)
        except RenderFailed as exc:
            if _find_failed_posts(session, cadence, ids, chunk):
                continue
            _fail_group(session, cadence, ids, members, exc.reason, chunk)
            return
        chunk.promises.append(Promise(digest_id, ids, members, DeliveryStatus.QUEUED))
        return


def _find_failed_posts(
    session: Session, cadence: Cadence, post_ids: Sequence[int], chunk: _Chunk
) -> bool:
    """Render each post alone and record those that fail; True if any did."""
    found = False
    for post in session.scalars(select(Post).where(Post.id.in_(post_ids)).order_by(Post.id)):
        if (cadence, post.id) in chunk.renders_alone:
            continue
        try:
            with RENDERING:
                render_digest([post], cadence)
        except Exception as exc:
            reason = describe(exc)
            post.failed_at = chunk.stamp
            post.failed_reason = reason
            chunk.report.failed_posts[post.id] = reason
            chunk.report.fail(f"post {post.id} could not be rendered and was left out: {reason}")
            found = True
        else:
            chunk.renders_alone.add((cadence, post.id))
    return found


def _fail_group(
    session: Session,
    cadence: Cadence,
    post_ids: Sequence[int],
    members: Sequence[int],
    reason: str,
    chunk: _Chunk,
) -> None:
    """Every post renders alone but not together (a template problem, say): record the
    readers' deliveries as failed, with their posts promised, so no run retries them."""
    digest = Digest(
        # A key no planner computes: nobody else is ever handed this empty digest.
        content_key=token_hex(32),
        cadence=cadence,
        post_ids=list(post_ids),
        subject="",
        html="",
        text="",
    )
    session.add(digest)
    session.flush()
    error = f"digest could not be rendered: {reason}"
    chunk.promises.append(Promise(digest.id, post_ids, members, DeliveryStatus.FAILED, error))
    chunk.report.failed_deliveries += len(members)
    chunk.report.fail(
        f"digest of post(s) {', '.join(map(str, post_ids))} could not be rendered for "
        f"{len(members)} reader(s): {reason}"
    )


def _move_on(
    session: Session, readers: Sequence[_Reader], now: dt.datetime, stamp: dt.datetime
) -> None:
    """Daily and weekly readers move on to their next slot whether or not they got
    anything: a post arriving later waits for that slot, as the reader chose. The slot
    is computed once per (cadence, time zone, hour, weekday) and written with one
    UPDATE per group. Every reader planned (suppressed ones aside: nothing was decided
    for them) records when, for ledger compaction."""
    slots: dict[tuple[Cadence, str, int, int], list[_Reader]] = defaultdict(list)
    immediate: list[int] = []
    for reader in readers:
        if reader.cadence is Cadence.IMMEDIATE:
            if not reader.blocked:
                immediate.append(reader.id)
            continue
        # A daily slot does not depend on the weekday: one group for all of them.
        weekday = reader.send_weekday if reader.cadence is Cadence.WEEKLY else 0
        slots[(reader.cadence, reader.timezone, reader.send_hour, weekday)].append(reader)
    quiet = {"synchronize_session": False}
    if slots and session.get_bind().dialect.name == "postgresql":
        _move_on_at_once(session, slots, now, stamp)
        slots = {}
    # Readers come in id order and groups go in the order of their first reader: two
    # planners on the same readers lock rows in the same order, so neither deadlocks.
    for (cadence, timezone, hour, weekday), members in slots.items():
        blocked = [r.id for r in members if r.blocked]
        through: Any = stamp
        if blocked:
            through = case(
                (id_slice(Subscriber.id, blocked), Subscriber.planned_through),
                else_=literal(stamp, UTCDateTime()),
            )
        session.execute(
            update(Subscriber)
            .where(id_slice(Subscriber.id, [r.id for r in members]))
            .values(
                next_digest_at=next_slot(cadence, timezone, hour, weekday, now),
                planned_through=through,
            )
            .execution_options(**quiet)
        )
    if immediate:
        session.execute(
            update(Subscriber)
            .where(
                id_slice(Subscriber.id, immediate),
                or_(
                    Subscriber.planned_through.is_(None),
                    Subscriber.planned_through < stamp - PLANNED_THROUGH_STEP,
                ),
            )
            .values(planned_through=stamp)
            .execution_options(**quiet)
        )


def _move_on_at_once(
    session: Session,
    slots: dict[tuple[Cadence, str, int, int], list[_Reader]],
    now: dt.datetime,
    stamp: dt.datetime,
) -> None:
    """`_move_on` for PostgreSQL: each group's slot is still computed once, but all
    groups are written by one UPDATE over arrays. A chunk of readers at a few hours in
    a few zones, weekly ones on seven weekdays, makes a couple of hundred groups of a
    handful of readers each, and one statement per group was half of planning's time
    (measured at 200,000 readers). Two planners on the same readers may lock them in
    another order here; a deadlock rolls the chunk back and it is planned again."""
    ids: list[int] = []
    when: list[str] = []
    kept: list[int] = []
    for (cadence, timezone, hour, weekday), members in slots.items():
        slot = next_slot(cadence, timezone, hour, weekday, now)
        assert slot is not None  # daily and weekly readers only: they have a next slot
        for reader in members:
            ids.append(reader.id)
            when.append(slot.isoformat())
            kept.append(1 if reader.blocked else 0)
    rows = (
        func.unnest(pg_array(ids), pg_array(when, DateTime(timezone=True)), pg_array(kept))
        .table_valued("id", "slot", "blocked")
        .render_derived(name="moved")
    )
    session.execute(
        update(Subscriber)
        .where(Subscriber.id == rows.c.id)
        .values(
            next_digest_at=rows.c.slot,
            # Nothing was decided for a suppressed reader: their bound stays.
            planned_through=case(
                (rows.c.blocked == 1, Subscriber.planned_through),
                else_=literal(stamp, UTCDateTime()),
            ),
        )
        .execution_options(synchronize_session=False)
    )


def _plan_chunk(
    session: Session, ids: Sequence[int], where: Sequence[ColumnElement[bool]], now: dt.datetime
) -> tuple[PlanReport, list[int]]:
    """Plan the active readers among `ids` that still meet `where`; the report and the
    new queued delivery ids."""
    # Row timestamps never lie in the future, even for a run at a future --now, so
    # the sweeper's staleness checks keep working on the real clock.
    chunk = _Chunk(PlanReport(), min(now, utcnow()))
    report = chunk.report
    if session.get_bind().dialect.name == "postgresql":
        # A chunk's statements are small and chunks already run side by side: parallel
        # query workers would only compete with them for the same cores.
        session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
    rows = session.execute(
        select(
            Subscriber.id,
            Subscriber.email,
            Subscriber.cadence,
            Subscriber.timezone,
            Subscriber.send_hour,
            Subscriber.send_weekday,
        )
        .where(
            id_slice(Subscriber.id, ids),
            Subscriber.status == SubscriberStatus.ACTIVE,
            *where,
        )
        .order_by(Subscriber.id)
    ).all()
    blocked = suppressed_among(session, [row[1] for row in rows])
    readers = [
        _Reader(reader, cadence, zone, hour, weekday, email in blocked)
        for reader, email, cadence, zone, hour, weekday in rows
    ]
    report.subscribers = len(readers)
    wanted = [r.id for r in readers if not r.blocked]
    if len(wanted) < len(readers):
        report.skipped["suppressed"] += len(readers) - len(wanted)
    groups = content_groups(session, wanted, now) if wanted else {}
    with_news = sum(len(members) for members in groups.values())
    if with_news < len(wanted):
        report.skipped["nothing_new"] += len(wanted) - with_news
    if groups:
        keys = [content_key(cadence, post_ids) for cadence, post_ids in groups]
        chunk.known = dict.fromkeys(keys)
        found = select(Digest.content_key, Digest.id).where(Digest.content_key.in_(keys))
        chunk.known.update((key, digest_id) for key, digest_id in session.execute(found))
    for (cadence, post_ids), members in groups.items():
        _plan_group(session, cadence, post_ids, members, chunk)
    queued = write_promises(session, chunk.promises, chunk.stamp)
    _move_on(session, readers, now, chunk.stamp)
    report.planned = len(queued)
    return report, queued


# A chunk that deadlocked or failed to serialise with another transaction (another
# planner, or a chunk of this one) is rolled back whole and simply tried again.
RETRYABLE = frozenset({"40P01", "40001"})


def _plan_ids(
    ids: Sequence[int], where: Sequence[ColumnElement[bool]], now: dt.datetime
) -> tuple[PlanReport, list[int]]:
    """Plan one chunk in one transaction, again if it raced with another planner."""
    for attempt in range(3):
        try:
            with session_scope() as session:
                return _plan_chunk(session, ids, where, now)
        except IntegrityError:
            # A concurrent planner promised some of these posts first; the
            # retry sees its rows and plans only what is still missing.
            log.info("planning chunk raced with another planner (try %d)", attempt + 1)
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) not in RETRYABLE:
                raise
            log.info("planning chunk deadlocked with another planner (try %d)", attempt + 1)
    raise RuntimeError("planning kept racing with another planner")


def _plan_safely(
    ids: Sequence[int], where: Sequence[ColumnElement[bool]], now: dt.datetime
) -> tuple[PlanReport, list[int]]:
    """Plan a chunk; one that fails is rolled back, logged and counted, and only an
    unreachable database ends the run (nothing else could be planned)."""
    try:
        return _plan_ids(ids, where, now)
    except DATABASE_DOWN:
        raise
    except Exception as exc:
        report = PlanReport(planning_errors=1)
        report.fail(
            f"planning {len(ids)} reader(s) (ids {ids[0]} to {ids[-1]}) failed: {describe(exc)}",
            exc,
        )
        return report, []


def chunks_in_flight() -> int:
    """How many chunks are planned at the same time. Most of a chunk's work is the
    database's, in a process of its own: on PostgreSQL two chunks side by side keep two
    cores busy (the planner's own share, rendering and building rows, fits in
    between). SQLite takes one writer at a time, so there one is enough."""
    if get_engine().dialect.name != "postgresql":
        return 1
    return max(1, min(MAX_CHUNKS_IN_FLIGHT, os.cpu_count() or 1))


def _plan_chunks(
    chunks: Iterator[list[int]],
    where: Sequence[ColumnElement[bool]],
    now: dt.datetime,
    on_chunk: ChunkCallback | None,
) -> PlanReport:
    """Plan these chunks of reader ids, a few at a time, handing on each one's new
    deliveries in order as it is committed. At most `chunks_in_flight()` chunks are
    held at once: memory is bounded by the chunk size, never by the number of readers."""
    report = PlanReport()

    def hand_on(result: tuple[PlanReport, list[int]]) -> None:
        chunk_report, queued = result
        report.merge(chunk_report)
        if on_chunk is not None:
            on_chunk(queued)
        else:
            report.deliveries.extend(queued)

    first = next(chunks, None)
    if first is None:
        return report
    # The first chunk goes alone: it renders most of the digests the run needs, which
    # the chunks after it then find instead of rendering them side by side.
    hand_on(_plan_safely(first, where, now))
    workers = chunks_in_flight()
    if workers == 1:
        for ids in chunks:
            hand_on(_plan_safely(ids, where, now))
        return report
    with ThreadPoolExecutor(workers, thread_name_prefix="planning") as pool:
        in_flight: deque[Future[tuple[PlanReport, list[int]]]] = deque()
        for ids in chunks:
            in_flight.append(pool.submit(_plan_safely, ids, where, now))
            if len(in_flight) >= workers:
                hand_on(in_flight.popleft().result())
        while in_flight:
            hand_on(in_flight.popleft().result())
    return report


def plan_subscribers(
    subscriber_ids: Sequence[int],
    now: dt.datetime | None = None,
    on_chunk: ChunkCallback | None = None,
) -> PlanReport:
    """Plan a digest for each of these subscribers that has anything new, chunk by chunk."""
    now = now or utcnow()
    chunks = chunked(sorted(set(subscriber_ids)), get_settings().plan_chunk_size)
    return _plan_chunks(chunks, (), now, on_chunk)


def _keyset(where: Sequence[ColumnElement[bool]]) -> Iterator[list[int]]:
    """Ids of the active readers meeting `where`, a chunk at a time in id order; each
    chunk read only when the one before is taken (after its last id)."""
    size = get_settings().plan_chunk_size
    after = 0
    while True:
        with session_scope() as session:
            ids = list(
                session.scalars(
                    select(Subscriber.id)
                    .where(
                        Subscriber.status == SubscriberStatus.ACTIVE, *where, Subscriber.id > after
                    )
                    .order_by(Subscriber.id)
                    .limit(size)
                )
            )
        if ids:
            yield ids
        if len(ids) < size:
            return
        after = ids[-1]


def plan_readers(
    where: Sequence[ColumnElement[bool]],
    now: dt.datetime,
    on_chunk: ChunkCallback | None = None,
) -> PlanReport:
    """Plan every active reader meeting `where`, chunk by chunk in id order, never
    holding more than a few chunks' ids."""
    return _plan_chunks(_keyset(where), where, now, on_chunk)


def plan_for_post(
    post_id: int, now: dt.datetime | None = None, on_chunk: ChunkCallback | None = None
) -> PlanReport:
    """Plan immediate readers who follow any of the post's tags, then mark it planned."""
    now = now or utcnow()
    with session_scope() as session:
        post = session.get(Post, post_id)
        if post is None:
            report = PlanReport()
            report.skipped["post_missing"] += 1
            return report
        received_at = post.received_at
        tag_ids = [t.id for t in post.tags]
    follows = exists().where(
        subscriber_tags.c.subscriber_id == Subscriber.id, subscriber_tags.c.tag_id.in_(tag_ids)
    )
    readers = (
        Subscriber.cadence == Cadence.IMMEDIATE,
        Subscriber.subscribed_at <= received_at,
        follows,
    )
    # Failures inside are recorded in the report; the post is marked planned all the
    # same, so the sweeper does not meet it again on every run.
    report = plan_readers(readers, max(now, received_at), on_chunk)
    _mark_planned(post_id, now)
    return report


def _mark_planned(post_id: int, now: dt.datetime) -> None:
    with session_scope() as session:
        session.execute(
            update(Post).where(Post.id == post_id, Post.planned_at.is_(None)).values(planned_at=now)
        )


def unplanned_posts(now: dt.datetime) -> list[int]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(Post.id)
                .where(
                    Post.planned_at.is_(None),
                    Post.received_at <= now - unplanned_grace(),
                    eligible_posts(),
                )
                .order_by(Post.id)
            )
        )


def due_readers(now: dt.datetime) -> tuple[ColumnElement[bool], ...]:
    """Daily and weekly readers whose slot has come (with `plan_readers`)."""
    return (
        Subscriber.cadence.in_([Cadence.DAILY, Cadence.WEEKLY]),
        Subscriber.next_digest_at <= now,
    )


def plan_due(now: dt.datetime | None = None, on_chunk: ChunkCallback | None = None) -> PlanReport:
    """Sweep posts whose task was lost, then plan every daily/weekly reader whose slot came."""
    now = now or utcnow()
    report = PlanReport()
    for post_id in unplanned_posts(now):
        try:
            # Called by its public name, with on_chunk only when streaming, so that a
            # stand-in taking (post_id, now) keeps working.
            swept = (
                plan_for_post(post_id, now)
                if on_chunk is None
                else plan_for_post(post_id, now, on_chunk)
            )
            report.merge(swept)
        except DATABASE_DOWN:
            raise
        except Exception as exc:
            report.planning_errors += 1
            report.fail(f"planning swept post {post_id} failed: {describe(exc)}", exc)
            _mark_planned(post_id, now)
        report.posts_swept += 1
    report.merge(plan_readers(due_readers(now), now, on_chunk))
    return report


def stranded_deliveries(now: dt.datetime | None = None) -> list[int]:
    """Deliveries whose send task was lost, whose retry is due, or whose worker died."""
    now = now or utcnow()
    with session_scope() as session:
        return list(
            session.scalars(
                select(Delivery.id)
                .where(
                    or_(
                        and_(
                            Delivery.status == DeliveryStatus.QUEUED,
                            or_(
                                Delivery.next_attempt_at <= now,
                                and_(
                                    Delivery.next_attempt_at.is_(None),
                                    Delivery.created_at <= now - stale_queued(),
                                ),
                            ),
                        ),
                        and_(
                            Delivery.status == DeliveryStatus.SENDING,
                            Delivery.claimed_at <= now - sending_lease(),
                        ),
                    )
                )
                .order_by(Delivery.id)
            )
        )


def batches(delivery_ids: Iterable[int]) -> list[list[int]]:
    """Delivery ids cut into send batches (one task and one SMTP connection each)."""
    return list(chunked(list(delivery_ids), get_settings().send_batch_size))
