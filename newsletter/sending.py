"""Sending a batch of deliveries over one SMTP connection, recording every outcome.

A batch is first claimed (queued -> sending, with a lease) in its own transaction,
so two workers handed the same ids can never both send one. A background thread
renews the lease while the batch is sent; a worker that dies stops renewing, and
the sweeper hands its rows to another one within about a minute. Each outcome is
committed as soon as the server answers, which keeps the window in which a crash
could repeat a message to the instant between the server's 250 and our commit;
while the database cannot take an outcome, sending stops until it can.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.orm import Session, selectinload

from newsletter import tokens
from newsletter.config import Settings, get_settings
from newsletter.db import database_unavailable, get_sessionmaker, session_scope, utcnow
from newsletter.errors import InvalidInput
from newsletter.mail import OutgoingMessage, Unsendable, build_message
from newsletter.models import Delivery, DeliveryStatus, Digest
from newsletter.personalize import fill
from newsletter.planning import describe, sending_lease
from newsletter.text import one_line
from newsletter.transport import (
    ConnectionLost,
    OutcomeUnknown,
    PermanentFailure,
    SmtpConfig,
    SmtpTransport,
    TemporaryFailure,
)
from subscribers.models import Subscriber, SubscriberStatus, SuppressionReason
from subscribers.services import cadence_label
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
    def send(self, message: OutgoingMessage) -> None: ...
    @property
    def connected(self) -> bool: ...


TransportFactory = Callable[[], Transport]


def smtp_transport_factory(settings: Settings | None = None) -> TransportFactory:
    settings = settings or get_settings()
    if not settings.smtp_url:
        raise InvalidInput("NEWSLETTER_SMTP_URL is not set: no way to send mail")
    config = dataclasses.replace(
        SmtpConfig.from_url(settings.smtp_url), data_timeout=settings.smtp_data_timeout
    )
    return lambda: SmtpTransport(config)


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


def tag_list(names: Sequence[str], most: int = 3) -> str:
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])} and {len(names) - most} more"


def personal_values(subscriber: Subscriber, settings: Settings) -> dict[str, str]:
    """The per-reader text a shared digest is filled with."""
    names = [t.name for t in subscriber.tags]
    schedule = cadence_label(subscriber.cadence)
    if subscriber.cadence.value != "immediate":
        schedule += f" at {subscriber.send_hour:02d}:00 {subscriber.timezone}"
    return {
        "GREETING": f"Hi {subscriber.name}," if subscriber.name else "Hello,",
        "TAGS": tag_list(names),
        "REASON": (
            f"You get this email because {subscriber.email} subscribed to {settings.site_name} "
            f"for posts tagged {', '.join(names)}, {schedule}."
        ),
        "PREFERENCES_URL": tokens.link("preferences", subscriber.uid),
        "UNSUBSCRIBE_URL": tokens.link("unsubscribe", subscriber.uid),
    }


def digest_headers(unsubscribe: str, settings: Settings) -> dict[str, str]:
    """The list headers every copy of a digest carries (a test copy too)."""
    domain = settings.from_.rpartition("@")[2] or "localhost"
    return {
        "List-Unsubscribe": f"<{unsubscribe}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "List-Id": f"{one_line(settings.site_name)} <digest.{domain}>",
        "Precedence": "bulk",
        "Auto-Submitted": "auto-generated",
    }


def message_for(
    delivery: Delivery,
    digest: Digest,
    subscriber: Subscriber,
    settings: Settings,
    values: dict[str, str] | None = None,
) -> OutgoingMessage:
    """A reader's copy: substitution into the shared rendering, never a new rendering.

    `values` replaces the reader's personal values (a preview's sample links)."""
    values = values or personal_values(subscriber, settings)
    return build_message(
        from_name=settings.from_name,
        from_address=settings.from_,
        to_name=subscriber.name,
        to_address=subscriber.email,
        subject=one_line(fill(digest.subject, values, escape=False), 300),
        text=fill(digest.text, values, escape=False),
        html=fill(digest.html, values, escape=True),
        message_id=delivery.message_id,
        headers=digest_headers(values["UNSUBSCRIBE_URL"], settings),
    )


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
    claimable = or_(
        and_(
            Delivery.status == DeliveryStatus.QUEUED,
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
        ),
        and_(
            Delivery.status == DeliveryStatus.SENDING,
            Delivery.claimed_at <= now - sending_lease(),
        ),
    )
    result = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(delivery_ids), claimable)
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
                        Delivery.id.in_(ids),
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


def _sent(delivery: Delivery, report: SendReport, note: str | None = None) -> Outcome:
    report.sent += 1
    values = {
        "status": DeliveryStatus.SENT,
        "sent_at": utcnow(),
        "attempts": delivery.attempts + 1,
        "last_error": note,
        "next_attempt_at": None,
    }
    return Outcome(delivery.id, values)


def _failed(delivery: Delivery, error: str, report: SendReport) -> Outcome:
    report.failed += 1
    values = {
        "status": DeliveryStatus.FAILED,
        "attempts": delivery.attempts + 1,
        "last_error": error[:2000],
        "next_attempt_at": None,
    }
    return Outcome(delivery.id, values)


def _deferred(
    delivery: Delivery, error: str, now: dt.datetime, settings: Settings, report: SendReport
) -> Outcome:
    """Tried and refused for now (4xx, 421, a dropped connection): one attempt charged."""
    attempts = delivery.attempts + 1
    if attempts >= settings.max_send_attempts:
        return _failed(delivery, f"gave up after {attempts} attempts: {error}", report)
    return _queued(delivery, error, attempts, now, report)


def _postponed(delivery: Delivery, error: str, now: dt.datetime, report: SendReport) -> Outcome:
    """Never tried (no connection to be had): back in the queue, no attempt charged."""
    return _queued(delivery, error, delivery.attempts, now, report)


def _queued(
    delivery: Delivery, error: str, attempts: int, now: dt.datetime, report: SendReport
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
    delivery: Delivery, error: str, now: dt.datetime, settings: Settings, report: SendReport
) -> Outcome:
    """The message went out and its reply never came: decided by NEWSLETTER_UNKNOWN_OUTCOME."""
    report.unknown += 1
    log.warning("delivery #%d: %s (policy %s)", delivery.id, error, settings.unknown_outcome)
    if settings.unknown_outcome == "retry":
        return _deferred(delivery, f"outcome unknown: {error}", now, settings, report)
    return _sent(delivery, report, f"outcome unknown: {error}; assumed delivered")


class _Relay:
    """The batch's SMTP connection: opened when needed, dropped after a 421 or a lost
    connection and reopened after a pause, at most `smtp_max_reconnects` times in a
    row without the server answering a message."""

    def __init__(self, factory: TransportFactory, settings: Settings) -> None:
        self._factory = factory
        self._pause = settings.smtp_reconnect_pause
        self._budget = settings.smtp_max_reconnects
        self._transport: Transport | None = None
        self._strikes = 0

    def get(self) -> Transport:
        """The open connection; raises ConnectionLost when there is none to be had."""
        if self._transport is not None and not self._transport.connected:
            # Closed after the server's last answer (a failed reset): never charged
            # to the next message, which has not been tried.
            self.lost()
        if self._transport is None:
            if self._strikes > self._budget:
                raise ConnectionLost(f"{self._strikes} connections lost in a row")
            if self._strikes:
                time.sleep(self._pause)
            transport = self._factory()
            transport.__enter__()
            self._transport = transport
        return self._transport

    def answered(self) -> None:
        self._strikes = 0

    def lost(self) -> None:
        self.drop()
        self._strikes += 1

    def drop(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            try:
                transport.__exit__(None, None, None)
            except Exception as exc:
                log.debug("closing an SMTP connection: %s", describe(exc))


def _skip_reason(subscriber: Subscriber | None) -> str | None:
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
        claimed = claim(session, delivery_ids, now, stamp)
        report.skipped["not_claimable"] += len(set(delivery_ids)) - len(claimed)
        if not claimed:
            return report
        with LeaseKeeper(claimed, stamp, sending_lease()) as keeper:
            sendable = _load_sendable(session, claimed, report)
            for delivery_id in set(claimed) - {d.id for d in sendable}:
                keeper.release(delivery_id)
            if on_progress and len(sendable) < len(claimed):
                on_progress(len(claimed) - len(sendable))
            if sendable:
                _send_all(sendable, settings, now, report, factory, keeper, on_progress)
    finally:
        session.close()
    return report


def _load_sendable(session: Session, claimed: list[int], report: SendReport) -> list[Delivery]:
    """The claimed rows with their readers and digests; inactive or suppressed readers
    are marked skipped (committed) and left out."""
    deliveries = list(
        session.scalars(
            select(Delivery)
            .where(Delivery.id.in_(claimed))
            .options(
                selectinload(Delivery.subscriber).selectinload(Subscriber.tags),
                selectinload(Delivery.digest),
            )
            .order_by(Delivery.id)
        )
    )
    blocked = suppressed_among(session, [d.subscriber.email for d in deliveries if d.subscriber])
    sendable: list[Delivery] = []
    for delivery in deliveries:
        reason = _skip_reason(delivery.subscriber)
        if reason is None and delivery.subscriber and delivery.subscriber.email in blocked:
            reason = "suppressed"
        if reason:
            delivery.status = DeliveryStatus.SKIPPED
            delivery.skip_reason = reason
            report.skipped[reason] += 1
        else:
            sendable.append(delivery)
    session.commit()
    return sendable


def _send_all(
    sendable: list[Delivery],
    settings: Settings,
    now: dt.datetime,
    report: SendReport,
    factory: TransportFactory,
    keeper: LeaseKeeper,
    on_progress: Callable[[int], None] | None,
) -> None:
    relay = _Relay(factory, settings)
    writer = get_sessionmaker()()
    try:
        for index, delivery in enumerate(sendable):
            if keeper.taken_over(delivery.id):
                report.skipped["taken_over"] += 1
                continue
            try:
                transport = relay.get()
            except ConnectionLost as exc:
                # The server cannot be reached: the rest was never tried and is not
                # charged an attempt; it waits for the task's retry or the sweeper.
                rest = [d for d in sendable[index:] if not keeper.taken_over(d.id)]
                log.warning("SMTP unavailable with %d messages left: %s", len(rest), exc)
                _record(writer, [_postponed(d, f"connection: {exc}", now, report) for d in rest])
                for d in rest:
                    keeper.release(d.id)
                if on_progress:
                    on_progress(len(rest))
                return
            outcome = _attempt(transport, relay, delivery, settings, now, report)
            _record(writer, [outcome])
            keeper.release(delivery.id)
            if on_progress:
                on_progress(1)
    finally:
        relay.drop()
        writer.close()


def _attempt(
    transport: Transport,
    relay: _Relay,
    delivery: Delivery,
    settings: Settings,
    now: dt.datetime,
    report: SendReport,
) -> Outcome:
    """Build and send one reader's copy; whatever goes wrong is that reader's outcome alone."""
    reader = delivery.subscriber
    if reader is None:  # deleted after it was loaded: nobody to send to
        return _failed(delivery, "the reader was deleted", report)
    try:
        message = message_for(delivery, delivery.digest, reader, settings)
    except Exception as exc:
        log.warning("delivery #%d cannot be built: %s", delivery.id, describe(exc))
        return _failed(delivery, f"cannot build the message: {describe(exc)}", report)
    try:
        transport.send(message)
    except PermanentFailure as exc:
        # A 5xx for this address: never mail it again until an admin says so.
        relay.answered()
        outcome = _failed(delivery, str(exc), report)
        outcome.suppress = (reader.email, str(exc))
        return outcome
    except TemporaryFailure as exc:
        relay.answered()
        return _deferred(delivery, str(exc), now, settings, report)
    except Unsendable as exc:
        return _failed(delivery, str(exc), report)
    except ConnectionLost as exc:
        relay.lost()
        return _deferred(delivery, f"connection: {exc}", now, settings, report)
    except OutcomeUnknown as exc:
        relay.lost()
        return _unknown(delivery, str(exc), now, settings, report)
    except Exception as exc:
        # Whatever it was, the SMTP session is in an unknown state: a fresh one for
        # the next reader.
        log.warning("delivery #%d could not be sent: %s", delivery.id, describe(exc))
        relay.drop()
        return _failed(delivery, f"cannot send: {describe(exc)}", report)
    relay.answered()
    return _sent(delivery, report)


# While the database is unreachable, the outcome write is retried after these pauses
# (seconds; the last repeats) until NEWSLETTER_DB_OUTAGE_WAIT has passed.
_DB_RETRY_PAUSES = (0.5, 1.0, 2.0, 4.0, 5.0)


def _record(writer: Session, outcomes: list[Outcome]) -> None:
    """Commit these outcomes. While the database is unreachable nothing more is sent:
    the outcomes stay in memory and the write is retried until it lands, so a message
    that went out is never left for the sweeper to send again."""
    deadline = time.monotonic() + get_settings().db_outage_wait
    for attempt in itertools.count():
        try:
            _write_outcomes(writer, outcomes)
            return
        except Exception as exc:
            _rollback(writer)
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


def _write_outcomes(writer: Session, outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        values = dict(outcome.values)
        if "last_error" in values:
            # A reader deleted while their copy was in flight: the outcome counts, but
            # the SMTP reply (which may quote their address) is not kept.
            values["last_error"] = case(
                (Delivery.subscriber_id.is_(None), None), else_=values["last_error"]
            )
        writer.execute(
            update(Delivery)
            .where(Delivery.id == outcome.delivery_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if outcome.suppress is not None:
            address, reply = outcome.suppress
            suppress(writer, address, SuppressionReason.HARD_BOUNCE, reply, actor="smtp reply")
    writer.commit()


def _rollback(session: Session) -> None:
    try:
        session.rollback()
    except Exception as exc:
        log.debug("rollback after a failed write: %s", describe(exc))
