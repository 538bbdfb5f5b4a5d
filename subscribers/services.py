"""Adding, listing and removing subscribers; every write validates first and writes whole."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from confusable_homoglyphs.categories import (  # type: ignore[import-untyped]
    unique_aliases as script_aliases,
)
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.config import get_settings
from newsletter.db import utcnow
from newsletter.delivery.ledger import drop_guards
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import Cadence, Delivery, DeliveryPost, DeliveryStatus, Digest, Tag
from newsletter.tags import existing_tags, parse_tag_names
from newsletter.text import has_line_break, one_line
from subscribers import suppression
from subscribers.cadence import (
    next_slot,
    parse_cadence,
    parse_hour,
    parse_timezone,
    parse_weekday,
)
from subscribers.models import (
    SignupAttempt,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionEvent,
    SuppressionReason,
    new_uid,
    subscriber_tags,
)
from subscribers.search import parse_status


def normalize_email(raw: str) -> str:
    """The one stored form of an address, so one person is one row however it was typed.

    - Unicode NFKC first: full-width and other compatibility forms fold (a
      full-width `test@example.org` is `test@example.org`); the result is NFC.
    - Lower case throughout: providers treat the local part case-insensitively in
      practice, and two rows for Ana@x and ana@x would mail one person twice.
    - The domain is stored as its Unicode U-label (`bücher.de`), whether it came as
      Unicode or as a punycode A-label (`xn--bcher-kva.de`): the two are one reader.
      U-labels because that is what people type, read and search for in lists and
      exports, because a non-ASCII local part makes the column Unicode anyway, and
      because the look-alike check reads scripts, which an A-label hides. The A-label
      is derived where it is needed: on the wire.
    """
    if has_line_break(raw):
        raise InvalidInput("invalid email address: it contains a line break")
    candidate = raw.strip()
    if _is_plain_address(candidate):
        return candidate.lower()
    if len(candidate) > _MAX_INPUT_CHARS:
        raise InvalidInput(
            f"invalid email address {_shown(candidate)}: it is longer than any address can be"
        )
    folded = unicodedata.normalize("NFKC", candidate)
    if _is_plain_address(folded):
        return folded.lower()
    try:
        result = validate_email(folded, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput(f"invalid email address {_shown(candidate)}: {exc}") from None
    # email_validator gives the domain as a U-label and the local part in NFC;
    # lower-casing can decompose (İ -> i + U+0307), so compose again.
    return unicodedata.normalize("NFC", result.normalized.lower())


# Fast path for the common case (a CSV of 100,000 rows spends most of its time in
# email_validator otherwise): plain ASCII dot-atom addresses under a public-looking
# domain. It accepts a strict subset of what email_validator accepts, and answers
# what email_validator would; anything else, internationalised addresses and
# punycode labels (stored decoded) included, goes through email_validator.
_PLAIN_ADDRESS = re.compile(
    r"(?=[^@]{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?=.{4,253}$)(?!(?:[^.]*\.)*[Xx][Nn]--)"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,63})"
)
_SPECIAL_USE_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})
# Far longer than any address (254 octets on the wire); refused before the costly steps.
_MAX_INPUT_CHARS = 1000


def _is_plain_address(value: str) -> bool:
    match = _PLAIN_ADDRESS.fullmatch(value)
    return match is not None and match.group(1).lower() not in _SPECIAL_USE_TLDS


def _shown(value: str) -> str:
    """An address as an error message quotes it: on one line and cut short."""
    return repr(one_line(value, 80))


# Scripts that may share one domain label: UTS #39's "highly restrictive" level.
# Common (digits, hyphen) and Inherited (combining marks) go with any script.
_NEUTRAL_SCRIPTS = frozenset({"COMMON", "INHERITED"})
_ALLOWED_SCRIPT_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)


def refuse_lookalike_domain(address: str) -> None:
    """InvalidInput if a label of the (normalised) address's domain mixes scripts.

    `example.org` spelt with a Cyrillic letter a reads as `example.org`: a classic
    way to disguise an address. Each label must be of one script (or one of the mixes
    Japanese, Chinese and Korean names need), so `пример.рф` and `bücher.de` pass.
    """
    domain = address.rpartition("@")[2]
    if domain.isascii():
        return
    for label in domain.split("."):
        scripts = set(script_aliases(label)) - _NEUTRAL_SCRIPTS
        if len(scripts) > 1 and not any(scripts <= mix for mix in _ALLOWED_SCRIPT_MIXES):
            names = " and ".join(sorted(s.replace("_", " ").title() for s in scripts))
            raise InvalidInput(
                f"the domain of {_shown(address)} mixes {names} letters in {label!r}, "
                "as look-alike addresses do; check how it is spelt"
            )


@dataclass
class SubscriberInput:
    email: str
    tags: str | Sequence[str]
    cadence: str = "immediate"
    name: str = ""
    timezone: str = "UTC"
    send_hour: int | str | None = None
    send_weekday: int | str | None = None
    confirmed: bool = True


def add_subscriber(
    session: Session, data: SubscriberInput, now: dt.datetime | None = None
) -> Subscriber:
    """Create a subscriber following existing tags; InvalidInput leaves nothing written."""
    now = now or utcnow()
    settings = get_settings()
    email = normalize_email(data.email)
    cadence = parse_cadence(data.cadence)
    timezone = parse_timezone(data.timezone or "UTC")
    hour = parse_hour(settings.default_send_hour if data.send_hour is None else data.send_hour)
    weekday = parse_weekday(
        settings.default_send_weekday if data.send_weekday is None else data.send_weekday
    )
    names = parse_tag_names(data.tags)
    if not names:
        raise InvalidInput("a subscriber must follow at least one tag")
    tags = existing_tags(session, names)
    if session.scalar(select(Subscriber.id).where(Subscriber.email == email)) is not None:
        raise InvalidInput(f"{email} is already subscribed")
    blocked = suppression.find(session, email)
    if blocked is not None:
        raise InvalidInput(
            f"{email} is on the suppression list ({blocked.reason.value}); "
            f"lift it first with `newsletter suppressions lift {email}`"
        )

    subscriber = Subscriber(
        email=email,
        name=one_line(data.name, 200),
        cadence=cadence,
        timezone=timezone,
        send_hour=hour,
        send_weekday=weekday,
        status=SubscriberStatus.ACTIVE if data.confirmed else SubscriberStatus.PENDING,
        subscribed_at=now,
        confirmed_at=now if data.confirmed else None,
        next_digest_at=next_slot(cadence, timezone, hour, weekday, now),
    )
    session.add(subscriber)
    session.flush()
    set_tags(session, subscriber, tags, now)
    return subscriber


def set_tags(
    session: Session, subscriber: Subscriber, tags: Sequence[Tag], now: dt.datetime
) -> None:
    """Follow exactly these tags; a tag followed already keeps the date it was followed."""
    wanted = {t.id for t in tags}
    current = set(
        session.scalars(
            select(subscriber_tags.c.tag_id).where(subscriber_tags.c.subscriber_id == subscriber.id)
        )
    )
    if current - wanted:
        session.execute(
            delete(subscriber_tags).where(
                subscriber_tags.c.subscriber_id == subscriber.id,
                subscriber_tags.c.tag_id.in_(current - wanted),
            )
        )
    if wanted - current:
        session.execute(
            insert(subscriber_tags),
            [
                {"subscriber_id": subscriber.id, "tag_id": tag_id, "created_at": now}
                for tag_id in sorted(wanted - current)
            ],
        )
    session.expire(subscriber, ["tags"])


# Fields whose values are personal data: an audit names them, never their values.
PERSONAL_FIELDS = frozenset({"email", "name"})
# Fields that decide when a daily or weekly digest is due.
_SCHEDULE = frozenset({"cadence", "timezone", "send_hour", "send_weekday"})


@dataclass
class SubscriberChanges:
    """An edit of one reader (the console's form, the API's PATCH): None leaves a field be.

    Values are as typed; `update_subscriber` validates them as sign-up and the CLI do.
    """

    email: str | None = None
    name: str | None = None
    status: str | None = None
    cadence: str | None = None
    timezone: str | None = None
    send_hour: int | str | None = None
    send_weekday: int | str | None = None
    tags: str | Sequence[str] | None = None


class FieldErrors(InvalidInput):
    """Everything wrong with an edit, by field, so a form can show each message by
    its field; the message names them all for the CLI and the API."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))


