"""Work over many readers at once: bulk actions over a selection, a CSV import run as
a job, and the export of a selection in chunks.

A selection is the list's filters (`subscribers.search.filter_clauses`, the one
definition of "the readers this filter shows"), bounded by the highest reader id when
the admin confirmed, so nobody who signs up while the job runs is swept into it.

A bulk action is a `ConsoleJob` row walked through its selection by id (keyset, never
OFFSET), CHUNK readers per transaction. Each chunk writes its changes, the job's
progress and its cursor in one commit: a worker that dies resumes after the last
commit and never applies a chunk twice. Each reader runs in a savepoint, so one that
cannot be changed is recorded in the report with its reason and the rest go on.
"""

from __future__ import annotations

import datetime as dt
import enum
import io
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from newsletter.console.models import ConsoleJob
from newsletter.db import database_unavailable, session_scope, utcnow
from newsletter.dispatch import enqueue_after_commit, tasks_run_in_process
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import Tag
from newsletter.text import one_line
from subscribers.lists import count_rows, import_csv, write_export
from subscribers.models import Subscriber, SubscriberStatus
from subscribers.search import MAX_QUERY_CHARS, filter_clauses
from subscribers.services import forget_subscriber, set_tags, unsubscribe
from subscribers.signup import set_paused

log = logging.getLogger(__name__)

# Readers per transaction: large enough that the commit and the job-row write are a
# small share of the work, small enough that a chunk holds its locks for well under a
# second and a crash redoes little.
CHUNK = 500
# Smaller selections run in the request (a worker would add only latency); so does
# everything when no broker is configured (the first-run default).
INLINE_LIMIT = 200
# Files with fewer rows are imported in the request; larger ones by a worker.
IMPORT_INLINE_ROWS = 2000
# Readers per query of an export: bounded memory whatever the selection's size.
EXPORT_CHUNK = 1000
# The report keeps the first failures (each has the reader's id and the reason); the
# job's `failed` counts them all.
MAX_FAILURES_KEPT = 200
# An import report keeps this many rejected rows; `failed` counts them all.
MAX_REJECTS_KEPT = 1000
IMPORT_KIND = "import"
# Put in place of a delete's search once it is no longer needed.
NOT_KEPT = "(not kept)"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class BulkAction(enum.StrEnum):
    TAG_ADD = "tag_add"
    TAG_REMOVE = "tag_remove"
    PAUSE = "pause"
    UNSUBSCRIBE = "unsubscribe"
    DELETE = "delete"

    @property
    def kind(self) -> str:
        """The job kind (`ConsoleJob.kind`) and the audit action."""
        return f"bulk_{self.value}"

    @property
    def needs_tag(self) -> bool:
        return self in (BulkAction.TAG_ADD, BulkAction.TAG_REMOVE)


ACTION_LABELS = {
    BulkAction.TAG_ADD: "Add a tag",
    BulkAction.TAG_REMOVE: "Remove a tag",
    BulkAction.PAUSE: "Pause",
    BulkAction.UNSUBSCRIBE: "Unsubscribe",
    BulkAction.DELETE: "Delete with their personal data",
}


def parse_action(raw: str) -> BulkAction:
    try:
        return BulkAction(raw.strip().lower())
    except ValueError:
        choices = ", ".join(a.value for a in BulkAction)
        raise InvalidInput(f"unknown action {one_line(raw, 40)!r}: choose {choices}") from None


def action_of(kind: str) -> BulkAction | None:
    """The bulk action a job kind names; None for an import."""
    for action in BulkAction:
        if action.kind == kind:
            return action
    return None


@dataclass(frozen=True)
class Selection:
    """The list's filters, and the highest reader id the selection may reach."""

    q: str = ""
    tag: str = ""
    status: str = ""
    cadence: str = ""
    upto: int | None = None

    @classmethod
    def from_filters(cls, filters: Mapping[str, Any], upto: int | None = None) -> Selection:
        def text(key: str) -> str:
            return str(filters.get(key) or "")[:MAX_QUERY_CHARS]

        return cls(text("q"), text("tag"), text("status"), text("cadence"), upto)

    def filters(self) -> dict[str, str]:
        """The filters that are set, as the list's query string names them."""
        given = {"q": self.q, "tag": self.tag, "status": self.status, "cadence": self.cadence}
        return {key: value for key, value in given.items() if value}

    def clauses(self) -> list[ColumnElement[bool]]:
        """WHERE clauses; InvalidInput for an unknown status or cadence."""
        clauses = filter_clauses(self.q, self.tag, self.status, self.cadence)
        if self.upto is not None:
            clauses.append(Subscriber.id <= self.upto)
        return clauses


