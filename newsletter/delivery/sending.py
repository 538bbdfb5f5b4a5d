"""Sending a batch of deliveries over several SMTP connections, recording every outcome.

A batch is first claimed (queued -> sending, with a lease) in its own transaction,
so two workers handed the same ids can never both send one. A background thread
renews the lease while the batch is sent; a worker that dies stops renewing, and
the sweeper hands its rows to another one within about a minute.

Up to NEWSLETTER_SMTP_CONNECTIONS threads each keep a connection open and take the
next message from one queue, so one slow reply never idles the rest. Outcomes are
committed by one writer thread in groups, never blocking a send; a sender waits only
when NEWSLETTER_UNRECORDED_LIMIT messages still lack a committed outcome, which bounds
what a worker killed at any instant can send again. While the database cannot take
an outcome, sending stops until it can.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from types import TracebackType
from typing import Any, Protocol, Self, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    Update,
    and_,
    bindparam,
    case,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from newsletter.config import Settings, get_settings
from newsletter.db import (
    among,
    array_literal,
    database_unavailable,
    get_engine,
    get_sessionmaker,
    session_scope,
    utcnow,
)
from newsletter.delivery.compose import message_for
from newsletter.delivery.mime import OutgoingMessage, Unsendable
from newsletter.delivery.planning import describe, sending_lease
from newsletter.delivery.ratelimit import domain_limits, limiter_for, message_limits
from newsletter.delivery.relays import Relay, RelayTransport, pool_for
from newsletter.delivery.smtp import (
    ConnectionLost,
    OutcomeUnknown,
    PermanentFailure,
    TemporaryFailure,
    sealer_for,
)
from newsletter.errors import InvalidInput
from newsletter.models import Cadence, Delivery, DeliveryStatus, Digest, Tag
from subscribers.models import Subscriber, SubscriberStatus, SuppressionReason, subscriber_tags
from subscribers.suppression import suppress, suppressed_among

log = logging.getLogger(__name__)


class Transport(Protocol):
    """What a sender needs: a session it can open and close, and `send`."""

    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    def send(self, message: OutgoingMessage, following: OutgoingMessage | None = None) -> None: ...
    @property
    def connected(self) -> bool: ...

    # The relay the session is on, whose rate limit each message passes.
    relay: Relay | None


TransportFactory = Callable[[], Transport]


def smtp_transport_factory(settings: Settings | None = None) -> TransportFactory:
    """Connections to the relays of NEWSLETTER_SMTP_URL (one or several, with failover)."""
    settings = settings or get_settings()
    if not settings.smtp_url:
        raise InvalidInput("NEWSLETTER_SMTP_URL is not set: no way to send mail")
    pool = pool_for(settings.smtp_url)
    # Built (DKIM keys read) before anything is claimed or sent.
    sealer = sealer_for(settings)

    def connect() -> Transport:
        transport = RelayTransport(pool, settings.smtp_data_timeout)
        transport.sealer = sealer
        return transport

    return connect


@dataclass
class SendReport:
    sent: int = 0
    failed: int = 0
    # Sent, but the server's reply to the end of DATA never came (counted in `sent`
    # under the default policy, deferred under NEWSLETTER_UNKNOWN_OUTCOME=retry).
    unknown: int = 0
    deferred: list[int] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    retry_in: int = 0

    def merge(self, other: SendReport) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.unknown += other.unknown
        self.deferred.extend(other.deferred)
        self.skipped.update(other.skipped)
        self.retry_in = max(self.retry_in, other.retry_in)


def backoff(attempts: int) -> dt.timedelta:
    """NEWSLETTER_RETRY_BACKOFF (a minute), then twice as long each time, up to six hours."""
    first = get_settings().retry_backoff
    return dt.timedelta(seconds=min(first * 2 ** max(attempts - 1, 0), 6 * 3600))


def claim_stamp(now: dt.datetime) -> dt.datetime:
    """The claimed_at a claim at `now` writes: never in the future (a run at a future
    --now), or the claim would outlive its lease on the real clock."""
    return min(now, utcnow())


def claim(
    session: Session,
    delivery_ids: Sequence[int],
    now: dt.datetime,
    stamp: dt.datetime | None = None,
) -> list[int]:
    """Take the sendable deliveries among these ids; the rest are someone else's or done."""
    result = session.execute(
        update(Delivery)
        .where(among(Delivery.id, delivery_ids), _claimable(now))
        .values(
            status=DeliveryStatus.SENDING,
            claimed_at=stamp or claim_stamp(now),
            updated_at=now,
        )
        .returning(Delivery.id)
    )
    claimed = sorted(result.scalars())
    session.commit()
    return claimed


