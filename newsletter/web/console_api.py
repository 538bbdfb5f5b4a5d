"""The REST API's share of the console: suppressions (admins), sent digests with their
counts and the dashboard's statistics (editors and admins), from the same queries as
the console's pages.

Included in `api.router`, so every route here first passes its token check; the
admin routes then check the token's role. Lists are paged by keyset, never OFFSET.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter import archive, stats
from newsletter.console import services
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import ApiToken, Tag
from newsletter.tags import slugify
from newsletter.text import one_line
from newsletter.web.auth import AdminTokenDep, EditorTokenDep, actor, is_admin
from newsletter.web.deps import SessionDep, StrictJSONRoute, client_ip
from newsletter.web.schemas import (
    MAX_DB_INT,
    DigestDetail,
    DigestList,
    DigestOut,
    SearchText,
    StatsOut,
    SuppressionCreate,
    SuppressionList,
    SuppressionOut,
    error_responses,
    unprocessable,
)
from subscribers import suppression
from subscribers.models import SuppressionReason
from subscribers.search import MAX_QUERY_CHARS
from subscribers.services import normalize_email

router = APIRouter(route_class=StrictJSONRoute)

ADMIN_ERRORS = error_responses(401, 403, 422)
PAGE_LIMIT = 200

Limit = Annotated[int, Query(ge=1, le=PAGE_LIMIT, description="Items per page (1-200).")]
Before = Annotated[
    int | None,
    Query(ge=1, le=MAX_DB_INT, description="The `next_before` of the previous page."),
]


def commit(session: Session, conflict: str) -> None:
    """Commit now, so the client hears about a failure (409) instead of a 2xx."""
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, conflict) from None


def audit(
    session: Session,
    request: Request,
    token: ApiToken,
    action: str,
    target: str,
    detail: dict[str, Any],
) -> None:
    """Write a change made through the API to the console's audit log, under the
    token's name (never a reader's address as the target of a delete)."""
    services.audit(
        session,
        action,
        actor_email=actor(token),
        target=target,
        detail={**detail, "via": "api"},
        ip=client_ip(request),
    )


# -- suppressions -----------------------------------------------------------------


@router.get(
    "/suppressions",
    tags=["suppressions"],
    summary="List suppressed addresses",
    response_model=SuppressionList,
    responses=ADMIN_ERRORS,
)
def list_suppressions(
    session: SessionDep,
    token: AdminTokenDep,
    reason: Annotated[SuppressionReason | None, Query(description="Only this reason.")] = None,
    prefix: Annotated[
        SearchText, Query(max_length=MAX_QUERY_CHARS, description="Addresses starting with this.")
    ] = "",
    after: Annotated[
        SearchText,
        Query(max_length=MAX_QUERY_CHARS, description="The `next_after` of the last page."),
    ] = "",
    limit: Limit = 50,
) -> SuppressionList:
    """By address; nothing is mailed to these until an admin lifts the suppression."""
    found = suppression.search(session, prefix, reason, after or None, limit)
    return SuppressionList(
        items=[SuppressionOut.of(r) for r in found.rows], next_after=found.next_after, limit=limit
    )


@router.post(
    "/suppressions",
    tags=["suppressions"],
    summary="Suppress an address",
    status_code=status.HTTP_201_CREATED,
    response_model=SuppressionOut,
    responses={
        200: {"model": SuppressionOut, "description": "It was suppressed already; kept"},
        **ADMIN_ERRORS,
        **error_responses(409, e409="The address was suppressed at the same moment"),
    },
)
def add_suppression(
    payload: SuppressionCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    token: AdminTokenDep,
) -> SuppressionOut:
    """A manual suppression: no mail of any kind (confirmations included) until an admin
    lifts it. An address suppressed already keeps its entry; a manual suppression
    outranks an unsubscribe."""
    try:
        email = normalize_email(payload.email)
    except InvalidInput as exc:
        raise unprocessable(exc, "body", "email") from None
    existed = suppression.find(session, email) is not None
    note = one_line(payload.note, 1000)
    by = actor(token)
    row = suppression.suppress(
        session, email, SuppressionReason.MANUAL, note or f"suppressed by {by}", actor=by
    )
    audit(session, request, token, "address_suppressed", email, {"reason": row.reason.value})
    commit(session, "the address was suppressed at the same moment; try again")
    if existed:
        response.status_code = status.HTTP_200_OK
    return SuppressionOut.of(row)


@router.delete(
    "/suppressions/{email:path}",
    tags=["suppressions"],
    summary="Lift a suppression",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**ADMIN_ERRORS, **error_responses(404, e404="The address is not suppressed")},
)
def lift_suppression(
    email: Annotated[SearchText, Path(max_length=320, description="The suppressed address.")],
    request: Request,
    session: SessionDep,
    token: AdminTokenDep,
) -> Response:
    """The address may be mailed again (it still needs a subscription to get digests)."""
    try:
        address = normalize_email(email)
    except InvalidInput:
        # As the console finds it: an old or odd row must still be reachable to be lifted.
        address = one_line(email, 320).lower()
    if not address or suppression.find(session, address) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the address is not suppressed")
    row = suppression.lift(session, address, by=actor(token))
    audit(session, request, token, "suppression_lifted", address, {"reason": row.reason.value})
    commit(session, "the suppression changed at the same moment; try again")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- digests ----------------------------------------------------------------------


@router.get(
    "/digests",
    tags=["digests"],
    summary="List sent digests",
    response_model=DigestList,
    responses=error_responses(401, 422),
)
def list_digests(
    session: SessionDep,
    tag: Annotated[
        SearchText, Query(max_length=120, description="Only digests holding a post with this tag.")
    ] = "",
    before: Before = None,
    limit: Limit = archive.PAGE_SIZE,
) -> DigestList:
    """The console's archive: digests that went out, newest first, each with its posts
    and its readers' sent / failed / skipped counts."""
    tag_id: int | None = None
    if tag.strip():
        tag_id = session.scalar(select(Tag.id).where(Tag.slug == slugify(tag)))
        if tag_id is None:
            return DigestList(items=[], next_before=None, limit=limit)
    found = archive.sent_digests(session, before, limit, tag_id)
    return DigestList(
        items=[DigestOut.of(s) for s in found.digests], next_before=found.next_before, limit=limit
    )


