"""Sending a batch of deliveries over one SMTP connection, recording every outcome.

A batch is first claimed (queued -> sending, with a lease) in its own transaction,
so two workers handed the same ids can never both send one. Each outcome is
committed as soon as the server answers, which keeps the window in which a crash
could repeat a message to the instant between the server's 250 and our commit.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, selectinload

from newsletter import tokens
from newsletter.config import Settings, get_settings
from newsletter.db import get_sessionmaker, utcnow
from newsletter.errors import InvalidInput
from newsletter.mail import HeaderInjection, OutgoingMessage, build_message
from newsletter.models import Delivery, DeliveryStatus, Digest
from newsletter.personalize import fill
from newsletter.planning import SENDING_LEASE
from newsletter.text import one_line
from newsletter.transport import (
    ConnectionLost,
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


TransportFactory = Callable[[], Transport]


def smtp_transport_factory(settings: Settings | None = None) -> TransportFactory:
    settings = settings or get_settings()
    if not settings.smtp_url:
        raise InvalidInput("NEWSLETTER_SMTP_URL is not set: no way to send mail")
    config = SmtpConfig.from_url(settings.smtp_url)
    return lambda: SmtpTransport(config)


@dataclass
class SendReport:
    sent: int = 0
    failed: int = 0
    deferred: list[int] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    retry_in: int = 0

    def merge(self, other: SendReport) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.deferred.extend(other.deferred)
        self.skipped.update(other.skipped)
        self.retry_in = max(self.retry_in, other.retry_in)


def backoff(attempts: int) -> dt.timedelta:
    """1, 2, 4 ... minutes, capped at six hours."""
    return dt.timedelta(minutes=min(2 ** max(attempts - 1, 0), 360))


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


def message_for(
    delivery: Delivery, digest: Digest, subscriber: Subscriber, settings: Settings
) -> OutgoingMessage:
    """A reader's copy: substitution into the shared rendering, never a new rendering."""
    values = personal_values(subscriber, settings)
    unsubscribe = values["UNSUBSCRIBE_URL"]
    domain = settings.from_.rpartition("@")[2] or "localhost"
    return build_message(
        from_name=settings.from_name,
        from_address=settings.from_,
        to_name=subscriber.name,
        to_address=subscriber.email,
        subject=one_line(fill(digest.subject, values, escape=False), 300),
        text=fill(digest.text, values, escape=False),
        html=fill(digest.html, values, escape=True),
        message_id=delivery.message_id,
        headers={
            "List-Unsubscribe": f"<{unsubscribe}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "List-Id": f"{one_line(settings.site_name)} <digest.{domain}>",
            "Precedence": "bulk",
            "Auto-Submitted": "auto-generated",
        },
    )


def claim(session: Session, delivery_ids: Sequence[int], now: dt.datetime) -> list[int]:
    """Take the sendable deliveries among these ids; the rest are someone else's or done."""
    claimable = or_(
        and_(
            Delivery.status == DeliveryStatus.QUEUED,
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
        ),
        and_(Delivery.status == DeliveryStatus.SENDING, Delivery.claimed_at <= now - SENDING_LEASE),
    )
    result = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(delivery_ids), claimable)
        .values(status=DeliveryStatus.SENDING, claimed_at=now, updated_at=now)
        .returning(Delivery.id)
    )
    claimed = sorted(result.scalars())
    session.commit()
    return claimed


def _skip_reason(subscriber: Subscriber) -> str | None:
    if subscriber.status is SubscriberStatus.ACTIVE:
        return None
    return f"subscriber_{subscriber.status.value}"