def _claimable(now: dt.datetime) -> ColumnElement[bool]:
    """Queued and due, or sending under a lease that ran out."""
    return or_(
        and_(
            Delivery.status == DeliveryStatus.QUEUED,
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
        ),
        and_(
            Delivery.status == DeliveryStatus.SENDING,
            Delivery.claimed_at <= now - sending_lease(),
        ),
    )


class LeaseKeeper:
    """Renews a batch's claim from a background thread while the batch is being sent.

    A row is still ours while its `claimed_at` holds the stamp we last wrote: the
    renewal touches only such rows. A row it no longer finds was taken over (our
    lease ran out while we stalled) and must not be sent by us any more.
    """

    def __init__(self, ids: Iterable[int], stamp: dt.datetime, lease: dt.timedelta) -> None:
        self._held = set(ids)
        self._lost: set[int] = set()
        self._stamp = stamp
        # Renewals move the stamp on by the time that really passed, so a run at a
        # given --now keeps its own clock.
        self._origin = (stamp, time.monotonic())
        self._every = lease.total_seconds() / 3
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def release(self, delivery_id: int) -> None:
        """This row's outcome is written: no need to hold it any more."""
        with self._lock:
            self._held.discard(delivery_id)

    def taken_over(self, delivery_id: int) -> bool:
        with self._lock:
            return delivery_id in self._lost

    def renew(self) -> None:
        with self._lock:
            ids, old = sorted(self._held), self._stamp
        if not ids:
            return
        base, started = self._origin
        new = base + dt.timedelta(seconds=time.monotonic() - started)
        with session_scope() as session:
            kept = set(
                session.scalars(
                    update(Delivery)
                    .where(
                        among(Delivery.id, ids),
                        Delivery.status == DeliveryStatus.SENDING,
                        Delivery.claimed_at == old,
                    )
                    .values(claimed_at=new)
                    .returning(Delivery.id)
                    .execution_options(synchronize_session=False)
                )
            )
        with self._lock:
            self._stamp = new
            lost = {i for i in ids if i not in kept and i in self._held}
            self._lost |= lost
        if lost:
            log.warning("%d deliveries were taken over by another sender", len(lost))

    def _run(self) -> None:
        while not self._done.wait(self._every):
            try:
                self.renew()
            except Exception as exc:
                # The database is down: the outcome writer waits for it; keep trying.
                log.warning("could not renew the claim on a batch: %s", describe(exc))


@dataclass
class Outcome:
    """What became of one delivery, kept in memory until the database has it."""

    delivery_id: int
    values: dict[str, Any]
    # A hard bounce: (address, reply) goes on the suppression list with the outcome.
    suppress: tuple[str, str] | None = None


def _sent(delivery: _Item, report: SendReport, note: str | None = None) -> Outcome:
    report.sent += 1
    values = {
        "status": DeliveryStatus.SENT,
        "sent_at": utcnow(),
        "attempts": delivery.attempts + 1,
        "last_error": note,
        "next_attempt_at": None,
    }
    return Outcome(delivery.id, values)


def _failed(delivery: _Item, error: str, report: SendReport) -> Outcome:
    report.failed += 1
    values = {
        "status": DeliveryStatus.FAILED,
        "attempts": delivery.attempts + 1,
        "last_error": error[:2000],
        "next_attempt_at": None,
    }
    return Outcome(delivery.id, values)


def _deferred(
    delivery: _Item, error: str, now: dt.datetime, settings: Settings, report: SendReport
) -> Outcome:
    """Tried and refused for now (4xx, 421, a dropped connection): one attempt charged."""
    attempts = delivery.attempts + 1
    if attempts >= settings.max_send_attempts:
        return _failed(delivery, f"gave up after {attempts} attempts: {error}", report)
    return _queued(delivery, error, attempts, now, report)


def _postponed(delivery: _Item, error: str, now: dt.datetime, report: SendReport) -> Outcome:
    """Never tried (no connection to be had): back in the queue, no attempt charged."""
    return _queued(delivery, error, delivery.attempts, now, report)