ChangedValue = str | int | list[str]
# What an edit changed: field -> (before, after); tags as sorted slugs.
Changes = dict[str, tuple[ChangedValue, ChangedValue]]


def audit_detail(changed: Changes) -> dict[str, Any]:
    """What an audit entry keeps of an edit: the fields changed, with before and after
    for all but the personal ones (whose values the log must not hold)."""
    return {
        "fields": sorted(changed),
        "changes": {
            field: list(values) for field, values in changed.items() if field not in PERSONAL_FIELDS
        },
    }


def _taken(session: Session, email: str, other_than: int | None = None) -> bool:
    query = select(Subscriber.id).where(Subscriber.email == email)
    if other_than is not None:
        query = query.where(Subscriber.id != other_than)
    return session.scalar(query) is not None


def _new_address(session: Session, subscriber: Subscriber, raw: str) -> str:
    """The address as sign-up stores it; a new one must be no look-alike and no one else's."""
    email = normalize_email(raw)
    if email != subscriber.email:
        refuse_lookalike_domain(email)
        if _taken(session, email, subscriber.id):
            raise InvalidInput(f"another reader already has the address {email}")
    return email


def _new_status(raw: str) -> SubscriberStatus:
    status = parse_status(raw)
    if status is None:
        raise InvalidInput("choose a status")
    return status