@router.get(
    "/digests/{digest_id}",
    tags=["digests"],
    summary="Get a digest",
    response_model=DigestDetail,
    responses=error_responses(401, 404, 422),
)
def get_digest(
    digest_id: Annotated[int, Path(ge=1, le=MAX_DB_INT, description="The digest's id.")],
    session: SessionDep,
) -> DigestDetail:
    """Any digest, sent or not, with its counts and its web copy: the text and HTML a
    reader got, with neutral values in place of theirs."""
    try:
        digest, summary = archive.summary(session, digest_id)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no digest #{digest_id}") from None
    return DigestDetail.of_copy(summary, archive.fill_copy(digest, summary.posts))


# -- statistics -------------------------------------------------------------------


@router.get(
    "/stats",
    tags=["statistics"],
    summary="Statistics",
    response_model=StatsOut,
    responses=error_responses(401, 422),
)
def get_stats(session: SessionDep, token: EditorTokenDep) -> StatsOut:
    """The console dashboard's figures: readers by status, cadence and tag, digests
    and messages per day for 30 days, the send in progress and the recent failures.
    Reader counts and days are cached for a minute (`as_of` says when they were
    counted). An editor token gets the failures without who they were for."""
    view = stats.overview(session)
    failures = view.failures
    if not is_admin(token):
        # Readers' data is for admins only, as on the dashboard.
        failures = [f.without_reader() for f in failures]
    return StatsOut.of(view, failures)