def send_batch(
    delivery_ids: Sequence[int],
    now: dt.datetime | None = None,
    transport_factory: TransportFactory | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SendReport:
    """Send what can be sent of these deliveries; returns ids to retry in `deferred`."""
    now = now or utcnow()
    settings = get_settings()
    report = SendReport()
    session = get_sessionmaker()()
    try:
        claimed = claim(session, delivery_ids, now)
        report.skipped["not_claimable"] += len(set(delivery_ids)) - len(claimed)
        if not claimed:
            return report
        deliveries = list(
            session.scalars(
                select(Delivery)
                .where(Delivery.id.in_(claimed))
                .options(selectinload(Delivery.subscriber).selectinload(Subscriber.tags))
                .order_by(Delivery.id)
            )
        )
        digests = {
            d.id: d
            for d in session.scalars(
                select(Digest).where(Digest.id.in_({d.digest_id for d in deliveries}))
            )
        }
        blocked = suppressed_among(session, [d.subscriber.email for d in deliveries])
        sendable: list[Delivery] = []
        for delivery in deliveries:
            reason = _skip_reason(delivery.subscriber)
            if reason is None and delivery.subscriber.email in blocked:
                reason = "suppressed"
            if reason:
                delivery.status = DeliveryStatus.SKIPPED
                delivery.skip_reason = reason
                report.skipped[reason] += 1
            else:
                sendable.append(delivery)
        session.commit()
        if on_progress and len(sendable) < len(deliveries):
            on_progress(len(deliveries) - len(sendable))
        if sendable:
            _send_all(
                session, sendable, digests, settings, now, report, transport_factory, on_progress
            )
    finally:
        session.close()
    return report


def _send_all(
    session: Session,
    sendable: list[Delivery],
    digests: dict[int, Digest],
    settings: Settings,
    now: dt.datetime,
    report: SendReport,
    transport_factory: TransportFactory | None,
    on_progress: Callable[[int], None] | None,
) -> None:
    factory = transport_factory or smtp_transport_factory(settings)
    remaining = list(sendable)
    try:
        with factory() as transport:
            while remaining:
                delivery = remaining[0]
                try:
                    message = message_for(
                        delivery, digests[delivery.digest_id], delivery.subscriber, settings
                    )
                    transport.send(message)
                except PermanentFailure as exc:
                    # A 5xx for this address: never mail it again until an admin says so.
                    _fail(delivery, str(exc))
                    suppress(
                        session, delivery.subscriber.email, SuppressionReason.HARD_BOUNCE, str(exc)
                    )
                    report.failed += 1
                except HeaderInjection as exc:
                    _fail(delivery, str(exc))
                    report.failed += 1
                except TemporaryFailure as exc:
                    _defer(delivery, str(exc), now, settings, report)
                else:
                    delivery.status = DeliveryStatus.SENT
                    delivery.sent_at = utcnow()
                    delivery.attempts += 1
                    delivery.last_error = None
                    report.sent += 1
                session.commit()
                remaining.pop(0)
                if on_progress:
                    on_progress(1)
    except ConnectionLost as exc:
        # This message and the rest of the batch wait for the retry.
        log.warning("SMTP connection lost with %d messages left: %s", len(remaining), exc)
        for delivery in remaining:
            _defer(delivery, f"connection: {exc}", now, settings, report)
        session.commit()


def _fail(delivery: Delivery, error: str) -> None:
    delivery.status = DeliveryStatus.FAILED
    delivery.attempts += 1
    delivery.last_error = error[:2000]
    delivery.next_attempt_at = None


def _defer(
    delivery: Delivery, error: str, now: dt.datetime, settings: Settings, report: SendReport
) -> None:
    delivery.attempts += 1
    if delivery.attempts >= settings.max_send_attempts:
        _fail(delivery, f"gave up after {delivery.attempts} attempts: {error}")
        report.failed += 1
        return
    wait = backoff(delivery.attempts)
    delivery.status = DeliveryStatus.QUEUED
    delivery.last_error = error[:2000]
    delivery.next_attempt_at = now + wait
    report.deferred.append(delivery.id)
    report.retry_in = max(report.retry_in, int(wait.total_seconds()))
