"""Self-service: sign-up with double opt-in, confirmation, preference changes.

A sign-up never reveals whether an address is known and never lets a stranger
change anything: the preferences asked for travel inside the signed confirmation
link, and only the owner of the mailbox can click it. Nothing a stranger types
reaches the mailbox either: a name is asked for on the confirmation page, by the
owner, not on the sign-up form.

A sign-up is answered in two steps so its response time says nothing about the
address: `admit_signup` (validation and rate limits, the same work for every
address) before the response, `answer_signup` (which mail, if any) after it.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from newsletter import tokens
from newsletter.config import get_settings
from newsletter.db import utcnow
from newsletter.delivery.ledger import drop_guards
from newsletter.errors import InvalidInput
from newsletter.models import Cadence, DeliveryPost, Tag
from newsletter.text import one_line
from subscribers import suppression
from subscribers.cadence import next_slot, parse_cadence, parse_hour, parse_timezone, parse_weekday
from subscribers.models import SignupAttempt, Subscriber, SubscriberStatus, SuppressionReason
from subscribers.services import (
    FieldErrors,
    normalize_email,
    refuse_lookalike_domain,
    set_tags,
)


class RateLimited(Exception):
    """Too many sign-ups from one client: answered with 429."""


class Outcome(enum.StrEnum):
    CONFIRM = "confirm"  # send a confirmation link carrying the preferences
    ALREADY = "already"  # tell the owner they are subscribed, with their preferences link
    NOTHING = "nothing"  # suppressed or rate-limited address: same page, no mail


@dataclass
class Preferences:
    """What a reader asks for, validated; the same shape for sign-up and preferences."""

    tags: list[Tag]
    cadence: Cadence
    timezone: str
    send_hour: int
    send_weekday: int
    name: str = ""

    def choices(self) -> dict[str, Any]:
        """What a sign-up asked for, as picked from the form's lists: never typed text."""
        return {
            "t": [t.slug for t in self.tags],
            "c": self.cadence.value,
            "z": self.timezone,
            "h": self.send_hour,
            "w": self.send_weekday,
        }

    def token_payload(self, uid: str) -> dict[str, Any]:
        """What a confirmation link carries: the subscriber key and the choices."""
        return {"u": uid, **self.choices()}


@dataclass
class SignupResult:
    outcome: Outcome
    subscriber_id: int | None = None
    # The confirmation link's payload: `newsletter.transactional` signs it when mailing.
    preferences: dict[str, Any] = field(default_factory=dict)


def parse_preferences(
    session: Session,
    tag_slugs: list[str],
    cadence: str,
    timezone: str,
    send_hour: str | int | None,
    send_weekday: str | int | None,
    name: str = "",
) -> Preferences:
    """Validate a form's choices; tags must be existing ones, picked from the list."""
    settings = get_settings()
    return Preferences(
        tags=_chosen_tags(session, tag_slugs),
        cadence=parse_cadence(cadence),
        timezone=parse_timezone(timezone or "UTC"),
        send_hour=parse_hour(settings.default_send_hour if send_hour in (None, "") else send_hour),
        send_weekday=parse_weekday(
            settings.default_send_weekday if send_weekday in (None, "") else send_weekday
        ),
        name=one_line(name, 200),
    )


def _chosen_tags(session: Session, tag_slugs: list[str]) -> list[Tag]:
    # Slugs come from the form as typed: nothing XML forbids (PostgreSQL refuses NUL
    # in a query parameter), and a slug is one short line.
    slugs = sorted({one_line(s, 200) for s in tag_slugs} - {""})
    if not slugs:
        raise InvalidInput("choose at least one tag to follow")
    tags = list(session.scalars(select(Tag).where(Tag.slug.in_(slugs)).order_by(Tag.slug)))
    if len(tags) != len(slugs):
        raise InvalidInput("one of the chosen tags does not exist")
    return tags


# What a reader reads next to a field the form got wrong: plain words, and what to do.
FIELD_MESSAGES = {
    "email_missing": "Enter your email address, like name@example.com.",
    "email": "That doesn't look like an email address. Check it for typos, like name@example.com.",
    "tags": "Pick at least one tag to follow.",
    "tags_gone": "One of the tags you picked no longer exists. Pick again from the list.",
    "cadence": "Choose how often you want to hear from us.",
    "timezone": "That time zone isn't one we know, pick one from the list.",
    "send_hour": "Pick a time from the list.",
    "send_weekday": "Pick a day from the list.",
}


def check_address(email: str) -> str:
    """The normalised address, or InvalidInput worded for a reader (look-alike
    domains keep their own message: it says which letters to check)."""
    if not email.strip():
        raise InvalidInput(FIELD_MESSAGES["email_missing"])
    try:
        address = normalize_email(email)
    except InvalidInput:
        raise InvalidInput(FIELD_MESSAGES["email"]) from None
    try:
        refuse_lookalike_domain(address)
    except InvalidInput as exc:
        text = str(exc)
        raise InvalidInput(text[:1].upper() + text[1:] + ".") from None
    return address


