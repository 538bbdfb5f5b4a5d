"""Where the current send stands, and failed deliveries put back in the queue.

The current send
----------------
Planning stamps the deliveries it writes with the instant of its run (`created_at`):
one stamp for a whole run, or stamps seconds apart when a long run stamps each chunk.
A *run* is therefore a stretch of stamps with no gap longer than `RUN_GAP`, and the
current send is:

- while any delivery is queued (deferred ones included) or being sent: every run
  that holds one, each whole (a run's first rows are often sent before its last are
  planned, so counting from its oldest unfinished row would hide them);
- when nothing is in flight: the latest run.

Why runs and not "everything planned since the oldest unfinished row": a retry puts
old rows back in the queue, and "since" would then count every delivery of every run
in between (a month of them, read on every refresh), while the runs that are really
being sent are the retried one(s) and today's. Past `MAX_RUNS` runs in flight, the
later ones are counted by their rows in flight only (the rows still to do, not those
done), which keeps the cost bounded and never misses work that is left.
`--digest` narrows it all to one digest's deliveries, whenever they were planned.

Cost at millions of rows
------------------------
Every count is a range of the index on deliveries (status, created_at) over the
runs' stamps: PostgreSQL answers it from the index alone, reading no other run.
Finding the runs takes a few `min`/`max` lookups on the same index (one per status
per step, at most `RUN_WALK` steps each way per run). The deferred count and the
rate also read the rows they count (next_attempt_at and sent_at are not in the
index), and only those: the runs' queued rows for the one, their sent rows for the
other.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, ScalarSelect, case, func, or_, select, text, update
from sqlalchemy.orm import Session

from newsletter.db import session_scope, utcnow
from newsletter.delivery import pipeline, planning, sending
from newsletter.dispatch import tasks_run_in_process
from newsletter.errors import NotFound
from newsletter.models import Delivery, DeliveryStatus, Digest

# Stamps further apart than this belong to different runs. One run's chunks follow
# each other within seconds; beat plans every few minutes.
RUN_GAP = dt.timedelta(seconds=60)
# Steps through a run's stamps each way from the one found, each of up to RUN_GAP:
# a run is taken to span at most about this many minutes, which bounds the lookups.
RUN_WALK = 60
# The rate is the messages sent in this window, per second.
RATE_WINDOW = dt.timedelta(seconds=5)
# Ids requeued per statement: far below any backend's limit on bound parameters, a
# short lock, and a million failures still only a thousand statements.
RETRY_CHUNK = 1000

OPEN = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING)
ALL = tuple(DeliveryStatus)
# Runs with rows in flight counted whole; past that, only their rows in flight.
MAX_RUNS = 10


@dataclass(frozen=True)
class Run:
    """Deliveries stamped from `start` to `end` (both included). No end: every later
    one, past MAX_RUNS runs, of which only those in flight are counted."""

    start: dt.datetime
    end: dt.datetime | None

    def scope(self) -> list[ColumnElement[bool]]:
        where = [Delivery.created_at >= self.start]
        if self.end is not None:
            where.append(Delivery.created_at <= self.end)
        return where


@dataclass(frozen=True)
class SendStatus:
    """Deliveries of the current send (or of one digest) by state; `queued` counts
    only those that may go now, `deferred` those waiting for a retry."""

    runs: tuple[Run, ...] = ()
    digest_id: int | None = None
    queued: int = 0
    deferred: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    rate: float = 0.0

    @property
    def total(self) -> int:
        return self.in_flight + self.done

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped

    @property
    def in_flight(self) -> int:
        return self.queued + self.deferred + self.sending

    def rows(self) -> list[tuple[str, int]]:
        return [
            ("queued", self.queued),
            ("deferred", self.deferred),
            ("sending", self.sending),
            ("sent", self.sent),
            ("failed", self.failed),
            ("skipped", self.skipped),
            ("total", self.total),
        ]


def _edge(
    session: Session,
    statuses: Sequence[DeliveryStatus],
    newest: bool,
    *bounds: ColumnElement[bool],
) -> dt.datetime | None:
    """The oldest (or newest) created_at among rows in these statuses: one index
    lookup per status, where a single `status IN (...)` would scan them all."""
    pick = func.max if newest else func.min
    lookups = [
        select(pick(Delivery.created_at)).where(Delivery.status == s, *bounds).scalar_subquery()
        for s in statuses
    ]
    found: list[dt.datetime] = [t for t in session.execute(select(*lookups)).one() if t]
    if not found:
        return None
    return max(found) if newest else min(found)


def run_of(session: Session, stamp: dt.datetime, floor: dt.datetime | None = None) -> Run:
    """The run that wrote `stamp`: neighbouring stamps no more than RUN_GAP apart,
    followed at most RUN_WALK steps each way, never back to `floor` or before."""
    start = end = stamp
    for _ in range(RUN_WALK):
        bounds = [Delivery.created_at >= start - RUN_GAP, Delivery.created_at < start]
        if floor is not None:
            bounds.append(Delivery.created_at > floor)
        earlier = _edge(session, ALL, False, *bounds)
        if earlier is None:
            break
        start = earlier
    for _ in range(RUN_WALK):
        bounds = [Delivery.created_at > end, Delivery.created_at <= end + RUN_GAP]
        later = _edge(session, ALL, True, *bounds)
        if later is None:
            break
        end = later
    return Run(start, end)


def current_send(session: Session) -> list[Run]:
    """The runs of the current send (see the module's docstring), oldest first."""
    runs: list[Run] = []
    while True:
        after = runs[-1].end if runs else None
        bounds = [] if after is None else [Delivery.created_at > after]
        anchor = _edge(session, OPEN, False, *bounds)
        if anchor is None:
            break
        if len(runs) == MAX_RUNS:
            runs[-1] = Run(runs[-1].start, None)
            break
        runs.append(run_of(session, anchor, floor=after))
    if not runs:
        newest = _edge(session, ALL, True)
        if newest is not None:
            runs.append(run_of(session, newest))
    return runs


def _count(*where: ColumnElement[bool]) -> ScalarSelect[int]:
    return select(func.count()).select_from(Delivery).where(*where).scalar_subquery()


def send_status(
    session: Session, digest_id: int | None = None, now: dt.datetime | None = None
) -> SendStatus:
    """Counts by state of the current send, or of every delivery of `digest_id`."""
    now = now or utcnow()
    if digest_id is not None:
        return _digest_status(session, digest_id, now)
    runs = current_send(session)
    if not runs:
        return SendStatus()
    _no_jit(session)
    # One index range per run and status, in one statement; summed here.
    counts: list[tuple[str, ScalarSelect[int]]] = []
    for run in runs:
        statuses = ALL if run.end is not None else OPEN
        counts += [(s.value, _count(Delivery.status == s, *run.scope())) for s in statuses]
        queued = Delivery.status == DeliveryStatus.QUEUED
        counts.append(("deferred", _count(queued, *run.scope(), _deferred(now))))
        if run.end is not None:
            sent = Delivery.status == DeliveryStatus.SENT
            counts.append(("recent", _count(sent, *run.scope(), _recent(now))))
    values = session.execute(select(*(c for _, c in counts))).one()
    totals: Counter[str] = Counter()
    for (name, _), value in zip(counts, values, strict=True):
        totals[name] += value
    found = {s: totals[s.value] for s in ALL}
    return _status(found, totals["deferred"], totals["recent"], runs=tuple(runs))


def _no_jit(session: Session) -> None:
    """PostgreSQL would compile the many small counts of one statement, which costs
    seconds where running them costs a few hundred milliseconds."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL jit = off"))


def _deferred(now: dt.datetime) -> ColumnElement[bool]:
    return Delivery.next_attempt_at > now


def _recent(now: dt.datetime) -> ColumnElement[bool]:
    return Delivery.sent_at > now - RATE_WINDOW


def _digest_status(session: Session, digest_id: int, now: dt.datetime) -> SendStatus:
    """One pass over the digest's rows (its index), grouped by status."""
    require_digest(session, digest_id)
    _no_jit(session)
    rows = session.execute(
        select(
            Delivery.status,
            func.count(),
            func.sum(case((_deferred(now), 1), else_=0)),
            func.sum(case((_recent(now), 1), else_=0)),
        )
        .where(Delivery.digest_id == digest_id)
        .group_by(Delivery.status)
    )
    found: dict[DeliveryStatus, int] = {}
    deferred = recent = 0
    for status, n, waiting, fresh in rows:
        found[status] = n
        if status is DeliveryStatus.QUEUED:
            deferred = int(waiting or 0)
        if status is DeliveryStatus.SENT:
            recent = int(fresh or 0)
    return _status(found, deferred, recent, digest_id=digest_id)


def _status(
    found: dict[DeliveryStatus, int],
    deferred: int,
    recent: int,
    runs: tuple[Run, ...] = (),
    digest_id: int | None = None,
) -> SendStatus:
    return SendStatus(
        runs=runs,
        digest_id=digest_id,
        queued=found.get(DeliveryStatus.QUEUED, 0) - deferred,
        deferred=deferred,
        sending=found.get(DeliveryStatus.SENDING, 0),
        sent=found.get(DeliveryStatus.SENT, 0),
        failed=found.get(DeliveryStatus.FAILED, 0),
        skipped=found.get(DeliveryStatus.SKIPPED, 0),
        rate=recent / RATE_WINDOW.total_seconds(),
    )


def require_digest(session: Session, digest_id: int) -> None:
    if session.scalar(select(Digest.id).where(Digest.id == digest_id)) is None:
        raise NotFound(f"no digest #{digest_id}")


# -- retry ------------------------------------------------------------------------


def _retryable(digest_id: int | None) -> list[ColumnElement[bool]]:
    """Failed at sending. A delivery failed at planning (its digest could not be
    rendered, attempts 0) has nothing to send; skipped rows are not failed."""
    where = [Delivery.status == DeliveryStatus.FAILED, Delivery.attempts > 0]
    if digest_id is not None:
        where.append(Delivery.digest_id == digest_id)
    return where


@dataclass(frozen=True)
class Failures:
    """What a retry would put back in the queue."""

    deliveries: int
    digests: int
    oldest: dt.datetime | None
    newest: dt.datetime | None


def failures(session: Session, digest_id: int | None = None) -> Failures:
    if digest_id is not None:
        require_digest(session, digest_id)
    n, digests, oldest, newest = session.execute(
        select(
            func.count(),
            func.count(func.distinct(Delivery.digest_id)),
            func.min(Delivery.created_at),
            func.max(Delivery.created_at),
        ).where(*_retryable(digest_id))
    ).one()
    return Failures(n, digests, oldest, newest)


def requeue_failed(
    digest_id: int | None = None, now: dt.datetime | None = None
) -> Iterator[list[int]]:
    """Put retryable failures back in the queue, RETRY_CHUNK ids per transaction, and
    yield each chunk's ids once committed.

    Attempts start again from 0 and any claim or retry time is cleared; last_error
    stays until the next attempt writes its own. Keyset on (created_at, id), the
    order of the status index, so each chunk reads only its own rows. A chunk that
    was requeued is safe if the caller stops: queued rows are the sweeper's.
    """
    now = now or utcnow()
    after: tuple[dt.datetime, int] | None = None
    while True:
        with session_scope() as session:
            query = select(Delivery.id, Delivery.created_at).where(*_retryable(digest_id))
            if after is not None:
                stamp, last_id = after
                query = query.where(
                    Delivery.created_at >= stamp,
                    or_(Delivery.created_at > stamp, Delivery.id > last_id),
                )
            rows = session.execute(
                query.order_by(Delivery.created_at, Delivery.id).limit(RETRY_CHUNK)
            ).all()
            if not rows:
                return
            after = (rows[-1].created_at, rows[-1].id)
            requeued = session.scalars(
                update(Delivery)
                .where(Delivery.id.in_([r.id for r in rows]), *_retryable(digest_id))
                .values(
                    status=DeliveryStatus.QUEUED,
                    attempts=0,
                    next_attempt_at=None,
                    claimed_at=None,
                    updated_at=now,
                )
                .returning(Delivery.id)
            ).all()
        if requeued:
            yield sorted(requeued)


@dataclass
class RetryReport:
    requeued: int = 0
    batches: int = 0
    # The outcomes when sent in this process; None when handed to the workers.
    send: sending.SendReport | None = None


def retry_failed(
    digest_id: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> RetryReport:
    """Requeue the failures and hand them to sending the way `digests run` does: a
    task per batch on the broker, or sent here when tasks run in process. Readers
    suppressed or unsubscribed since are skipped by the sender as usual."""
    in_process = tasks_run_in_process()
    # No way to send is found out before anything changes.
    factory = sending.smtp_transport_factory() if in_process else None
    if digest_id is not None:
        with session_scope() as session:
            require_digest(session, digest_id)
    report = RetryReport(send=sending.SendReport() if in_process else None)
    for ids in requeue_failed(digest_id):
        report.requeued += len(ids)
        if report.send is None:
            report.batches += pipeline.dispatch(ids)
            continue
        for batch in planning.batches(ids):
            report.batches += 1
            report.send.merge(
                sending.send_batch(batch, transport_factory=factory, on_progress=on_progress)
            )
    return report
