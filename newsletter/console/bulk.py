"""Bulk actions, CSV import and export over the subscriber list's filtered selection.

A bulk action is asked for on the list (its filters), confirmed on a page that counts
the readers it will change, and run as a `ConsoleJob` (`subscribers.bulk`): in the
request when it is small or no broker is configured, else by a worker; either way its
page shows the progress and the report. An import is a job too; an export streams.
Every one is audited once, with the filters and the count.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from newsletter.console import services
from newsletter.console.models import ConsoleJob, StaffUser
from newsletter.console.security import (
    AdminDep,
    ConsoleRoute,
    CsrfDep,
    Staff,
    error_page,
    request_ip,
)
from newsletter.console.views import list_url, page, see_other
from newsletter.db import session_scope, utcnow
from newsletter.errors import InvalidInput, NotFound
from subscribers import bulk
from subscribers.bulk import BulkAction, JobStatus, Selection
from subscribers.lists import EXPORT_COLUMNS, REQUIRED

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)

# The largest upload: about 120,000 rows. Larger lists go through the CLI beside the
# database, or the API (64 MiB).
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
# The job page reloads itself this often (seconds) while the job runs.
REFRESH_SECONDS = 2

Filter = Annotated[str, Query(max_length=320)]
FormFilter = Annotated[str, Form(max_length=320)]


def _actor(session: Session, staff: Staff) -> StaffUser | None:
    return session.get(StaffUser, staff.user_id)


# -- bulk actions -----------------------------------------------------------------


@router.get("/subscribers/bulk")
def confirm_bulk(
    staff: AdminDep,
    q: Filter = "",
    tag: Filter = "",
    status: Filter = "",
    cadence: Filter = "",
    action: Annotated[str, Query(max_length=40)] = "",
    bulk_tag: Annotated[str, Query(max_length=200)] = "",
) -> HTMLResponse:
    """How many readers the action will change, and a button to go ahead. Changes nothing."""
    chosen = bulk.parse_action(action)
    with session_scope() as session:
        tag_row = None
        if chosen.needs_tag:
            if not bulk_tag.strip():
                raise InvalidInput("choose the tag to add or remove")
            tag_row = bulk.find_tag(session, bulk_tag)
        upto = bulk.highest_id(session)
        selection = Selection.from_filters(
            {"q": q, "tag": tag, "status": status, "cadence": cadence}, upto
        )
        count = bulk.count_selection(session, selection)
        return page(
            "bulk_confirm.html",
            staff,
            "subscribers",
            action=chosen,
            label=bulk.ACTION_LABELS[chosen],
            tag=tag_row,
            count=count,
            filters=selection.filters(),
            upto=upto,
            background=not bulk.runs_in_request(count, bulk.INLINE_LIMIT),
            list_url=list_url("/admin/subscribers", selection.filters()),
        )


@router.post("/subscribers/bulk")
def run_bulk(
    request: Request,
    admin: AdminDep,
    _csrf: CsrfDep,
    action: Annotated[str, Form(max_length=40)],
    upto: Annotated[int, Form(ge=0, le=2**62)],
    q: FormFilter = "",
    tag: FormFilter = "",
    status: FormFilter = "",
    cadence: FormFilter = "",
    bulk_tag: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Start the confirmed action over the readers the filters held when confirmed."""
    chosen = bulk.parse_action(action)
    selection = Selection.from_filters(
        {"q": q, "tag": tag, "status": status, "cadence": cadence}, upto
    )
    with session_scope() as session:
        job = bulk.create_bulk_job(session, chosen, selection, bulk_tag, admin.email)
        detail: dict[str, Any] = {
            "filters": bulk.kept_filters(chosen.kind, selection.filters()),
            "count": job.total,
            "job": job.id,
        }
        if chosen.needs_tag:
            detail["tag"] = job.params["tag"]
        services.audit(
            session,
            chosen.kind,
            actor=_actor(session, admin),
            target=f"{job.total} readers",
            detail=detail,
            ip=request_ip(request),
        )
        run_here = bulk.submit(session, job)
        job_id = job.id
    if run_here:
        bulk.run_job(job_id)
    return see_other(f"/admin/jobs/{job_id}")


# -- jobs -------------------------------------------------------------------------


def _job_title(job: ConsoleJob) -> str:
    if job.kind == bulk.IMPORT_KIND:
        name = job.params.get("filename") or "a CSV file"
        check = " (check only)" if job.params.get("dry_run") else ""
        return f"Import of {name}{check}"
    action = bulk.action_of(job.kind)
    label = bulk.ACTION_LABELS[action] if action else job.kind
    if action is not None and action.needs_tag:
        verb = "Add the tag" if action is BulkAction.TAG_ADD else "Remove the tag"
        label = f"{verb} {job.params.get('tag', '')}"
    return label