def check_preferences(
    session: Session,
    tag_slugs: list[str],
    cadence: str,
    timezone: str,
    send_hour: str | None,
    send_weekday: str | None,
    name: str = "",
) -> Preferences:
    """`parse_preferences` for a form: every problem at once, by field, in plain words
    (FieldErrors), so the page can show each next to its field."""
    errors: dict[str, str] = {}
    try:
        _chosen_tags(session, tag_slugs)
    except InvalidInput:
        has_any = any(one_line(s, 200) for s in tag_slugs)
        errors["tags"] = FIELD_MESSAGES["tags_gone" if has_any else "tags"]
    checks: list[tuple[str, Callable[[], object]]] = [
        ("cadence", lambda: parse_cadence(cadence)),
        ("timezone", lambda: parse_timezone(timezone or "UTC")),
        ("send_hour", lambda: send_hour in (None, "") or parse_hour(send_hour or "")),
        ("send_weekday", lambda: send_weekday in (None, "") or parse_weekday(send_weekday or "")),
    ]
    for field_name, check in checks:
        try:
            check()
        except InvalidInput:
            errors[field_name] = FIELD_MESSAGES[field_name]
    if errors:
        raise FieldErrors(errors)
    return parse_preferences(session, tag_slugs, cadence, timezone, send_hour, send_weekday, name)


def _check_rate(session: Session, ip: str, email: str, now: dt.datetime) -> bool:
    """Record the attempt; raise for a flooding client, False for a flooded address."""
    settings = get_settings()
    hour_ago = now - dt.timedelta(hours=1)
    session.execute(
        delete(SignupAttempt).where(SignupAttempt.created_at < now - dt.timedelta(days=1))
    )
    by_ip = session.scalar(
        select(func.count()).where(SignupAttempt.ip == ip, SignupAttempt.created_at >= hour_ago)
    )
    if (by_ip or 0) >= settings.signup_per_ip_per_hour:
        raise RateLimited("too many sign-ups from this network; try again in an hour")
    by_email = session.scalar(
        select(func.count()).where(
            SignupAttempt.email == email, SignupAttempt.created_at >= hour_ago
        )
    )
    session.add(SignupAttempt(ip=ip, email=email, created_at=now))
    return (by_email or 0) < settings.signup_per_email_per_hour


def admit_signup(
    session: Session, email: str, ip: str, now: dt.datetime | None = None
) -> tuple[str, bool]:
    """Validate the address and record the attempt, before the response.

    Returns the normalised address and whether it may get a mail now (False once the
    address was flooded). The work is the same whatever the address's state; raises
    InvalidInput for a bad or look-alike address, RateLimited for a flooding client.
    """
    now = now or utcnow()
    address = normalize_email(email)
    refuse_lookalike_domain(address)
    return address, _check_rate(session, ip, address, now)


def answer_signup(
    session: Session,
    address: str,
    choices: dict[str, Any],
    allowed: bool = True,
    now: dt.datetime | None = None,
) -> SignupResult:
    """Decide which mail (if any) answers a sign-up; runs after the response.

    A new address gets a pending row that holds no name and the choices as they
    were asked for; a known row is never changed here: the choices asked for take
    effect only when the link is clicked.
    """
    now = now or utcnow()
    if not allowed:
        return SignupResult(Outcome.NOTHING)
    blocked = suppression.find(session, address)
    if blocked is not None and blocked.reason in suppression.BLOCKS_ALL:
        return SignupResult(Outcome.NOTHING)
    prefs = parse_preferences(
        session, list(choices.get("t", [])), choices.get("c", "weekly"),
        choices.get("z", "UTC"), choices.get("h"), choices.get("w"),
    )  # fmt: skip
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == address))
    if subscriber is None:
        subscriber = Subscriber(
            email=address,
            name="",
            status=SubscriberStatus.PENDING,
            cadence=prefs.cadence,
            timezone=prefs.timezone,
            send_hour=prefs.send_hour,
            send_weekday=prefs.send_weekday,
            subscribed_at=now,
            created_at=now,
        )
        session.add(subscriber)
        session.flush()
        set_tags(session, subscriber, prefs.tags, now)
    elif subscriber.status in (SubscriberStatus.ACTIVE, SubscriberStatus.PAUSED):
        return SignupResult(Outcome.ALREADY, subscriber.id)
    return SignupResult(Outcome.CONFIRM, subscriber.id, prefs.token_payload(subscriber.uid))


def read_confirmation(token: str) -> dict[str, Any]:
    max_age = get_settings().pending_ttl_hours * 3600
    return tokens.read_data("confirm", token, max_age=max_age)