def _queued(
    delivery: _Item, error: str, attempts: int, now: dt.datetime, report: SendReport
) -> Outcome:
    wait = backoff(attempts)
    report.deferred.append(delivery.id)
    report.retry_in = max(report.retry_in, int(wait.total_seconds()))
    values = {
        "status": DeliveryStatus.QUEUED,
        "attempts": attempts,
        "last_error": error[:2000],
        "next_attempt_at": now + wait,
    }
    return Outcome(delivery.id, values)


def _unknown(
    delivery: _Item, error: str, now: dt.datetime, settings: Settings, report: SendReport
) -> Outcome:
    """The message went out and its reply never came: decided by NEWSLETTER_UNKNOWN_OUTCOME."""
    report.unknown += 1
    log.warning("delivery #%d: %s (policy %s)", delivery.id, error, settings.unknown_outcome)
    if settings.unknown_outcome == "retry":
        return _deferred(delivery, f"outcome unknown: {error}", now, settings, report)
    return _sent(delivery, report, f"outcome unknown: {error}; assumed delivered")


class _Strikes:
    """Connections lost in a row without the server answering a message, counted for
    the whole batch: a server that keeps refusing stops every connection of it."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._count = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self._count

    @property
    def exhausted(self) -> bool:
        return self._count > self.budget

    def add(self) -> None:
        with self._lock:
            self._count += 1

    def clear(self) -> None:
        self._count = 0


class _Connection:
    """One SMTP connection of a batch: opened when needed, dropped after a 421 or a lost
    connection and reopened after a pause, until the batch has lost
    `smtp_max_reconnects` connections in a row without the server answering a message."""

    def __init__(self, factory: TransportFactory, settings: Settings, strikes: _Strikes) -> None:
        self._factory = factory
        self._pause = settings.smtp_reconnect_pause
        self._strikes = strikes
        self._transport: Transport | None = None
        self._failed_here = False

    def get(self) -> Transport:
        """The open connection; raises ConnectionLost when there is none to be had."""
        if self._transport is not None and not self._transport.connected:
            # Closed after the server's last answer (a failed reset): never charged
            # to the next message, which has not been tried.
            self.lost()
        if self._transport is None:
            if self._strikes.exhausted:
                raise ConnectionLost(f"{self._strikes.count} connections lost in a row")
            if self._failed_here:
                time.sleep(self._pause)
            transport = self._factory()
            transport.__enter__()
            self._transport = transport
        return self._transport

    def answered(self) -> None:
        self._failed_here = False
        self._strikes.clear()

    def lost(self) -> None:
        self.drop()
        self._failed_here = True
        self._strikes.add()

    def drop(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            try:
                transport.__exit__(None, None, None)
            except Exception as exc:
                log.debug("closing an SMTP connection: %s", describe(exc))


# How long the outcome writer waits for more outcomes to write together (seconds).
_GATHER_SECONDS = 0.02


class _WriterStopped(Exception):
    """The outcome writer gave up (the database stayed unreachable): send nothing more."""


class OutcomeWriter:
    """Commits outcomes from a thread of its own, so no send waits for a database round
    trip: each write takes every outcome that came in while the previous one ran.

    The bound that keeps "never twice" honest: a sender reserves a place before each
    message and the place is freed only once that message's outcome is committed, so
    at most `limit` messages of a send task are ever sent without their outcome on
    disk. A worker killed at any instant can send only those again (after its lease
    runs out). While a write fails (the database restarting) nothing new is sent.
    """

    def __init__(
        self, keeper: LeaseKeeper, limit: int, on_recorded: Callable[[int], None] | None = None
    ) -> None:
        self._keeper = keeper
        self._limit = max(1, limit)
        self._on_recorded = on_recorded
        self._pending: list[Outcome] = []
        # Places taken: messages in flight, waiting to be written, or being written.
        self._unrecorded = 0
        self._troubled = False
        self._closing = False
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        # Senders wait on `_space` for a place; the writer waits on `_work`.
        self._space = threading.Condition(self._lock)
        self._work = threading.Condition(self._lock)
        # One connection for the batch's writes: a checkout per write would cost a
        # ping (a round trip) each time. After a lost connection it reconnects on
        # the next write.
        self._connection = get_engine().connect()
        self._session = Session(bind=self._connection, expire_on_commit=False)
        self._thread = threading.Thread(target=self._run, name="outcome-writer", daemon=True)
        self._thread.start()

    def reserve(self) -> None:
        """Wait for a place for one more message; raises _WriterStopped once the
        writer gave up."""
        with self._lock:
            while self.error is None and (self._troubled or self._unrecorded >= self._limit):
                self._space.wait()
            if self.error is not None:
                raise _WriterStopped
            self._unrecorded += 1

    def try_reserve(self) -> bool:
        """A place if one is free now, without waiting (for a message taken ahead)."""
        with self._lock:
            if self.error is not None or self._troubled or self._unrecorded >= self._limit:
                return False
            self._unrecorded += 1
            return True

    def accepting(self) -> bool:
        """Whether new messages may go: outcomes are being written."""
        with self._lock:
            return self.error is None and not self._troubled

    def unreserve(self) -> None:
        """Give back a place whose message was never sent."""
        with self._lock:
            self._unrecorded -= 1
            self._space.notify_all()

    def add(self, outcome: Outcome, *, reserved: bool = True) -> None:
        with self._lock:
            self._pending.append(outcome)
            if not reserved:
                self._unrecorded += 1
            # The writer is woken for the first outcome and when a write is due, not
            # for each one in between (a wake-up costs more than the outcome).
            if len(self._pending) == 1 or self._write_due():
                self._work.notify()

    def close(self) -> None:
        """Write what is left and stop; raises the database error if writing failed."""
        with self._lock:
            self._closing = True
            self._work.notify()
        self._thread.join()
        self._session.close()
        self._connection.close()
        if self.error is not None:
            raise self.error

    def _write_due(self) -> bool:
        # Enough to be worth a write, or senders waiting for places.
        return (
            self._closing
            or len(self._pending) >= self._limit // 2
            or self._unrecorded >= self._limit
        )

    def _trouble(self, troubled: bool) -> None:
        with self._lock:
            self._troubled = troubled
            self._space.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._work.wait()
                if not self._pending:
                    return
                # A moment's wait gathers more outcomes into this write: each write
                # costs a round trip and a commit, whatever its size.
                deadline = time.monotonic() + _GATHER_SECONDS
                while not self._write_due() and (left := deadline - time.monotonic()) > 0:
                    self._work.wait(left)
                batch, self._pending = self._pending, []
            try:
                _record(self._session, batch, on_retry=lambda: self._trouble(True))
            except BaseException as exc:
                with self._lock:
                    self.error = exc
                    self._space.notify_all()
                return
            for outcome in batch:
                self._keeper.release(outcome.delivery_id)
            with self._lock:
                self._unrecorded -= len(batch)
                self._troubled = False
                self._space.notify_all()
            if self._on_recorded:
                self._on_recorded(len(batch))


@dataclass(frozen=True, slots=True)
class _TagName:
    name: str


@dataclass(frozen=True, slots=True)
class _Reader:
    """A reader as a copy needs them (compose.Reader), read as plain rows: a batch of
    hundreds costs no ORM objects."""

    id: int
    email: str
    name: str
    uid: str
    cadence: Cadence
    timezone: str
    send_hour: int
    status: SubscriberStatus
    tags: tuple[_TagName, ...]
    send_weekday: int


@dataclass(frozen=True, slots=True)
class _Item:
    """One claimed delivery on its way out."""

    id: int
    attempts: int
    message_id: str
    digest: Digest
    subscriber: _Reader | None


def _skip_reason(subscriber: _Reader | None) -> str | None:
    if subscriber is None:
        # Deleted with their personal data after the row was planned.
        return "subscriber_deleted"
    if subscriber.status is SubscriberStatus.ACTIVE:
        return None
    return f"subscriber_{subscriber.status.value}"


def send_batch(
    delivery_ids: Sequence[int],
    now: dt.datetime | None = None,
    transport_factory: TransportFactory | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SendReport:
    """Send what can be sent of these deliveries; returns ids to retry in `deferred`.

    Raises a database error only when the database stayed unreachable (the claim
    then lapses and the sweeper hands the rows on).
    """
    now = now or utcnow()
    settings = get_settings()
    factory = transport_factory or smtp_transport_factory(settings)
    report = SendReport()
    session = get_sessionmaker()()
    try:
        stamp = claim_stamp(now)
        rows: list[_Row] | None = None
        if session.get_bind().dialect.name == "postgresql":
            rows = _claim_and_read(session, delivery_ids, now, stamp)
            claimed = [row[0] for row in rows]
        else:
            claimed = claim(session, delivery_ids, now, stamp)
        report.skipped["not_claimable"] += len(set(delivery_ids)) - len(claimed)
        if not claimed:
            return report
        with LeaseKeeper(claimed, stamp, sending_lease()) as keeper:
            sendable = _load_sendable(session, claimed, report, rows)
            for delivery_id in set(claimed) - {d.id for d in sendable}:
                keeper.release(delivery_id)
            if on_progress and len(sendable) < len(claimed):
                on_progress(len(claimed) - len(sendable))
            if sendable:
                _send_all(sendable, settings, now, report, factory, keeper, on_progress)
    finally:
        session.close()
    return report


# A claimed delivery and its reader (NULLs for a deleted one), as `_load_sendable` reads it.
_Row = tuple[Any, ...]


def _claim_and_read(
    session: Session, delivery_ids: Sequence[int], now: dt.datetime, stamp: dt.datetime
) -> list[_Row]:
    """`claim` and the first read of `_load_sendable` in one statement, on PostgreSQL:
    the claimed rows come back with their readers. A Core UPDATE in a CTE: the ORM's
    UPDATE, then a second query, cost more than the work itself, for every batch."""
    claimed = (
        _DELIVERIES.update()
        .where(among(_DELIVERIES.c.id, delivery_ids), _claimable(now))
        .values(status=DeliveryStatus.SENDING, claimed_at=stamp, updated_at=now)
        .returning(
            _DELIVERIES.c.id,
            _DELIVERIES.c.attempts,
            _DELIVERIES.c.message_id,
            _DELIVERIES.c.digest_id,
            _DELIVERIES.c.subscriber_id,
        )
        .cte("claimed")
    )
    rows = session.execute(
        select(
            claimed.c.id,
            claimed.c.attempts,
            claimed.c.message_id,
            claimed.c.digest_id,
            *_READER_COLUMNS,
        )
        .outerjoin(Subscriber, Subscriber.id == claimed.c.subscriber_id)
        .order_by(claimed.c.id)
    ).all()
    session.commit()
    return [tuple(row) for row in rows]


# What a send needs of a delivery's reader, after the delivery's own columns.
_READER_COLUMNS = (
    Subscriber.id,
    Subscriber.email,
    Subscriber.name,
    Subscriber.uid,
    Subscriber.cadence,
    Subscriber.timezone,
    Subscriber.send_hour,
    Subscriber.status,
    Subscriber.send_weekday,
)


def _read_claimed(session: Session, claimed: list[int]) -> list[_Row]:
    return [
        tuple(row)
        for row in session.execute(
            select(
                Delivery.id,
                Delivery.attempts,
                Delivery.message_id,
                Delivery.digest_id,
                *_READER_COLUMNS,
            )
            .outerjoin(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(among(Delivery.id, claimed))
            .order_by(Delivery.id)
        )
    ]


def _load_sendable(
    session: Session, claimed: list[int], report: SendReport, rows: list[_Row] | None = None
) -> list[_Item]:
    """The claimed rows with their readers and digests; inactive or suppressed readers
    are marked skipped (committed) and left out. `rows`: the claimed rows with their
    readers, when the claim read them already.

    Rows, tags and digests come in one query each, with the ids as one array parameter
    (`among`) and plain rows rather than ORM objects: this runs for every batch."""
    if rows is None:
        rows = _read_claimed(session, claimed)
    reader_ids = {row[4] for row in rows if row[4] is not None}
    tags: dict[int, list[_TagName]] = defaultdict(list)
    followed = (
        select(subscriber_tags.c.subscriber_id, Tag.name)
        .join(Tag, Tag.id == subscriber_tags.c.tag_id)
        .where(among(subscriber_tags.c.subscriber_id, reader_ids))
        .order_by(Tag.slug)
    )
    for reader_id, tag_name in session.execute(followed):
        tags[reader_id].append(_TagName(tag_name))
    digest_ids = {row[3] for row in rows}
    digests = {d.id: d for d in session.scalars(select(Digest).where(among(Digest.id, digest_ids)))}
    items = [
        _Item(
            id=row[0],
            attempts=row[1],
            message_id=row[2],
            digest=digests[row[3]],
            subscriber=None
            if row[4] is None
            else _Reader(
                id=row[4],
                email=row[5],
                name=row[6],
                uid=row[7],
                cadence=row[8],
                timezone=row[9],
                send_hour=row[10],
                status=row[11],
                tags=tuple(tags[row[4]]),
                send_weekday=row[12],
            ),
        )
        for row in rows
    ]
    blocked = suppressed_among(session, [i.subscriber.email for i in items if i.subscriber])
    sendable: list[_Item] = []
    skipped: dict[str, list[int]] = defaultdict(list)
    for item in items:
        reason = _skip_reason(item.subscriber)
        if reason is None and item.subscriber and item.subscriber.email in blocked:
            reason = "suppressed"
        if reason:
            skipped[reason].append(item.id)
            report.skipped[reason] += 1
        else:
            sendable.append(item)
    for reason, ids in skipped.items():
        session.execute(
            update(Delivery)
            .where(among(Delivery.id, ids))
            .values(status=DeliveryStatus.SKIPPED, skip_reason=reason)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return sendable


def _send_all(
    sendable: list[_Item],
    settings: Settings,
    now: dt.datetime,
    report: SendReport,
    factory: TransportFactory,
    keeper: LeaseKeeper,
    on_progress: Callable[[int], None] | None,
) -> None:
    """Send over up to `smtp_connections` connections at once, one thread each, all
    taking the next message from one queue; outcomes go to one writer."""
    work = deque(sendable)
    writer = OutcomeWriter(keeper, settings.unrecorded_limit, on_progress)
    count = max(1, min(settings.smtp_connections, len(sendable)))
    reports = [SendReport() for _ in range(count)]
    lost: list[ConnectionLost] = []
    strikes = _Strikes(settings.smtp_max_reconnects)
    threads = [
        threading.Thread(
            target=_connection_loop,
            args=(
                work,
                writer,
                keeper,
                _Connection(factory, settings, strikes),
                settings,
                now,
                r,
                lost,
            ),
            name=f"smtp-{n}",
            daemon=True,
        )
        for n, r in enumerate(reports)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for part in reports:
        report.merge(part)
    rest = [d for d in work if not keeper.taken_over(d.id)]
    if rest and writer.error is None:
        # No connection could be had: the rest was never tried and is not charged an
        # attempt; it waits for the task's retry or the sweeper.
        reason = lost[0] if lost else ConnectionLost("no connection")
        log.warning("SMTP unavailable with %d messages left: %s", len(rest), reason)
        for delivery in rest:
            writer.add(_postponed(delivery, f"connection: {reason}", now, report), reserved=False)
    # Raises the database error when outcomes could not be written: the rows stay
    # claimed and only the lease's expiry hands them on.
    writer.close()


@dataclass(slots=True)
class _Ready:
    """A delivery built and holding a writer place, about to go out."""

    delivery: _Item
    message: OutgoingMessage
    # The relay whose rate limits it has passed (it passes a new relay's again).
    limited_on: Relay | None = None


def _connection_loop(
    work: deque[_Item],
    writer: OutcomeWriter,
    keeper: LeaseKeeper,
    connection: _Connection,
    settings: Settings,
    now: dt.datetime,
    report: SendReport,
    lost: list[ConnectionLost],
) -> None:
    """One connection's share: take the next message until none is left, the server
    cannot be reached, or outcomes can no longer be written.

    The next message is taken before this one goes, when a writer place is free at
    once, so its envelope can follow this one's end of data (`Transport.send`): one
    round trip per message. With NEWSLETTER_UNRECORDED_LIMIT=1 there is never a free
    place, so each message waits for the one before it, as the limit promises."""
    ready: _Ready | None = None
    try:
        while True:
            if ready is not None and not writer.accepting():
                # Taken ahead, then the outcome writes began to fail: nothing new goes
                # out until they land. Dropping the session discards an envelope
                # already sent for it (the server never saw the message's end).
                connection.drop()
                work.appendleft(ready.delivery)
                writer.unreserve()
                ready = None
            if ready is None:
                try:
                    ready = _take(work, writer, keeper, settings, report, wait=True)
                except _WriterStopped:
                    return
                if ready is None:
                    return
            try:
                transport = connection.get()
            except ConnectionLost as exc:
                lost.append(exc)
                return
            _pass_limits(ready, transport, settings)
            ahead = _take(work, writer, keeper, settings, report, wait=False)
            # A rate-limited message is not sent ahead: held until the next one's
            # turn, it would reach the server bunched with others.
            following = None
            if ahead is not None and _pass_limits(ahead, transport, settings, wait=False):
                following = ahead.message
            writer.add(_attempt(transport, connection, ready, following, settings, now, report))
            ready = ahead
    finally:
        if ready is not None:
            # Taken but never sent: back for another connection or the retry.
            work.appendleft(ready.delivery)
            writer.unreserve()
        connection.drop()


def _take(
    work: deque[_Item],
    writer: OutcomeWriter,
    keeper: LeaseKeeper,
    settings: Settings,
    report: SendReport,
    wait: bool,
) -> _Ready | None:
    """The next delivery, built, with a writer place (waited for, or only if one is
    free now); None when there is none. A copy that cannot be built is that reader's
    failure, recorded, and the next one is taken."""
    while True:
        try:
            delivery = work.popleft()
        except IndexError:
            return None
        if keeper.taken_over(delivery.id):
            report.skipped["taken_over"] += 1
            continue
        if wait:
            try:
                writer.reserve()
            except _WriterStopped:
                work.appendleft(delivery)
                raise
        elif not writer.try_reserve():
            work.appendleft(delivery)
            return None
        built = _build(delivery, settings, report)
        if isinstance(built, Outcome):
            writer.add(built)
            continue
        return _Ready(delivery, built)


def _build(delivery: _Item, settings: Settings, report: SendReport) -> OutgoingMessage | Outcome:
    reader = delivery.subscriber
    if reader is None:  # deleted after it was loaded: nobody to send to
        return _failed(delivery, "the reader was deleted", report)
    try:
        return message_for(delivery, delivery.digest, reader, settings)
    except Exception as exc:
        log.warning("delivery #%d cannot be built: %s", delivery.id, describe(exc))
        return _failed(delivery, f"cannot build the message: {describe(exc)}", report)


def _pass_limits(
    ready: _Ready, transport: Transport, settings: Settings, wait: bool = True
) -> bool:
    """Wait for the relay's rate and the recipient domain's, shared by every worker
    and host, once per relay the message is about to go to. Without `wait`, only
    whether it is free to go: False when a limit applies to it."""
    relay = transport.relay
    if relay is None or ready.limited_on is relay:
        return True
    limits = message_limits(relay, ready.message.recipient, domain_limits(settings))
    if limits:
        if not wait:
            return False
        limiter_for(settings).wait(limits)
    ready.limited_on = relay
    return True


def _attempt(
    transport: Transport,
    connection: _Connection,
    ready: _Ready,
    following: OutgoingMessage | None,
    settings: Settings,
    now: dt.datetime,
    report: SendReport,
) -> Outcome:
    """Send one reader's copy (and the envelope of the one `following` it); whatever
    goes wrong is that reader's outcome alone."""
    delivery = ready.delivery
    try:
        transport.send(ready.message, following)
    except PermanentFailure as exc:
        # A 5xx for this address: never mail it again until an admin says so.
        connection.answered()
        outcome = _failed(delivery, str(exc), report)
        assert delivery.subscriber is not None  # built for a reader
        outcome.suppress = (delivery.subscriber.email, str(exc))
        return outcome
    except TemporaryFailure as exc:
        connection.answered()
        return _deferred(delivery, str(exc), now, settings, report)
    except Unsendable as exc:
        return _failed(delivery, str(exc), report)
    except ConnectionLost as exc:
        connection.lost()
        return _deferred(delivery, f"connection: {exc}", now, settings, report)
    except OutcomeUnknown as exc:
        connection.lost()
        return _unknown(delivery, str(exc), now, settings, report)
    except Exception as exc:
        # Whatever it was, the SMTP session is in an unknown state: a fresh one for
        # the next reader.
        log.warning("delivery #%d could not be sent: %s", delivery.id, describe(exc))
        connection.drop()
        return _failed(delivery, f"cannot send: {describe(exc)}", report)
    connection.answered()
    return _sent(delivery, report)