def count_selection(session: Session, selection: Selection) -> int:
    query = select(func.count()).select_from(Subscriber).where(*selection.clauses())
    return int(session.scalar(query) or 0)


def highest_id(session: Session) -> int:
    """The newest reader's id: a confirmed selection reaches no further."""
    return int(session.scalar(select(func.max(Subscriber.id))) or 0)


# -- the actions, one reader at a time --------------------------------------------

RowAction = Callable[[Session, Subscriber, Tag | None, dt.datetime, str], None]


def _tag(tag: Tag | None) -> Tag:
    if tag is None:
        raise InvalidInput("no tag given")
    return tag


def _add_tag(
    session: Session, reader: Subscriber, tag: Tag | None, now: dt.datetime, _: str
) -> None:
    """Follow the tag from now on; a reader who already follows it keeps their date."""
    wanted = _tag(tag)
    if all(t.id != wanted.id for t in reader.tags):
        set_tags(session, reader, [*reader.tags, wanted], now)


def _remove_tag(
    session: Session, reader: Subscriber, tag: Tag | None, now: dt.datetime, _: str
) -> None:
    unwanted = _tag(tag)
    kept = [t for t in reader.tags if t.id != unwanted.id]
    if len(kept) == len(reader.tags):
        return
    if not kept:
        raise InvalidInput(
            f"{unwanted.slug} is the only tag they follow, and a reader follows at least one"
        )
    set_tags(session, reader, kept, now)


def _pause(session: Session, reader: Subscriber, _: Tag | None, now: dt.datetime, __: str) -> None:
    if reader.status is SubscriberStatus.PENDING:
        raise InvalidInput("has not confirmed the subscription, so there is nothing to pause")
    if reader.status is SubscriberStatus.UNSUBSCRIBED:
        raise InvalidInput("is unsubscribed, so there is nothing to pause")
    if reader.status is not SubscriberStatus.PAUSED:
        set_paused(session, reader, True, now)


def _unsubscribe(
    session: Session, reader: Subscriber, _: Tag | None, now: dt.datetime, actor: str
) -> None:
    unsubscribe(session, reader, now, actor=actor)


def _delete(session: Session, reader: Subscriber, _: Tag | None, __: dt.datetime, ___: str) -> None:
    forget_subscriber(session, reader)


ROW_ACTIONS: dict[BulkAction, RowAction] = {
    BulkAction.TAG_ADD: _add_tag,
    BulkAction.TAG_REMOVE: _remove_tag,
    BulkAction.PAUSE: _pause,
    BulkAction.UNSUBSCRIBE: _unsubscribe,
    BulkAction.DELETE: _delete,
}


# -- creating jobs ----------------------------------------------------------------


def find_tag(session: Session, slug: str) -> Tag:
    tag = session.scalar(select(Tag).where(Tag.slug == slug.strip().lower()))
    if tag is None:
        raise InvalidInput(f"no tag {one_line(slug, 60)!r}: choose one of the list")
    return tag


def create_bulk_job(
    session: Session,
    action: BulkAction,
    selection: Selection,
    tag_slug: str = "",
    created_by: str = "",
) -> ConsoleJob:
    """A queued job for `action` over `selection`, its total counted now; InvalidInput
    for a bad filter, or a tag action without an existing tag."""
    params: dict[str, Any] = {"filters": selection.filters(), "upto": selection.upto}
    if action.needs_tag:
        if not tag_slug.strip():
            raise InvalidInput("choose the tag to add or remove")
        tag = find_tag(session, tag_slug)
        params |= {"tag_id": tag.id, "tag": tag.slug}
    return _new_job(session, action.kind, params, count_selection(session, selection), created_by)


def create_import_job(
    session: Session,
    data: bytes,
    *,
    filename: str = "",
    create_tags: bool = False,
    dry_run: bool = False,
    created_by: str = "",
) -> ConsoleJob:
    """A queued import of `data`, read once here so an unusable file is refused
    (InvalidInput) before anything is queued. A file too large for the request is
    stored in the job for a worker, and dropped when the job ends."""
    rows = count_rows(data)
    params: dict[str, Any] = {
        "filename": one_line(filename, 200),
        "create_tags": create_tags,
        "dry_run": dry_run,
    }
    if not runs_in_request(rows, IMPORT_INLINE_ROWS):
        params["csv"] = data.decode("utf-8-sig")
    return _new_job(session, IMPORT_KIND, params, rows, created_by)