@router.get("/jobs/{job_id}")
def job_page(staff: AdminDep, job_id: int) -> HTMLResponse:
    with session_scope() as session:
        job = session.get(ConsoleJob, job_id)
        if job is None:
            raise NotFound("no such job")
        running = job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
        filters = dict(job.params.get("filters", {}))
        kept = {k: v for k, v in filters.items() if v != bulk.NOT_KEPT}
        return page(
            "job.html",
            staff,
            "subscribers",
            job=job,
            title=_job_title(job),
            is_import=job.kind == bulk.IMPORT_KIND,
            running=running,
            refresh=REFRESH_SECONDS if running else None,
            filters=filters,
            list_url=list_url("/admin/subscribers", kept),
            report=job.report,
            failures=job.report.get("failures", []),
            rejected=job.report.get("rejected", []),
            processed=min(job.done + job.failed, job.total),
        )


# -- import -----------------------------------------------------------------------


class UploadRoute(ConsoleRoute):
    """The upload's size is checked from its Content-Length before the body is read,
    so an oversized file is refused at once instead of being received first."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def capped(request: Request) -> Response:
            declared = request.headers.get("content-length", "")
            if not declared.isdigit():
                return error_page(411, "Length required", "Send the file from the import form.")
            if int(declared) > MAX_UPLOAD_BYTES:
                return error_page(413, "File too large", _too_large())
            return await handler(request)

        return capped


def _too_large() -> str:
    mib = MAX_UPLOAD_BYTES // (1024 * 1024)
    return (
        f"The file is larger than {mib} MiB. Split it, or import it with "
        "`newsletter subscribers import` beside the database."
    )


def _import_page(
    staff: Staff,
    error: str | None = None,
    status_code: int = 200,
    create_tags: bool = False,
    dry_run: bool = False,
) -> HTMLResponse:
    return page(
        "import.html",
        staff,
        "subscribers",
        status_code=status_code,
        error=error,
        required=REQUIRED,
        columns=EXPORT_COLUMNS,
        max_mib=MAX_UPLOAD_BYTES // (1024 * 1024),
        create_tags=create_tags,
        dry_run=dry_run,
    )


@router.get("/subscribers/import")
def import_form(staff: AdminDep) -> HTMLResponse:
    return _import_page(staff)


def _start_import(
    admin: Staff, ip: str, data: bytes, filename: str, create_tags: bool, dry_run: bool
) -> int:
    """Check the file, record the job and the audit entry, and run it here if it is
    small; the job's id. InvalidInput for an unusable file, with nothing written."""
    with session_scope() as session:
        job = bulk.create_import_job(
            session,
            data,
            filename=filename,
            create_tags=create_tags,
            dry_run=dry_run,
            created_by=admin.email,
        )
        services.audit(
            session,
            "subscribers_imported",
            actor=session.get(StaffUser, admin.user_id),
            target=f"{job.total} rows",
            detail={
                "job": job.id,
                "rows": job.total,
                "file": job.params["filename"],
                "create_tags": create_tags,
                "dry_run": dry_run,
            },
            ip=ip,
        )
        run_here = bulk.submit(session, job)
        job_id = job.id
    if run_here:
        bulk.run_job(job_id, data)
    return job_id


def _not_imported(reason: str) -> str:
    if not reason.endswith("nothing was imported"):
        reason += "; nothing was imported"
    return reason[:1].upper() + reason[1:] + "."


def _checked(value: object) -> bool:
    return isinstance(value, str) and value in ("on", "1", "true")


async def upload_import(request: Request, admin: AdminDep, _csrf: CsrfDep) -> Response:
    """Import an uploaded CSV through the CLI's import; its report is on the job page."""
    form = await request.form()
    upload = form.get("file")
    create_tags, dry_run = _checked(form.get("create_tags")), _checked(form.get("dry_run"))
    if not isinstance(upload, UploadFile) or not upload.filename:
        return _import_page(admin, "Choose a CSV file to upload.", 400, create_tags, dry_run)
    data = await upload.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        return _import_page(admin, _too_large(), 413, create_tags, dry_run)
    if not data.strip():
        return _import_page(admin, _not_imported("the file is empty"), 400, create_tags, dry_run)
    try:
        job_id = await run_in_threadpool(
            _start_import,
            admin,
            request_ip(request),
            data,
            upload.filename,
            create_tags,
            dry_run,
        )
    except InvalidInput as exc:
        return _import_page(admin, _not_imported(str(exc)), 400, create_tags, dry_run)
    return see_other(f"/admin/jobs/{job_id}")


router.add_api_route(
    "/subscribers/import", upload_import, methods=["POST"], route_class_override=UploadRoute
)


# -- export -----------------------------------------------------------------------


@router.get("/subscribers/export")
def export(
    request: Request,
    admin: AdminDep,
    q: Filter = "",
    tag: Filter = "",
    status: Filter = "",
    cadence: Filter = "",
) -> Response:
    """The filtered readers as a CSV download in import format, streamed in chunks."""
    selection = Selection.from_filters({"q": q, "tag": tag, "status": status, "cadence": cadence})
    with session_scope() as session:
        count = bulk.count_selection(session, selection)  # also refuses a bad filter
        services.audit(
            session,
            "subscribers_exported",
            actor=_actor(session, admin),
            target=f"{count} readers",
            detail={"filters": selection.filters(), "count": count},
            ip=request_ip(request),
        )
    filename = f"subscribers-{utcnow():%Y-%m-%d}.csv"
    return StreamingResponse(
        bulk.export_chunks(selection),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )
