"""Whole lists in and out as CSV: validated row by row, written in one transaction.

Import reads `email, name, tags, cadence, timezone` (plus the optional `status`,
`send_hour`, `send_weekday` that export writes), UTF-8 with or without BOM, commas
or semicolons. Every rejected row is reported with its line number and reason; the
valid ones are written together, or nothing is written at all.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.orm import Session, object_session

from newsletter.db import utcnow
from newsletter.errors import InvalidInput
from newsletter.models import Cadence, Tag
from newsletter.tags import get_or_create_tags, parse_tag_names
from newsletter.text import one_line
from subscribers import suppression
from subscribers.cadence import next_slot, parse_cadence, parse_hour, parse_timezone, parse_weekday
from subscribers.models import (
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionEvent,
    SuppressionReason,
    new_uid,
    subscriber_tags,
)
from subscribers.services import normalize_email
from subscribers.signup import Preferences

# The Core table: plain executemany, without the ORM's bulk-insert bookkeeping.
_SUBSCRIBERS = cast(Table, Subscriber.__table__)
REQUIRED = ("email", "name", "tags", "cadence", "timezone")
OPTIONAL = ("status", "send_hour", "send_weekday")
EXPORT_COLUMNS = (*REQUIRED, *OPTIONAL)
# Rows written per statement: large enough to amortise round trips, small enough
# to keep each statement's parameters well under driver limits.
WRITE_CHUNK = 2000
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP's
# "CSV injection" list): export prefixes such a cell with a quote, import removes it.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# The longest cell read; Python's csv module refuses longer ones (128 KiB) itself.
MAX_CELL_CHARS = csv.field_size_limit()

# Export's last column, after what import reads: the address's suppression, if any.
SUPPRESSED_COLUMN = "suppressed"
# How often an import reports progress while checking rows.
PROGRESS_EVERY = 1000

# (what is being done, rows done, rows in all): "checking rows" then "writing".
Progress = Callable[[str, int, int], None]


@dataclass
class RejectedRow:
    line: int
    email: str
    reason: str


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    dry_run: bool = False
    # Addresses created as unconfirmed by a `pending` import: each is owed a confirmation.
    pending: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": [r.__dict__ for r in self.rejected],
            "dry_run": self.dry_run,
        }


@dataclass
class _Row:
    line: int
    email: str
    name: str
    tag_slugs: dict[str, str]
    cadence: Cadence
    timezone: str
    status: SubscriberStatus
    send_hour: int
    send_weekday: int


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the file is not UTF-8 (byte {exc.start}); save it as UTF-8 CSV"
        ) from None


def _needs_escape(value: str) -> bool:
    """True when a spreadsheet would run `value`, or it looks like an escaped cell.

    Escaping a cell that already starts with a quote before a formula character too
    keeps the round trip exact: unescape(escape(v)) == v for every v.
    """
    if value.startswith(FORMULA_STARTS):
        return True
    return value.startswith("'") and _needs_escape(value[1:])


def escape_cell(value: str) -> str:
    """`value` as a spreadsheet shows it but never runs it (a leading quote)."""
    return "'" + value if _needs_escape(value) else value


def unescape_cell(value: str) -> str:
    """The value `escape_cell` was given: a quote before a formula character is dropped."""
    return value[1:] if value.startswith("'") and _needs_escape(value[1:]) else value


def _records(reader: Iterator[list[str]], line: Callable[[], int]) -> Iterator[list[str]]:
    """The reader's rows, with a malformed or oversized cell turned into a clear error."""
    try:
        yield from reader
    except csv.Error as exc:
        limit = f"{MAX_CELL_CHARS // 1024} KiB"
        reason = f"a cell is longer than {limit}" if "field limit" in str(exc) else str(exc)
        raise InvalidInput(f"line {line()}: {reason}; nothing was imported") from None


