"""The suppression list: addresses we never mail again until an admin lifts them.

Hard bounces, complaints and manual suppressions (an admin's decision) block every
mail, confirmations included. An unsubscribe blocks digests and imports; the person
may still sign up again through the form, and confirming that sign-up (proof they
own the address) lifts it.

Every add, change of reason and lift is written to `suppression_events` with who or
what did it, so an admin can tell why an address is (or was) blocked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.db import among, prefix_range
from newsletter.errors import InvalidInput, NotFound
from newsletter.text import one_line, searchable
from subscribers.models import Suppression, SuppressionEvent, SuppressionReason

log = logging.getLogger(__name__)

# Addresses on one page of the list (the console's, the API's default).
SEARCH_PAGE_SIZE = 50
# The longest address there is (RFC 5321): no search or cursor needs more.
MAX_QUERY_CHARS = 320

# Reasons that even a sign-up confirmation must respect: nobody but an admin lifts them.
BLOCKS_ALL = frozenset(
    {SuppressionReason.HARD_BOUNCE, SuppressionReason.COMPLAINT, SuppressionReason.MANUAL}
)


def find(session: Session, email: str) -> Suppression | None:
    return session.scalar(select(Suppression).where(Suppression.email == email))


def suppressed_among(session: Session, emails: Iterable[str]) -> dict[str, SuppressionReason]:
    wanted = list(set(emails))
    found: dict[str, SuppressionReason] = {}
    for start in range(0, len(wanted), 1000):
        rows = session.execute(
            select(Suppression.email, Suppression.reason).where(
                among(Suppression.email, wanted[start : start + 1000])
            )
        )
        found.update({email: reason for email, reason in rows})
    return found


def _detail(detail: str | None) -> str | None:
    return (detail or "")[:2000] or None


def _record(
    session: Session,
    email: str,
    action: str,
    reason: SuppressionReason,
    detail: str | None,
    actor: str,
) -> None:
    session.add(
        SuppressionEvent(
            email=email,
            action=action,
            reason=reason.value,
            detail=detail,
            actor=actor[:320],
        )
    )


def suppress(
    session: Session,
    email: str,
    reason: SuppressionReason,
    detail: str | None = None,
    actor: str = "system",
) -> Suppression:
    """Add (or keep) an address on the list; a reason in BLOCKS_ALL outranks an unsubscribe.

    `actor` says who or what did it (an admin's address, "smtp", "the subscriber")
    for the history; keeping a row as it is writes no history.
    """
    row = find(session, email)
    if row is None:
        row = Suppression(email=email, reason=reason, detail=_detail(detail))
        session.add(row)
        _record(session, email, "added", reason, row.detail, actor)
    elif reason in BLOCKS_ALL and row.reason not in BLOCKS_ALL:
        row.reason = reason
        row.detail = _detail(detail)
        _record(session, email, "changed", reason, row.detail, actor)
    session.flush()
    return row


def lift(session: Session, email: str, by: str = "admin") -> Suppression:
    row = find(session, email)
    if row is None:
        raise NotFound(f"{email} is not on the suppression list")
    log.warning("suppression of %s (%s) lifted by %s", email, row.reason.value, by)
    _record(session, email, "lifted", row.reason, None, by)
    session.delete(row)
    session.flush()
    return row


def history(session: Session, email: str) -> list[SuppressionEvent]:
    """Every add, change and lift of this address, newest first."""
    return list(
        session.scalars(
            select(SuppressionEvent)
            .where(SuppressionEvent.email == email)
            .order_by(SuppressionEvent.created_at.desc(), SuppressionEvent.id.desc())
        )
    )


def list_all(session: Session) -> list[Suppression]:
    return list(session.scalars(select(Suppression).order_by(Suppression.created_at.desc())))


@dataclass(frozen=True)
class SuppressionPage:
    rows: list[Suppression]
    # The cursor for the next page (the last address shown), None on the last page.
    next_after: str | None


def parse_reason(raw: str) -> SuppressionReason | None:
    """A reason filter; empty means any."""
    if not raw.strip():
        return None
    try:
        return SuppressionReason(raw.strip().lower())
    except ValueError:
        choices = ", ".join(r.value for r in SuppressionReason)
        raise InvalidInput(f"unknown reason {one_line(raw, 40)!r}: choose {choices}") from None


def search(
    session: Session,
    prefix: str = "",
    reason: SuppressionReason | None = None,
    after: str | None = None,
    limit: int = SEARCH_PAGE_SIZE,
) -> SuppressionPage:
    """Suppressed addresses starting with `prefix`, with `reason`, by address, after
    the address `after`."""
    query = select(Suppression).order_by(Suppression.email).limit(limit + 1)
    text = searchable(prefix.strip().lower()[:MAX_QUERY_CHARS], "search")
    if text:
        query = query.where(prefix_range(Suppression.email, text))
    if reason is not None:
        query = query.where(Suppression.reason == reason)
    if after:
        query = query.where(Suppression.email > searchable(after[:MAX_QUERY_CHARS], "page cursor"))
    found: Sequence[Suppression] = session.scalars(query).all()
    shown = list(found[:limit])
    return SuppressionPage(shown, shown[-1].email if len(found) > limit and shown else None)
