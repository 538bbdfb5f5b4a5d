"""Finding readers: a prefix search with filters, paged by keyset.

One query for every front end (the console's list, the API, the command line), so a
search answers the same everywhere. Pages follow the email order with an `after`
cursor, never OFFSET: the thousandth page costs what the first does.

Indexes it relies on: the unique index on `subscribers.email` (order, cursor and the
address prefix, written as a range so it is a plain index range scan on both
backends), (status, email) for a status filter in address order, the lower-cased
name (with the address and id on PostgreSQL) for the name prefix, and the primary
key of `subscriber_tags` (subscriber_id, tag_id) for the tag filter. A prefix range
is exact under code point order: SQLite's default and PostgreSQL's C collation; with
a linguistic collation PostgreSQL needs a `text_pattern_ops` index on email for the
same plan. A page's query is shaped for these indexes (`search_subscribers`); bulk
actions and exports, which read the whole selection, use `filter_clauses` as it is.
Timings at a million readers: docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    ColumnElement,
    Select,
    bindparam,
    exists,
    func,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from newsletter.db import prefix_range
from newsletter.errors import InvalidInput
from newsletter.models import Cadence, Tag
from newsletter.text import one_line, searchable
from subscribers import suppression
from subscribers.cadence import parse_cadence
from subscribers.models import Subscriber, SubscriberStatus, SuppressionReason, subscriber_tags
from subscribers.suppression import MAX_QUERY_CHARS as MAX_QUERY_CHARS

PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


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


def _query_text(q: str | None) -> str:
    return searchable((q or "").strip().lower()[:MAX_QUERY_CHARS], "search")


def _follows(tag_id: int | ColumnElement[int]) -> ColumnElement[bool]:
    return exists().where(
        subscriber_tags.c.subscriber_id == Subscriber.id, subscriber_tags.c.tag_id == tag_id
    )


def _attribute_clauses(
    status: SubscriberStatus | str | None, cadence: Cadence | str | None
) -> list[ColumnElement[bool]]:
    """The status and cadence filters; an unknown value is refused."""
    wanted_status = status if isinstance(status, SubscriberStatus) else parse_status(status)
    wanted_cadence = cadence if isinstance(cadence, Cadence) else parse_cadence_filter(cadence)
    clauses: list[ColumnElement[bool]] = []
    if wanted_status is not None:
        clauses.append(Subscriber.status == wanted_status)
    if wanted_cadence is not None:
        clauses.append(Subscriber.cadence == wanted_cadence)
    return clauses


def filter_clauses(
    q: str | None = None,
    tag: str | None = None,
    status: SubscriberStatus | str | None = None,
    cadence: Cadence | str | None = None,
) -> list[ColumnElement[bool]]:
    """The WHERE clauses of a search, for every query over a selection (a page, a bulk
    action, an export): one definition of "the readers this filter shows"."""
    attributes = _attribute_clauses(status, cadence)
    clauses: list[ColumnElement[bool]] = []
    text = _query_text(q)
    if text:
        clauses.append(
            or_(
                prefix_range(Subscriber.email, text),
                prefix_range(func.lower(Subscriber.name), text),
            )
        )
    slug = (tag or "").strip().lower()
    if slug:
        clauses.append(_follows(select(Tag.id).where(Tag.slug == slug).scalar_subquery()))
    return clauses + attributes


def _by_address(text: str, clauses: list[ColumnElement[bool]], limit: int) -> Select[tuple[int]]:
    """The first `limit` ids, in address order, of readers whose address starts with
    `text`: a range scan on the address index."""
    first = (
        select(Subscriber.id)
        .where(prefix_range(Subscriber.email, text), *clauses)
        .order_by(Subscriber.email, Subscriber.id)
        .limit(limit)
        .subquery()
    )
    return select(first.c.id)


def _by_name(
    text: str, clauses: list[ColumnElement[bool]], after: str | None, limit: int
) -> Select[tuple[int]]:
    """The first `limit` ids, in address order, of readers whose name starts with `text`.

    Every name match is read from the name index and the first ones by address are
    kept. Walking the address index and testing each name instead looks cheaper to
    PostgreSQL's planner, but names and addresses go together (ana.lima@ is Ana Lima),
    so that walk passes most of the list before it finds a match: seconds at a million
    readers. `OFFSET 0` keeps the planner from merging the name scan into that walk.
    """
    named = select(Subscriber.id, Subscriber.email).where(
        prefix_range(func.lower(Subscriber.name), text)
    )
    if after:
        named = named.where(Subscriber.email > after)
    matches = named.offset(0).subquery()
    query = select(matches.c.id)
    if clauses:
        query = query.join(Subscriber, Subscriber.id == matches.c.id).where(*clauses)
    first = query.order_by(matches.c.email, matches.c.id).limit(limit).subquery()
    return select(first.c.id)


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
    clauses = _attribute_clauses(status, cadence)
    slug = (tag or "").strip().lower()
    if slug:
        tag_id = session.scalar(select(Tag.id).where(Tag.slug == slug))
        if tag_id is None:
            return SubscriberPage([], None)
        # The tag's id written into the statement, not bound: PostgreSQL then plans
        # for this tag's follower count (a new tag with ten followers is best found
        # from its follows, a popular one by walking the list) and never reuses a
        # plan made for another tag.
        clauses.append(_follows(bindparam("tag_id", tag_id, literal_execute=True)))
    cursor = searchable(after[:MAX_QUERY_CHARS], "page cursor") if after else None
    text = _query_text(q)
    query = select(Subscriber)
    if text:
        # Two index range scans, each stopping at `limit + 1`, instead of one OR that
        # no index answers.
        ids = union_all(
            _by_address(text, clauses + _after(cursor), limit + 1),
            _by_name(text, clauses, cursor, limit + 1),
        ).subquery()
        query = query.where(Subscriber.id.in_(select(ids.c.id)))
    else:
        query = query.where(*clauses, *_after(cursor))
    query = query.order_by(Subscriber.email, Subscriber.id).limit(limit + 1)
    found: Sequence[Subscriber] = session.scalars(query).all()
    shown = list(found[:limit])
    suppressed = suppression.suppressed_among(session, [s.email for s in shown])
    rows = [SubscriberRow(s, suppressed.get(s.email)) for s in shown]
    next_after = shown[-1].email if len(found) > limit and shown else None
    return SubscriberPage(rows, next_after)


def _after(cursor: str | None) -> list[ColumnElement[bool]]:
    return [Subscriber.email > cursor] if cursor else []