def read_rows(data: bytes | str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; the delimiter (comma or semicolon) is read off the header.

    Cells come back unescaped (see `escape_cell`).
    """
    text = _decode(data)
    first_line = text.split("\n", 1)[0]
    delimiter = ";" if first_line.count(";") > first_line.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records = _records(reader, lambda: reader.line_num)
    try:
        header = [h.strip().lower() for h in next(records)]
    except StopIteration:
        raise InvalidInput("the file is empty: expected a header row") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InvalidInput(
            f"missing column(s) {', '.join(missing)}: the header must name {', '.join(REQUIRED)}"
        )
    for values in records:
        if not any(v.strip() for v in values):
            continue
        row = {
            h: (unescape_cell(values[i].strip()) if i < len(values) else "")
            for i, h in enumerate(header)
        }
        yield reader.line_num, row


def count_rows(data: bytes | str) -> int:
    """The rows `import_csv` would read, without the database; InvalidInput if the file
    itself is unusable (not UTF-8, no header, a missing column, a malformed line), so
    a caller can refuse it before queuing its import."""
    return sum(1 for _ in read_rows(data))


def _validate(
    line: int, raw: dict[str, str], known_tags: dict[str, Tag], create_tags: bool
) -> _Row:
    email = normalize_email(raw.get("email", ""))
    try:
        names = parse_tag_names(raw.get("tags", ""))
    except InvalidInput as exc:
        raise InvalidInput(f"bad tags: {exc}") from None
    if not names:
        raise InvalidInput("no tags to follow")
    unknown = [names[s] for s in names if s not in known_tags]
    if unknown and not create_tags:
        raise InvalidInput(f"unknown tag(s): {', '.join(unknown)}")
    status_text = (raw.get("status") or "active").lower()
    try:
        status = SubscriberStatus(status_text)
    except ValueError:
        raise InvalidInput(f"unknown status {status_text!r}") from None
    return _Row(
        line=line,
        email=email,
        # Like the forms: CR, LF, NUL and the rest would break every mail's To header.
        name=one_line(raw.get("name", ""), 200),
        tag_slugs=names,
        cadence=parse_cadence(raw.get("cadence") or "immediate"),
        timezone=parse_timezone(raw.get("timezone") or "UTC"),
        status=status,
        send_hour=parse_hour(raw.get("send_hour") or 8),
        send_weekday=parse_weekday(raw.get("send_weekday") or 0),
    )


def import_csv(
    session: Session,
    data: bytes | str,
    *,
    dry_run: bool = False,
    create_tags: bool = False,
    now: dt.datetime | None = None,
    on_progress: Progress | None = None,
    pending: bool = False,
) -> ImportReport:
    """Validate every row, then (unless dry_run) create or update the valid ones.

    With `pending`, new readers the file gives as active are created unconfirmed
    (the caller mails each a confirmation: `report.pending`); readers already on the
    list keep their status. `on_progress` hears of rows checked (in a dry run too),
    then of rows written, counting data rows only.
    """
    now = now or utcnow()
    report = ImportReport(dry_run=dry_run)
    known = {t.slug: t for t in session.scalars(select(Tag))}
    valid: list[_Row] = []
    seen: dict[str, int] = {}
    total = count_rows(data) if on_progress else 0
    for line, raw in read_rows(data):
        report.rows += 1
        if on_progress and report.rows % PROGRESS_EVERY == 0:
            on_progress("checking rows", report.rows, total)
        try:
            row = _validate(line, raw, known, create_tags)
        except InvalidInput as exc:
            report.rejected.append(RejectedRow(line, raw.get("email", ""), str(exc)))
            continue
        if row.email in seen:
            report.rejected.append(
                RejectedRow(line, row.email, f"duplicate of line {seen[row.email]}")
            )
            continue
        seen[row.email] = line
        valid.append(row)
    if on_progress:
        on_progress("checking rows", report.rows, report.rows)

    blocked = suppression.suppressed_among(session, seen)
    accepted: list[_Row] = []
    for row in valid:
        reason = blocked.get(row.email)
        if reason is not None and row.status is not SubscriberStatus.UNSUBSCRIBED:
            report.rejected.append(
                RejectedRow(row.line, row.email, f"address is suppressed ({reason.value})")
            )
        else:
            accepted.append(row)
    report.rejected.sort(key=lambda r: r.line)
    existing = _existing(session, [r.email for r in accepted])
    if pending:
        for row in accepted:
            if row.email in existing:
                row.status = existing[row.email].status
            elif row.status is SubscriberStatus.ACTIVE:
                row.status = SubscriberStatus.PENDING
                report.pending.append(row.email)
    new_rows = [r for r in accepted if r.email not in existing]
    changed = [
        (existing[r.email], r)
        for r in accepted
        if r.email in existing and _differs(existing[r.email], r)
    ]
    report.unchanged = len(accepted) - len(new_rows) - len(changed)
    if dry_run:
        # What would be written.
        report.created, report.updated = len(new_rows), len(changed)
        return report

    if create_tags:
        wanted = {s: n for row in accepted for s, n in row.tag_slugs.items() if s not in known}
        for tag in get_or_create_tags(session, wanted):
            known[tag.slug] = tag
    _write(session, new_rows, changed, known, now, report, on_progress)
    # Imported as unsubscribed: keep them so, whatever a later import says.
    newly_out = [
        r.email
        for r in accepted
        if r.status is SubscriberStatus.UNSUBSCRIBED and r.email not in blocked
    ]
    for start in range(0, len(newly_out), WRITE_CHUNK):
        session.execute(
            insert(Suppression),
            [
                {
                    "email": e,
                    "reason": SuppressionReason.UNSUBSCRIBED,
                    "detail": "imported as unsubscribed",
                    "created_at": now,
                }
                for e in newly_out[start : start + WRITE_CHUNK]
            ],
        )
        session.execute(
            insert(SuppressionEvent),
            [
                {
                    "email": e,
                    "action": "added",
                    "reason": SuppressionReason.UNSUBSCRIBED.value,
                    "detail": "imported as unsubscribed",
                    "actor": "import",
                    "created_at": now,
                }
                for e in newly_out[start : start + WRITE_CHUNK]
            ],
        )
    return report


def _existing(session: Session, emails: list[str]) -> dict[str, Subscriber]:
    found: dict[str, Subscriber] = {}
    for start in range(0, len(emails), 1000):
        chunk = emails[start : start + 1000]
        found.update(
            {
                s.email: s
                for s in session.scalars(select(Subscriber).where(Subscriber.email.in_(chunk)))
            }
        )
    return found


def _write(
    session: Session,
    new_rows: list[_Row],
    changed: list[tuple[Subscriber, _Row]],
    tags: dict[str, Tag],
    now: dt.datetime,
    report: ImportReport,
    on_progress: Progress | None,
) -> None:
    total = len(new_rows) + len(changed) + report.unchanged
    for start in range(0, len(new_rows), WRITE_CHUNK):
        chunk = new_rows[start : start + WRITE_CHUNK]
        values = [
            _columns(r, now) | {"uid": new_uid(), "subscribed_at": now, "created_at": now}
            for r in chunk
        ]
        # A bulk INSERT, then one SELECT for the new ids: RETURNING with many rows
        # is slow on SQLite, and emails are unique anyway.
        session.execute(insert(_SUBSCRIBERS), values)
        ids = dict(
            session.execute(
                select(Subscriber.email, Subscriber.id).where(
                    Subscriber.email.in_([r.email for r in chunk])
                )
            ).all()
        )
        session.execute(
            insert(subscriber_tags),
            [
                {"subscriber_id": ids[row.email], "tag_id": tags[slug].id, "created_at": now}
                for row in chunk
                for slug in row.tag_slugs
            ],
        )
        report.created += len(chunk)
        if on_progress:
            on_progress("writing", report.created, total)

    for start in range(0, len(changed), WRITE_CHUNK):
        pairs = changed[start : start + WRITE_CHUNK]
        session.execute(update(Subscriber), [{"id": s.id, **_columns(r, now)} for s, r in pairs])
        changed_ids = [s.id for s, _ in pairs]
        session.execute(
            delete(subscriber_tags).where(subscriber_tags.c.subscriber_id.in_(changed_ids))
        )
        session.execute(
            insert(subscriber_tags),
            [
                {"subscriber_id": s.id, "tag_id": tags[slug].id, "created_at": now}
                for s, r in pairs
                for slug in r.tag_slugs
            ],
        )
        report.updated += len(pairs)
        if on_progress:
            on_progress("writing", report.created + report.updated, total)
    if on_progress:
        on_progress("writing", total, total)
    session.flush()


def _columns(row: _Row, now: dt.datetime) -> dict[str, Any]:
    return {
        "email": row.email,
        "name": row.name,
        "cadence": row.cadence,
        "timezone": row.timezone,
        "send_hour": row.send_hour,
        "send_weekday": row.send_weekday,
        "status": row.status,
        "confirmed_at": now if row.status is SubscriberStatus.ACTIVE else None,
        "unsubscribed_at": now if row.status is SubscriberStatus.UNSUBSCRIBED else None,
        "next_digest_at": (
            next_slot(row.cadence, row.timezone, row.send_hour, row.send_weekday, now)
            if row.status is SubscriberStatus.ACTIVE
            else None
        ),
    }


def _differs(subscriber: Subscriber, row: _Row) -> bool:
    return (
        subscriber.name != row.name
        or subscriber.cadence is not row.cadence
        or subscriber.timezone != row.timezone
        or subscriber.status is not row.status
        or subscriber.send_hour != row.send_hour
        or subscriber.send_weekday != row.send_weekday
        or {t.slug for t in subscriber.tags} != set(row.tag_slugs)
    )


def export_row(
    subscriber: Subscriber, suppressed: SuppressionReason | None = None
) -> list[str | int]:
    """One reader as an export line: import format, cells a spreadsheet would run
    escaped, then the reason their address is suppressed (empty if it is not)."""
    return [
        escape_cell(subscriber.email),
        escape_cell(subscriber.name),
        escape_cell(", ".join(t.name for t in subscriber.tags)),
        subscriber.cadence.value,
        subscriber.timezone,
        subscriber.status.value,
        subscriber.send_hour,
        subscriber.send_weekday,
        suppressed.value if suppressed else "",
    ]


def write_export(out: TextIO, subscribers: Iterable[Subscriber], *, header: bool = True) -> int:
    """Write `subscribers` as export lines (after the header line, if asked); the count.

    Shared by the whole-list export and the console's streamed export of a selection,
    so both write the same columns, escaping and line endings.
    """
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow((*EXPORT_COLUMNS, SUPPRESSED_COLUMN))
    count = 0
    readers = iter(subscribers)
    while batch := list(itertools.islice(readers, WRITE_CHUNK)):
        session = object_session(batch[0])
        blocked = suppression.suppressed_among(session, [s.email for s in batch]) if session else {}
        writer.writerows(export_row(s, blocked.get(s.email)) for s in batch)
        count += len(batch)
    return count


def confirmation_requests(
    session: Session, emails: Sequence[str]
) -> list[tuple[int, dict[str, Any]]]:
    """(id, confirmation link payload) of each of these readers still pending, as a
    sign-up builds it: what a `pending` import owes each new reader it created."""
    found: list[tuple[int, dict[str, Any]]] = []
    for start in range(0, len(emails), WRITE_CHUNK):
        readers = session.scalars(
            select(Subscriber)
            .where(
                Subscriber.email.in_(emails[start : start + WRITE_CHUNK]),
                Subscriber.status == SubscriberStatus.PENDING,
            )
            .order_by(Subscriber.id)
        )
        for r in readers:
            choices = Preferences(list(r.tags), r.cadence, r.timezone, r.send_hour, r.send_weekday)
            found.append((r.id, choices.token_payload(r.uid)))
    return found


def write_rejects(data: bytes | str, rejected: Iterable[RejectedRow], out: TextIO) -> int:
    """The rejected rows of an import file as CSV: its own columns as read (cells a
    spreadsheet would run escaped), then the line and the reason. Fixed and saved, the
    file imports again as it is: import ignores the two extra columns."""
    reasons = {r.line: r.reason for r in rejected}
    writer = csv.writer(out, lineterminator="\n")
    count = 0
    header_written = False
    for line, row in read_rows(data):
        if not header_written:
            writer.writerow([*row, "line", "reason"])
            header_written = True
        if line in reasons:
            writer.writerow([*(escape_cell(v) for v in row.values()), line, reasons[line]])
            count += 1
    return count


def export_csv(session: Session, out: TextIO) -> int:
    """Every subscriber in import format; re-importing the file changes nothing."""
    query = select(Subscriber).order_by(Subscriber.email).execution_options(yield_per=2000)
    return write_export(out, session.scalars(query))


__all__ = [
    "EXPORT_COLUMNS",
    "ImportReport",
    "RejectedRow",
    "SuppressionReason",
    "confirmation_requests",
    "count_rows",
    "escape_cell",
    "export_csv",
    "export_row",
    "import_csv",
    "read_rows",
    "unescape_cell",
    "write_export",
    "write_rejects",
]