def check_confirmation(session: Session, token: str) -> tuple[Subscriber, dict[str, Any]]:
    """The subscriber and the choices of a confirmation link that may still be used.

    Refused: an expired or forged link, an address an admin, a bounce or a complaint
    blocked, and a link issued before the reader's last unsubscribe (signing up
    again sends a new one).
    """
    data = read_confirmation(token)
    subscriber = session.scalar(select(Subscriber).where(Subscriber.uid == data["u"]))
    if subscriber is None:
        raise InvalidInput("this link has expired")
    blocked = suppression.find(session, subscriber.email)
    if blocked is not None and blocked.reason in suppression.BLOCKS_ALL:
        raise InvalidInput("this address cannot be subscribed; contact the publisher")
    if _issued_before_unsubscribe(subscriber, token):
        raise InvalidInput(
            "this link was sent before you unsubscribed, so it no longer subscribes you; "
            "sign up again to get a new one"
        )
    return subscriber, data


def _issued_before_unsubscribe(subscriber: Subscriber, token: str) -> bool:
    """Whether the link predates the unsubscribe; token times are whole seconds, so a
    link issued within the second of the unsubscribe counts as after it."""
    if subscriber.unsubscribed_at is None:
        return False
    issued = tokens.signed_at("confirm", token)
    return issued < subscriber.unsubscribed_at.replace(microsecond=0)


def confirm(
    session: Session, token: str, name: str = "", now: dt.datetime | None = None
) -> tuple[Subscriber, bool]:
    """Activate the subscription with the choices in the link and the name the owner
    typed on the confirmation page (blank clears any name the row had).

    Returns the subscriber and whether this click changed anything (a second click
    on the same link is harmless and sends no second welcome).
    """
    now = now or utcnow()
    subscriber, data = check_confirmation(session, token)
    recent = now - dt.timedelta(hours=get_settings().pending_ttl_hours)
    if (
        subscriber.status is SubscriberStatus.ACTIVE
        and subscriber.confirmed_at is not None
        and subscriber.confirmed_at >= recent
    ):
        return subscriber, False
    prefs = parse_preferences(
        session, list(data.get("t", [])), data.get("c", "weekly"), data.get("z", "UTC"),
        data.get("h"), data.get("w"),
    )  # fmt: skip
    blocked = suppression.find(session, subscriber.email)
    if blocked is not None and blocked.reason is SuppressionReason.UNSUBSCRIBED:
        # The owner proved the address is theirs and asked again: lift their own block.
        suppression.lift(session, subscriber.email, by="the subscriber, by confirming")
    if subscriber.status is not SubscriberStatus.ACTIVE:
        # Eligibility starts now: no backlog of what arrived while pending or away.
        subscriber.subscribed_at = now
    apply_preferences(session, subscriber, prefs, now)
    subscriber.name = one_line(name, 200)
    subscriber.status = SubscriberStatus.ACTIVE
    subscriber.confirmed_at = now
    subscriber.unsubscribed_at = None
    session.flush()
    return subscriber, True


def apply_preferences(
    session: Session, subscriber: Subscriber, prefs: Preferences, now: dt.datetime
) -> None:
    if prefs.name:
        subscriber.name = prefs.name
    subscriber.cadence = prefs.cadence
    subscriber.timezone = prefs.timezone
    subscriber.send_hour = prefs.send_hour
    subscriber.send_weekday = prefs.send_weekday
    subscriber.next_digest_at = next_slot(
        prefs.cadence, prefs.timezone, prefs.send_hour, prefs.send_weekday, now
    )
    set_tags(session, subscriber, prefs.tags, now)
    session.flush()


def set_paused(session: Session, subscriber: Subscriber, paused: bool, now: dt.datetime) -> None:
    """Pause keeps the subscription but sends nothing; resuming does not send the backlog."""
    if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
        raise InvalidInput("this address is unsubscribed; sign up again to get digests")
    if paused:
        subscriber.status = SubscriberStatus.PAUSED
    elif subscriber.status is SubscriberStatus.PAUSED:
        subscriber.status = SubscriberStatus.ACTIVE
        subscriber.subscribed_at = now
        subscriber.next_digest_at = next_slot(
            subscriber.cadence, subscriber.timezone, subscriber.send_hour,
            subscriber.send_weekday, now,
        )  # fmt: skip
    session.flush()


def expire_pending(session: Session, now: dt.datetime | None = None) -> int:
    """Forget sign-ups nobody confirmed in time."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(hours=get_settings().pending_ttl_hours)
    expired = (Subscriber.status == SubscriberStatus.PENDING, Subscriber.created_at < cutoff)
    drop_guards(
        session, readers=DeliveryPost.subscriber_id.in_(select(Subscriber.id).where(*expired))
    )
    result = session.execute(delete(Subscriber).where(*expired))
    return int(getattr(result, "rowcount", 0) or 0)