# While the database is unreachable, the outcome write is retried after these pauses
# (seconds; the last repeats) until NEWSLETTER_DB_OUTAGE_WAIT has passed.
_DB_RETRY_PAUSES = (0.5, 1.0, 2.0, 4.0, 5.0)


def _record(
    writer: Session, outcomes: list[Outcome], on_retry: Callable[[], None] | None = None
) -> None:
    """Commit these outcomes. While the database is unreachable nothing more is sent
    (`on_retry` tells the senders to wait): the outcomes stay in memory and the write
    is retried until it lands, so a message that went out is never left for the
    sweeper to send again."""
    deadline = time.monotonic() + get_settings().db_outage_wait
    for attempt in itertools.count():
        try:
            _write_outcomes(writer, outcomes)
            return
        except Exception as exc:
            _rollback(writer)
            if on_retry:
                on_retry()
            pause = _DB_RETRY_PAUSES[min(attempt, len(_DB_RETRY_PAUSES) - 1)]
            if not database_unavailable(exc) or time.monotonic() + pause > deadline:
                log.error(
                    "could not record outcomes %s: %s",
                    {o.delivery_id: str(o.values["status"]) for o in outcomes},
                    describe(exc),
                )
                raise
            log.warning(
                "database unreachable; %d outcome(s) kept, writing again in %.1f s: %s",
                len(outcomes),
                pause,
                describe(exc),
            )
            time.sleep(pause)