def _new_job(
    session: Session, kind: str, params: dict[str, Any], total: int, created_by: str
) -> ConsoleJob:
    job = ConsoleJob(
        kind=kind,
        params=params,
        status=JobStatus.QUEUED.value,
        total=total,
        report={},
        created_by=created_by[:320],
        created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    return job


def runs_in_request(size: int, limit: int) -> bool:
    """Whether work of `size` is done in the request: when it is small, or when no
    broker is configured (tasks run in this process anyway)."""
    return size < limit or tasks_run_in_process()


def in_request(job: ConsoleJob) -> bool:
    """Whether this new job is for the request to run (see `runs_in_request`)."""
    if job.kind == IMPORT_KIND:
        return "csv" not in job.params
    return runs_in_request(job.total, INLINE_LIMIT)


def submit(session: Session, job: ConsoleJob) -> bool:
    """Hand a new job to a worker once `session` commits, or leave it to the caller:
    True means "run it yourself, after the commit" (`run_job`)."""
    if in_request(job):
        return True
    enqueue_after_commit(session, "run_console_job", job.id)
    return False


# -- running jobs -----------------------------------------------------------------


def run_job(job_id: int, data: bytes | str | None = None, chunk: int | None = None) -> str:
    """Run (or resume) a job to its end; returns its final status.

    A job already done or failed is left alone, so a duplicate task does nothing. An
    import reads `data` if given (a run in the request), else the file stored in the
    job. A database that cannot be reached is raised for the task to retry later,
    from the last committed chunk; anything else fails the job with its reason.
    """
    kind = _start(job_id)
    if kind is None:
        return _status(job_id)
    try:
        if kind == IMPORT_KIND:
            _run_import(job_id, data)
        else:
            while _run_chunk(job_id, chunk or CHUNK):
                pass
    except Exception as exc:
        if database_unavailable(exc):
            raise
        if not isinstance(exc, InvalidInput | NotFound):
            log.exception("console job %d failed", job_id)
        _finish(job_id, JobStatus.FAILED, error=_reason(exc))
    return _status(job_id)


def _status(job_id: int) -> str:
    with session_scope() as session:
        return session.scalar(select(ConsoleJob.status).where(ConsoleJob.id == job_id)) or ""


def _locked(session: Session, job_id: int) -> ConsoleJob | None:
    """The job row, locked until the transaction ends (PostgreSQL; SQLite has one
    writer anyway): two workers on one job take turns, chunk by chunk."""
    return session.get(ConsoleJob, job_id, with_for_update=True, populate_existing=True)


def _start(job_id: int) -> str | None:
    """Mark a queued job running; the kind of a job to run, None if there is none."""
    with session_scope() as session:
        job = _locked(session, job_id)
        if job is None or job.status in (JobStatus.DONE, JobStatus.FAILED):
            return None
        if job.status == JobStatus.QUEUED:
            job.status = JobStatus.RUNNING.value
            job.started_at = utcnow()
        return job.kind


def _finish(job_id: int, status: JobStatus, error: str | None = None) -> None:
    with session_scope() as session:
        job = _locked(session, job_id)
        if job is not None:
            _close(job, status, error)


def _close(job: ConsoleJob, status: JobStatus, error: str | None = None) -> None:
    """End the job. The stored file goes, and so does the search of a delete (it may
    be an address, and those readers asked to be forgotten)."""
    params = {key: value for key, value in job.params.items() if key != "csv"}
    if "filters" in params:
        params["filters"] = kept_filters(job.kind, params["filters"])
    job.params = params
    job.status = status.value
    job.error = error[:2000] if error else None
    job.finished_at = utcnow()


def kept_filters(kind: str, filters: Mapping[str, str]) -> dict[str, str]:
    """The filters as a record (the audit log, a finished job) keeps them: the search
    of a delete is dropped, as it may be the address of someone who asked to be
    forgotten."""
    if kind == BulkAction.DELETE.kind and filters.get("q"):
        return {**filters, "q": NOT_KEPT}
    return dict(filters)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, InvalidInput | NotFound):
        return str(exc)
    return f"unexpected error ({type(exc).__name__}); the details are in the log"