def _new_tags(session: Session, raw: str | Sequence[str]) -> list[Tag]:
    names = parse_tag_names(raw)
    if not names:
        raise InvalidInput("a subscriber must follow at least one tag")
    return sorted(existing_tags(session, names), key=lambda t: t.slug)


def _validated(
    session: Session, subscriber: Subscriber, changes: SubscriberChanges
) -> dict[str, object]:
    """Every given field parsed, or FieldErrors naming each bad one; nothing is written."""
    parsers: dict[str, Callable[[Any], object]] = {
        "email": lambda raw: _new_address(session, subscriber, raw),
        "name": lambda raw: one_line(raw, 200),
        "status": _new_status,
        "cadence": parse_cadence,
        "timezone": lambda raw: parse_timezone(raw or "UTC"),
        "send_hour": parse_hour,
        "send_weekday": parse_weekday,
        "tags": lambda raw: _new_tags(session, raw),
    }
    values: dict[str, object] = {}
    errors: dict[str, str] = {}
    for item in fields(changes):
        raw = getattr(changes, item.name)
        if raw is None:
            continue
        try:
            values[item.name] = parsers[item.name](raw)
        except InvalidInput as exc:
            errors[item.name] = str(exc)
    status = values.get("status", subscriber.status)
    email = values.get("email", subscriber.email)
    if "email" in values and email != subscriber.email and "email" not in errors:
        blocked = suppression.find(session, str(email))
        if blocked is not None and status is not SubscriberStatus.UNSUBSCRIBED:
            errors["email"] = (
                f"{email} is on the suppression list ({blocked.reason.value}); lift it first"
            )
    if status is SubscriberStatus.PENDING and subscriber.status is not SubscriberStatus.PENDING:
        errors["status"] = "a reader becomes pending only by signing up; choose another status"
    leaving = subscriber.status is SubscriberStatus.UNSUBSCRIBED
    if leaving and status is not SubscriberStatus.UNSUBSCRIBED and "email" not in errors:
        # They asked to stop; only an admin who lifted that on purpose brings them back.
        blocked = suppression.find(session, str(email))
        if blocked is not None:
            errors["status"] = (
                f"the address is suppressed ({blocked.reason.value}): lift the suppression "
                "first to subscribe this reader again"
            )
    if errors:
        raise FieldErrors(errors)
    return values


def _followed(subscriber: Subscriber) -> list[str]:
    return sorted(t.slug for t in subscriber.tags)


def editable_values(subscriber: Subscriber) -> dict[str, ChangedValue]:
    """A reader's fields as an edit names them (`SubscriberChanges`); tags as sorted slugs."""
    return {
        "email": subscriber.email,
        "name": subscriber.name,
        "status": subscriber.status.value,
        "cadence": subscriber.cadence.value,
        "timezone": subscriber.timezone,
        "send_hour": subscriber.send_hour,
        "send_weekday": subscriber.send_weekday,
        "tags": _followed(subscriber),
    }