_DELIVERIES = cast(Table, Delivery.__table__)


@cache
def _outcome_update(columns: frozenset[str]) -> Update:
    """One UPDATE by id for outcomes setting these columns, run once per group of rows
    (an executemany: psycopg sends the group in one pipeline)."""
    values: dict[str, Any] = {name: bindparam(f"v_{name}") for name in sorted(columns)}
    if "last_error" in values:
        # A reader deleted while their copy was in flight: the outcome counts, but
        # the SMTP reply (which may quote their address) is not kept.
        values["last_error"] = case(
            (_DELIVERIES.c.subscriber_id.is_(None), None), else_=values["last_error"]
        )
    return _DELIVERIES.update().where(_DELIVERIES.c.id == bindparam("v_id")).values(values)


# Every outcome of a write in one statement: the columns as arrays, unnested into rows.
_PG_OUTCOMES = text(
    """
    UPDATE deliveries AS d
    SET status = v.status,
        attempts = v.attempts,
        last_error = CASE WHEN d.subscriber_id IS NULL THEN NULL ELSE v.last_error END,
        sent_at = v.sent_at,
        next_attempt_at = v.next_attempt_at,
        updated_at = :stamp
    FROM unnest(
        CAST(:ids AS integer[]), CAST(:statuses AS varchar[]), CAST(:attempts AS integer[]),
        CAST(:errors AS text[]), CAST(:sent AS timestamptz[]), CAST(:next AS timestamptz[])
    ) AS v(id, status, attempts, last_error, sent_at, next_attempt_at)
    WHERE d.id = v.id
    """
)