def _run_chunk(job_id: int, size: int) -> bool:
    """Apply the job's action to the next `size` readers after its cursor, in one
    transaction with the job's progress; False when the job is over."""
    with session_scope() as session:
        job = _locked(session, job_id)
        if job is None or job.status != JobStatus.RUNNING:
            return False
        action = action_of(job.kind)
        if action is None:
            raise InvalidInput(f"unknown job kind {job.kind!r}")
        tag = None
        if action.needs_tag:
            tag = session.get(Tag, job.params.get("tag_id"))
            if tag is None:
                raise InvalidInput(f"the tag {job.params.get('tag')!r} was deleted meanwhile")
        filters = job.params.get("filters", {})
        selection = Selection.from_filters(filters, job.params.get("upto"))
        after = int(job.report.get("after", 0))
        readers = list(
            session.scalars(
                select(Subscriber)
                .where(*selection.clauses(), Subscriber.id > after)
                .order_by(Subscriber.id)
                .limit(size)
            )
        )
        failures: list[dict[str, Any]] = []
        now = utcnow()
        apply = ROW_ACTIONS[action]
        actor = f"{job.created_by} (bulk action)" if job.created_by else "bulk action"
        ids = [reader.id for reader in readers]
        for reader, reader_id in zip(readers, ids, strict=True):
            try:
                with session.begin_nested():
                    apply(session, reader, tag, now, actor)
            except Exception as exc:
                if database_unavailable(exc):
                    raise
                if not isinstance(exc, InvalidInput | NotFound):
                    log.exception("job %d: reader #%d failed", job_id, reader_id)
                failures.append({"id": reader_id, "reason": _reason(exc)})
        kept = list(job.report.get("failures", []))
        job.done += len(readers) - len(failures)
        job.failed += len(failures)
        job.report = {
            **job.report,
            "after": ids[-1] if ids else after,
            "failures": (kept + failures)[:MAX_FAILURES_KEPT],
        }
        if len(readers) < size:
            _close(job, JobStatus.DONE)
            return False
        return True


def _run_import(job_id: int, data: bytes | str | None) -> None:
    """The whole file in one transaction, as the CLI imports it, with the job's report
    written in the same commit; the job row stays locked meanwhile, so a duplicate
    task waits and then finds the job done."""
    with session_scope() as session:
        job = _locked(session, job_id)
        if job is None or job.status != JobStatus.RUNNING:
            return
        text = data if data is not None else job.params.get("csv")
        if text is None:
            raise InvalidInput("the file is no longer stored: upload it again")
        report = import_csv(
            session,
            text,
            dry_run=bool(job.params.get("dry_run")),
            create_tags=bool(job.params.get("create_tags")),
        )
        result = report.as_dict()
        result["rejected"] = result["rejected"][:MAX_REJECTS_KEPT]
        job.report = result
        job.done = report.created + report.updated + report.unchanged
        job.failed = len(report.rejected)
        _close(job, JobStatus.DONE)


def stale_jobs(
    session: Session, older_than: dt.timedelta, now: dt.datetime | None = None
) -> list[int]:
    """Jobs still queued after `older_than`: their task was lost (the broker was down
    when they were queued). Running them again is safe: a job runs once."""
    cutoff = (now or utcnow()) - older_than
    query = select(ConsoleJob.id).where(
        ConsoleJob.status == JobStatus.QUEUED, ConsoleJob.created_at < cutoff
    )
    return list(session.scalars(query.order_by(ConsoleJob.id)))


# -- export -----------------------------------------------------------------------


def export_chunks(selection: Selection, chunk: int | None = None) -> Iterator[str]:
    """The selection as CSV text in import format, the header first, then `chunk`
    readers at a time by address (keyset). Each chunk is read in its own short
    transaction, so a slow download holds no connection and memory stays flat."""
    size = chunk or EXPORT_CHUNK
    clauses = selection.clauses()
    buffer = io.StringIO()
    write_export(buffer, [], header=True)
    yield buffer.getvalue()
    after = ""
    while True:
        with session_scope() as session:
            query = select(Subscriber).where(*clauses).order_by(Subscriber.email).limit(size)
            if after:
                query = query.where(Subscriber.email > after)
            readers = list(session.scalars(query))
            buffer = io.StringIO()
            write_export(buffer, readers, header=False)
        if not readers:
            return
        yield buffer.getvalue()
        after = readers[-1].email
        if len(readers) < size:
            return


__all__ = [
    "ACTION_LABELS",
    "BulkAction",
    "JobStatus",
    "Selection",
    "count_selection",
    "create_bulk_job",
    "create_import_job",
    "export_chunks",
    "highest_id",
    "kept_filters",
    "run_job",
    "runs_in_request",
    "stale_jobs",
    "submit",
]