def update_subscriber(
    session: Session,
    subscriber: Subscriber,
    changes: SubscriberChanges,
    now: dt.datetime | None = None,
    actor: str = "admin",
) -> Changes:
    """Change a reader's fields as an admin asked; returns what changed.

    Every field is validated first (FieldErrors names each bad one and nothing is
    written). A new address is normalised and checked as at sign-up, and gets a new
    key, so links mailed to the old address stop working. Tags kept keep the date
    they were followed. Status follows the readers' own rules: unsubscribing puts the
    address on the suppression list (by `actor`), going back to active starts
    eligibility now (no backlog). A schedule change moves the next digest slot.
    """
    now = now or utcnow()
    values = _validated(session, subscriber, changes)
    before = editable_values(subscriber)
    if values.get("email", subscriber.email) != subscriber.email:
        subscriber.email = str(values["email"])
        subscriber.uid = new_uid()
        try:
            session.flush()
        except IntegrityError:
            # Another reader took the address since it was checked.
            raise FieldErrors({"email": f"another reader already has {values['email']}"}) from None
    for name in ("name", "cadence", "timezone", "send_hour", "send_weekday"):
        if name in values:
            setattr(subscriber, name, values[name])
    if "tags" in values:
        tags = values["tags"]
        assert isinstance(tags, list)
        set_tags(session, subscriber, tags, now)
    status = values.get("status", subscriber.status)
    assert isinstance(status, SubscriberStatus)
    _set_status(session, subscriber, status, now, actor)
    after = editable_values(subscriber)
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    rescheduled = bool(_SCHEDULE & changed.keys()) or (
        "status" in changed and subscriber.status is SubscriberStatus.ACTIVE
    )
    if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
        subscriber.next_digest_at = None
    elif rescheduled:
        subscriber.next_digest_at = next_slot(
            subscriber.cadence, subscriber.timezone, subscriber.send_hour,
            subscriber.send_weekday, now,
        )  # fmt: skip
    session.flush()
    return changed


def _set_status(
    session: Session, subscriber: Subscriber, status: SubscriberStatus, now: dt.datetime, actor: str
) -> None:
    """Move a reader to a status an admin chose (already validated as allowed)."""
    if status is subscriber.status:
        return
    if status is SubscriberStatus.UNSUBSCRIBED:
        unsubscribe(session, subscriber, now, actor=actor)
        return
    if status is SubscriberStatus.ACTIVE:
        # Like a confirmation or a resume: what arrived while away is not sent.
        subscriber.subscribed_at = now
        subscriber.confirmed_at = subscriber.confirmed_at or now
    subscriber.unsubscribed_at = None
    subscriber.status = status


def followed_tags(session: Session, subscriber: Subscriber) -> list[tuple[str, str, dt.datetime]]:
    """(slug, name, followed since) of each tag the reader follows, by slug."""
    rows = session.execute(
        select(Tag.slug, Tag.name, subscriber_tags.c.created_at)
        .join(subscriber_tags, subscriber_tags.c.tag_id == Tag.id)
        .where(subscriber_tags.c.subscriber_id == subscriber.id)
        .order_by(Tag.slug)
    )
    return [(slug, name, since) for slug, name, since in rows]


def get_by_email(session: Session, email: str) -> Subscriber:
    normalized = normalize_email(email)
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == normalized))
    if subscriber is None:
        raise NotFound(f"no subscriber {normalized}")
    return subscriber


def remove_subscriber(session: Session, email: str) -> None:
    """Delete the subscriber with their personal data (see `forget_subscriber`)."""
    forget_subscriber(session, get_by_email(session, email))


# Deliveries not yet sent when their reader is deleted: they are never sent.
_UNSENT = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING)