def _write_outcomes(writer: Session, outcomes: list[Outcome]) -> None:
    if writer.get_bind().dialect.name == "postgresql":
        # One statement for the whole group: an executemany pays per row in Python.
        # The columns go as array literals: psycopg adapts a list item by item.
        writer.execute(
            _PG_OUTCOMES,
            {
                "ids": array_literal((o.delivery_id for o in outcomes), quoted=False),
                "statuses": array_literal(o.values["status"].value for o in outcomes),
                "attempts": array_literal((o.values["attempts"] for o in outcomes), quoted=False),
                "errors": array_literal(o.values.get("last_error") for o in outcomes),
                "sent": array_literal(_stamp(o.values.get("sent_at")) for o in outcomes),
                "next": array_literal(_stamp(o.values.get("next_attempt_at")) for o in outcomes),
                "stamp": utcnow(),
            },
        )
    else:
        groups: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
        for outcome in outcomes:
            params = {f"v_{name}": value for name, value in outcome.values.items()}
            params["v_id"] = outcome.delivery_id
            groups[frozenset(outcome.values)].append(params)
        for columns, rows in groups.items():
            writer.execute(_outcome_update(columns), rows)
    for outcome in outcomes:
        if outcome.suppress is not None:
            address, reply = outcome.suppress
            suppress(writer, address, SuppressionReason.HARD_BOUNCE, reply, actor="smtp reply")
    writer.commit()


def _stamp(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _rollback(session: Session) -> None:
    try:
        session.rollback()
    except Exception as exc:
        log.debug("rollback after a failed write: %s", describe(exc))
