"""Finding readers: a prefix search with filters, paged by keyset.

One query for every front end (the console's list, the API, the command line), so a
search answers the same everywhere. Pages follow the email order with an `after`
cursor, never OFFSET: the thousandth page costs what the first does.

Indexes it relies on: the unique index on `subscribers.email` (order, cursor and the
address prefix, written as a range so it is a plain index range scan on both
backends), the primary key of `subscriber_tags` (subscriber_id, tag_id) for the tag
filter. A prefix range is exact under code point order: SQLite's default and
PostgreSQL's C collation; with a linguistic collation PostgreSQL needs a
`text_pattern_ops` index on email for the same plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, SQLColumnExpression, and_, exists, func, or_, select
from sqlalchemy.orm import Session

from newsletter.errors import InvalidInput
from newsletter.models import Cadence, Tag
from newsletter.text import one_line
from subscribers import suppression
from subscribers.cadence import parse_cadence
from subscribers.models import Subscriber, SubscriberStatus, SuppressionReason, subscriber_tags

PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_QUERY_CHARS = 320


@dataclass(frozen=True)
class SubscriberRow:
    """One line of a list: the reader and whether their address is suppressed."""

    subscriber: Subscriber
    suppressed: SuppressionReason | None


@dataclass(frozen=True)
class SubscriberPage:
    rows: list[SubscriberRow]
    # The cursor for the next page (the last address shown), None on the last page.
    next_after: str | None


def prefix_range(column: SQLColumnExpression[str], prefix: str) -> ColumnElement[bool]:
    """`column` starts with `prefix`, as a range an ordinary index can answer:
    prefix <= column < prefix with its last character incremented."""
    upper = prefix[:-1] + chr(min(ord(prefix[-1]) + 1, 0x10FFFF))
    return and_(column >= prefix, column < upper)


def parse_status(raw: str | None) -> SubscriberStatus | None:
    """A status filter; empty means any."""
    if raw is None or not raw.strip():
        return None
    try:
        return SubscriberStatus(raw.strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in SubscriberStatus)
        raise InvalidInput(f"unknown status {one_line(raw, 40)!r}: choose {choices}") from None


def parse_cadence_filter(raw: str | None) -> Cadence | None:
    """A cadence filter; empty means any."""
    if raw is None or not raw.strip():
        return None
    return parse_cadence(one_line(raw, 40))


def filter_clauses(
    q: str | None = None,
    tag: str | None = None,
    status: SubscriberStatus | str | None = None,
    cadence: Cadence | str | None = None,
) -> list[ColumnElement[bool]]:
    """The WHERE clauses of a search, for every query over a selection (a page, a bulk
    action, an export): one definition of "the readers this filter shows"."""
    wanted_status = status if isinstance(status, SubscriberStatus) else parse_status(status)
    wanted_cadence = cadence if isinstance(cadence, Cadence) else parse_cadence_filter(cadence)
    clauses: list[ColumnElement[bool]] = []
    text = (q or "").strip().lower()[:MAX_QUERY_CHARS]
    if text:
        clauses.append(
            or_(
                prefix_range(Subscriber.email, text),
                prefix_range(func.lower(Subscriber.name), text),
            )
        )
    slug = (tag or "").strip().lower()
    if slug:
        clauses.append(
            exists().where(
                subscriber_tags.c.subscriber_id == Subscriber.id,
                subscriber_tags.c.tag_id
                == select(Tag.id).where(Tag.slug == slug).scalar_subquery(),
            )
        )
    if wanted_status is not None:
        clauses.append(Subscriber.status == wanted_status)
    if wanted_cadence is not None:
        clauses.append(Subscriber.cadence == wanted_cadence)
    return clauses


def search_subscribers(
    session: Session,
    q: str | None = None,
    tag: str | None = None,
    status: SubscriberStatus | str | None = None,
    cadence: Cadence | str | None = None,
    after: str | None = None,
    limit: int = PAGE_SIZE,
) -> SubscriberPage:
    """Readers whose address or name starts with `q` (case-insensitively), following
    `tag` (a slug), in `status` and `cadence`, ordered by address, after the address
    `after`. An unknown tag finds nobody; an unknown status or cadence is refused."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"a page holds 1 to {MAX_PAGE_SIZE} readers")
    query = (
        select(Subscriber)
        .where(*filter_clauses(q, tag, status, cadence))
        .order_by(Subscriber.email, Subscriber.id)
        .limit(limit + 1)
    )
    if after:
        query = query.where(Subscriber.email > after[:MAX_QUERY_CHARS])
    found: Sequence[Subscriber] = session.scalars(query).all()
    shown = list(found[:limit])
    suppressed = suppression.suppressed_among(session, [s.email for s in shown])
    rows = [SubscriberRow(s, suppressed.get(s.email)) for s in shown]
    next_after = shown[-1].email if len(found) > limit and shown else None
    return SubscriberPage(rows, next_after)