def forget_subscriber(session: Session, subscriber: Subscriber) -> None:
    """Delete a reader with their personal data; the ledger keeps anonymous rows.

    Their deliveries stay, with no reader (ON DELETE SET NULL), so every digest's
    sent / failed / skipped counts stay true; the ones not yet sent are skipped, and
    every SMTP reply is cleared, as a reply often quotes the address. Their tags,
    promised posts and recent sign-up attempts go. A suppression of the address stays
    with its history: it is what keeps them from being mailed again; the history of a
    suppression already lifted goes.
    """
    email = subscriber.email
    mine = Delivery.subscriber_id == subscriber.id
    session.execute(
        update(Delivery)
        .where(mine, Delivery.status.in_(_UNSENT))
        .values(
            status=DeliveryStatus.SKIPPED,
            skip_reason="subscriber_deleted",
            next_attempt_at=None,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Delivery)
        .where(mine, Delivery.last_error.is_not(None))
        .values(last_error=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(delete(SignupAttempt).where(SignupAttempt.email == email))
    if suppression.find(session, email) is None:
        session.execute(delete(SuppressionEvent).where(SuppressionEvent.email == email))
    drop_guards(session, readers=DeliveryPost.subscriber_id == subscriber.id)
    session.delete(subscriber)
    session.flush()


def list_subscribers(
    session: Session, status: SubscriberStatus | None = None, limit: int | None = None
) -> list[Subscriber]:
    query = select(Subscriber).order_by(Subscriber.email)
    if status is not None:
        query = query.where(Subscriber.status == status)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def count_active(session: Session) -> int:
    query = select(func.count()).where(Subscriber.status == SubscriberStatus.ACTIVE)
    return int(session.scalar(query) or 0)


def by_uid(session: Session, uid: str) -> Subscriber:
    subscriber = session.scalar(select(Subscriber).where(Subscriber.uid == uid))
    if subscriber is None:
        raise NotFound("this subscription no longer exists")
    return subscriber


def unsubscribe(
    session: Session,
    subscriber: Subscriber,
    now: dt.datetime | None = None,
    actor: str = "the subscriber",
) -> None:
    """Stop all mail at once: digests already planned are skipped at send time, and the
    address goes on the suppression list so no import brings it back."""
    if subscriber.status is not SubscriberStatus.UNSUBSCRIBED:
        subscriber.status = SubscriberStatus.UNSUBSCRIBED
        subscriber.unsubscribed_at = now or utcnow()
        subscriber.next_digest_at = None
    suppression.suppress(session, subscriber.email, SuppressionReason.UNSUBSCRIBED, actor=actor)
    session.flush()


def undo_unsubscribe(
    session: Session, subscriber: Subscriber, now: dt.datetime | None = None
) -> None:
    """The reader's own undo, soon after leaving: back with the same tags and schedule,
    their own unsubscribe block lifted. Other blocks (a bounce, a complaint, an admin's
    decision) stay: only an admin lifts those."""
    now = now or utcnow()
    blocked = suppression.find(session, subscriber.email)
    if blocked is not None and blocked.reason is not SuppressionReason.UNSUBSCRIBED:
        raise InvalidInput("this address cannot be subscribed; contact the publisher")
    if blocked is not None:
        suppression.lift(session, subscriber.email, by="the subscriber, by undoing an unsubscribe")
    if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
        _set_status(session, subscriber, SubscriberStatus.ACTIVE, now, "the subscriber")
        subscriber.next_digest_at = next_slot(
            subscriber.cadence, subscriber.timezone, subscriber.send_hour,
            subscriber.send_weekday, now,
        )  # fmt: skip
    session.flush()


@dataclass
class ReaderDetails:
    """What `subscribers show` prints: the reader, their tags with the date each was
    followed, their suppression if any, and their newest deliveries with the subject."""

    subscriber: Subscriber
    tags: list[tuple[str, str, dt.datetime]]
    suppression: Suppression | None
    deliveries: list[tuple[Delivery, str]]


def reader_details(session: Session, email: str, deliveries: int = 10) -> ReaderDetails:
    """One reader by address (NotFound if none), with their last `deliveries` rows."""
    subscriber = get_by_email(session, email)
    newest = last_deliveries(session, subscriber, deliveries)
    return ReaderDetails(
        subscriber=subscriber,
        tags=followed_tags(session, subscriber),
        suppression=suppression.find(session, subscriber.email),
        deliveries=[(d.delivery, d.subject) for d in newest],
    )


@dataclass(frozen=True)
class SentDigest:
    delivery: Delivery
    subject: str
    cadence: Cadence


def last_deliveries(session: Session, subscriber: Subscriber, limit: int) -> list[SentDigest]:
    """A reader's newest deliveries with their digest's subject and cadence (not its
    bodies, which are tens of kilobytes each): the console's reader page and
    `subscribers show`."""
    rows = session.execute(
        select(Delivery, Digest.subject, Digest.cadence)
        .join(Digest, Digest.id == Delivery.digest_id)
        .where(Delivery.subscriber_id == subscriber.id)
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .limit(limit)
    )
    return [SentDigest(delivery, subject, cadence) for delivery, subject, cadence in rows]
