"""Admin REST API for whole subscriber lists: the CLI's CSV import and export over HTTP."""

from __future__ import annotations

import io
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from newsletter.errors import InvalidInput
from newsletter.web.auth import AUTH_RESPONSES, TokenDep
from newsletter.web.deps import SessionDep, StrictJSONRoute
from subscribers.lists import export_csv, import_csv

router = APIRouter(
    prefix="/api/subscribers",
    tags=["subscribers"],
    responses=AUTH_RESPONSES,
    route_class=StrictJSONRoute,
)

# Big enough for ~500,000 rows; beyond that, use the CLI beside the database.
MAX_CSV_BYTES = 64 * 1024 * 1024


class RejectedRowOut(BaseModel):
    line: int
    email: str
    reason: str


class ImportReportOut(BaseModel):
    rows: int
    created: int
    updated: int
    unchanged: int
    rejected: list[RejectedRowOut]
    dry_run: bool


@router.post(
    "/import",
    response_model=ImportReportOut,
    summary="Import subscribers from CSV",
    description=(
        "Body: a CSV file (`text/csv`), UTF-8 with or without BOM, comma or semicolon "
        "separated, with the header `email,name,tags,cadence,timezone` and optionally "
        "`status,send_hour,send_weekday`. Valid rows are created or updated in one "
        "transaction; each rejected row is listed with its line number and reason."
    ),
    responses={
        400: {"description": "The file is unusable (not UTF-8, no header, missing columns)"},
        413: {"description": "The file is larger than 64 MiB"},
    },
    openapi_extra={
        "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}
    },
)
async def import_subscribers(
    request: Request,
    session: SessionDep,
    token: TokenDep,
    dry_run: Annotated[bool, Query(description="Report only; write nothing.")] = False,
    create_tags: Annotated[bool, Query(description="Create tags the file names.")] = False,
) -> ImportReportOut:
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_CSV_BYTES:
            raise HTTPException(413, "the CSV file is larger than 64 MiB")
    try:
        # Off the event loop: a large list takes seconds of validation and writes.
        report = await run_in_threadpool(
            import_csv, session, bytes(body), dry_run=dry_run, create_tags=create_tags
        )
    except InvalidInput as exc:
        raise HTTPException(400, str(exc)) from None
    return ImportReportOut.model_validate(report.as_dict())


@router.get(
    "/export",
    summary="Export subscribers as CSV",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "The list, in import format"}},
)
def export_subscribers(session: SessionDep, token: TokenDep) -> Response:
    out = io.StringIO()
    export_csv(session, out)
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="subscribers.csv"'},
    )
