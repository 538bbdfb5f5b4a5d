"""Adding, listing and removing subscribers; every write validates first and writes whole."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from confusable_homoglyphs.categories import (  # type: ignore[import-untyped]
    unique_aliases as script_aliases,
)
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from newsletter.config import get_settings
from newsletter.db import utcnow
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import Cadence, Tag
from newsletter.tags import existing_tags, parse_tag_names
from newsletter.text import has_line_break, one_line
from subscribers import suppression
from subscribers.cadence import next_slot, parse_cadence, parse_hour, parse_timezone, parse_weekday
from subscribers.models import Subscriber, SubscriberStatus, SuppressionReason, subscriber_tags


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


def get_by_email(session: Session, email: str) -> Subscriber:
    normalized = normalize_email(email)
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == normalized))
    if subscriber is None:
        raise NotFound(f"no subscriber {normalized}")
    return subscriber


def remove_subscriber(session: Session, email: str) -> None:
    """Delete the subscriber and, by cascade, their preferences and ledger rows."""
    session.delete(get_by_email(session, email))
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


def cadence_label(cadence: Cadence) -> str:
    return {"immediate": "as soon as posts appear", "daily": "daily", "weekly": "weekly"}[
        cadence.value
    ]


def by_uid(session: Session, uid: str) -> Subscriber:
    subscriber = session.scalar(select(Subscriber).where(Subscriber.uid == uid))
    if subscriber is None:
        raise NotFound("this subscription no longer exists")
    return subscriber


def unsubscribe(session: Session, subscriber: Subscriber, now: dt.datetime | None = None) -> None:
    """Stop all mail at once: digests already planned are skipped at send time, and the
    address goes on the suppression list so no import brings it back."""
    if subscriber.status is not SubscriberStatus.UNSUBSCRIBED:
        subscriber.status = SubscriberStatus.UNSUBSCRIBED
        subscriber.unsubscribed_at = now or utcnow()
        subscriber.next_digest_at = None
    suppression.suppress(session, subscriber.email, SuppressionReason.UNSUBSCRIBED)
    session.flush()
