"""The REST API for readers, admin tokens only: the console's search, a reader's page,
edit and delete, their deliveries, and the CLI's CSV import and export over HTTP.

The list is the console's own query (`subscribers.search`), paged by keyset; edits and
deletes go through the same services as the console's, and are written to its audit
log under the token's name.
"""

from __future__ import annotations

import io
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from newsletter.errors import InvalidInput
from newsletter.models import Cadence, Delivery, Digest
from newsletter.web.auth import AdminTokenDep, actor
from newsletter.web.console_api import audit, commit
from newsletter.web.deps import SessionDep, StrictJSONRoute
from newsletter.web.schemas import (
    MAX_DB_INT,
    DeliveryList,
    DeliveryOut,
    FollowOut,
    SearchText,
    SubscriberDetail,
    SubscriberList,
    SubscriberOut,
    SubscriberPatch,
    SuppressionEventOut,
    SuppressionOut,
    error_responses,
    unprocessable,
)
from subscribers import suppression
from subscribers.lists import export_csv, import_csv
from subscribers.models import Subscriber, SubscriberStatus
from subscribers.search import MAX_PAGE_SIZE, MAX_QUERY_CHARS, search_subscribers
from subscribers.services import (
    FieldErrors,
    SubscriberChanges,
    audit_detail,
    followed_tags,
    forget_subscriber,
    update_subscriber,
)

router = APIRouter(
    prefix="/api/subscribers",
    tags=["subscribers"],
    responses=error_responses(401, 403, 422),
    route_class=StrictJSONRoute,
)

# Big enough for ~500,000 rows; beyond that, use the CLI beside the database.
MAX_CSV_BYTES = 64 * 1024 * 1024

R404 = error_responses(404, e404="No such reader (deleted, or never existed)")
SubscriberId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="The reader's id.")]


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
    responses=error_responses(
        400,
        413,
        e400="The file is unusable (not UTF-8, no header, missing columns)",
        e413="The file is larger than 64 MiB",
    ),
    openapi_extra={
        "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}
    },
)
async def import_subscribers(
    request: Request,
    session: SessionDep,
    token: AdminTokenDep,
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
    description="Every reader, in the import format.",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "The list, in import format"}},
)
def export_subscribers(session: SessionDep, token: AdminTokenDep) -> Response:
    out = io.StringIO()
    export_csv(session, out)
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="subscribers.csv"'},
    )


# -- one reader at a time ---------------------------------------------------------


@router.get("", summary="Find readers", response_model=SubscriberList)
def list_subscribers(
    session: SessionDep,
    token: AdminTokenDep,
    q: Annotated[
        SearchText,
        Query(
            max_length=MAX_QUERY_CHARS,
            description="Address or name prefix, any case (as in the console's search).",
        ),
    ] = "",
    tag: Annotated[
        SearchText, Query(max_length=120, description="Only readers following this tag (its slug).")
    ] = "",
    status: Annotated[SubscriberStatus | None, Query(description="Only this status.")] = None,
    cadence: Annotated[Cadence | None, Query(description="Only this cadence.")] = None,
    after: Annotated[
        SearchText,
        Query(max_length=MAX_QUERY_CHARS, description="The `next_after` of the previous page."),
    ] = "",
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"Readers per page (1-{MAX_PAGE_SIZE}).")
    ] = 50,
) -> SubscriberList:
    """By address, paged by keyset: follow `next_after` until it is null."""
    found = search_subscribers(session, q, tag, status, cadence, after or None, limit)
    return SubscriberList(
        items=[SubscriberOut.of(row.subscriber, row.suppressed) for row in found.rows],
        next_after=found.next_after,
        limit=limit,
    )


def _reader(session: Session, subscriber_id: int) -> Subscriber:
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no reader #{subscriber_id}")
    return subscriber


def _detail(session: Session, subscriber: Subscriber) -> SubscriberDetail:
    follows = followed_tags(session, subscriber)
    blocked = suppression.find(session, subscriber.email)
    summary = SubscriberOut.of(subscriber, blocked.reason if blocked else None)
    return SubscriberDetail(
        **summary.model_dump(),
        follows=[FollowOut(slug=s, name=n, since=since) for s, n, since in follows],
        suppression=SuppressionOut.of(blocked) if blocked else None,
        suppression_history=[
            SuppressionEventOut.of(e) for e in suppression.history(session, subscriber.email)
        ],
    )


@router.get(
    "/{subscriber_id}",
    summary="Get a reader",
    description="Every field, their tags with when each was followed, and their "
    "address's suppression and its history.",
    response_model=SubscriberDetail,
    responses=R404,
)
def get_subscriber(
    subscriber_id: SubscriberId, session: SessionDep, token: AdminTokenDep
) -> SubscriberDetail:
    return _detail(session, _reader(session, subscriber_id))


@router.patch(
    "/{subscriber_id}",
    summary="Edit a reader",
    response_model=SubscriberDetail,
    responses={**R404, **error_responses(409, e409="The address was taken at the same moment")},
)
def patch_subscriber(
    subscriber_id: SubscriberId,
    patch: SubscriberPatch,
    request: Request,
    session: SessionDep,
    token: AdminTokenDep,
) -> SubscriberDetail:
    """Change the fields given, checked as the console checks them; one bad field and
    nothing changes (422). A new cadence, zone or hour moves the next slot."""
    subscriber = _reader(session, subscriber_id)
    changes = SubscriberChanges(**patch.model_dump(exclude_unset=True, mode="json"))
    try:
        changed = update_subscriber(session, subscriber, changes, actor=actor(token))
    except FieldErrors as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [
                {"loc": ["body", field], "msg": message, "type": "value_error"}
                for field, message in exc.errors.items()
            ],
        ) from None
    except InvalidInput as exc:
        raise unprocessable(exc) from None
    if changed:
        detail = audit_detail(changed)
        audit(session, request, token, "subscriber_edited", f"subscriber #{subscriber.id}", detail)
    commit(session, "the address is taken by another reader")
    return _detail(session, subscriber)


@router.delete(
    "/{subscriber_id}",
    summary="Delete a reader and their personal data",
    description="Their row, address, name, preferences and follows go; the delivery "
    "ledger keeps anonymous rows, so every digest's counts stay true. A suppression of "
    "the address stays: it is what keeps them from being mailed again.",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=R404,
)
def delete_subscriber(
    subscriber_id: SubscriberId, request: Request, session: SessionDep, token: AdminTokenDep
) -> Response:
    subscriber = _reader(session, subscriber_id)
    status_before = subscriber.status.value
    forget_subscriber(session, subscriber)
    # By number only: the log keeps nothing of someone who asked to be forgotten.
    target = f"subscriber #{subscriber_id}"
    audit(session, request, token, "subscriber_deleted", target, {"status": status_before})
    commit(session, "the reader changed at the same moment; try again")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{subscriber_id}/deliveries",
    summary="A reader's deliveries",
    response_model=DeliveryList,
    responses=R404,
)
def subscriber_deliveries(
    subscriber_id: SubscriberId,
    session: SessionDep,
    token: AdminTokenDep,
    before: Annotated[
        int | None,
        Query(ge=1, le=MAX_DB_INT, description="The `next_before` of the previous page."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Deliveries per page (1-200).")] = 50,
) -> DeliveryList:
    """Newest first: every digest planned for them, its status and the SMTP reply."""
    subscriber = _reader(session, subscriber_id)
    query = (
        select(Delivery, Digest.subject)
        .join(Digest, Digest.id == Delivery.digest_id)
        .where(Delivery.subscriber_id == subscriber.id)
        .order_by(Delivery.id.desc())
        .limit(limit + 1)
    )
    if before is not None:
        query = query.where(Delivery.id < before)
    rows = session.execute(query).all()
    shown = rows[:limit]
    return DeliveryList(
        items=[DeliveryOut.of(delivery, subject) for delivery, subject in shown],
        next_before=shown[-1][0].id if len(rows) > limit and shown else None,
        limit=limit,
    )
