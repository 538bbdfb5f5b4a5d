"""The suppression list for admins, with each address's history.

The list is paged by keyset on the address (its unique index answers the order, the
cursor and the prefix search), never OFFSET. Adding and lifting go through
`subscribers.suppression`, which writes the history; each is audited here.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from newsletter.console import services
from newsletter.console.models import StaffUser
from newsletter.console.security import AdminDep, ConsoleRoute, CsrfDep, Staff, request_ip
from newsletter.console.views import list_url, page, see_other
from newsletter.db import session_scope
from newsletter.errors import InvalidInput
from newsletter.text import one_line
from subscribers import suppression
from subscribers.models import Subscriber, SuppressionReason
from subscribers.services import normalize_email
from subscribers.suppression import MAX_QUERY_CHARS

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)

LIST = "/admin/suppressions"
MAX_NOTE_LENGTH = 1000
HISTORY_NOTICES = {
    "added": "The address is suppressed: no mail of any kind goes to it until it is lifted.",
    "lifted": "The suppression is lifted: the address may be mailed again.",
}

Filter = Annotated[str, Query(max_length=MAX_QUERY_CHARS)]


def _history_url(email: str, notice: str = "") -> str:
    params = {"email": email, **({"notice": notice} if notice else {})}
    return "/admin/suppressions/history?" + urlencode(params)


@router.get("/suppressions")
def suppression_list(
    staff: AdminDep, q: Filter = "", reason: Filter = "", after: Filter = ""
) -> HTMLResponse:
    return _list_page(staff, q, reason, after)


def _list_page(
    staff: Staff,
    q: str = "",
    reason: str = "",
    after: str = "",
    status_code: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    filters = {"q": q, "reason": reason}
    active = {key: value for key, value in filters.items() if value}
    with session_scope() as session:
        result = suppression.search(session, q, suppression.parse_reason(reason), after or None)
        emails = [row.email for row in result.rows]
        readers = {
            email: reader_id
            for email, reader_id in session.execute(
                select(Subscriber.email, Subscriber.id).where(Subscriber.email.in_(emails))
            )
        }
        return page(
            "suppressions.html",
            staff,
            "suppressions",
            status_code=status_code,
            rows=result.rows,
            readers=readers,
            history_url=_history_url,
            next_url=list_url(LIST, active, result.next_after) if result.next_after else None,
            first_url=None if not after else list_url(LIST, active),
            filters=filters,
            filtered=bool(active),
            reasons=[r.value for r in SuppressionReason],
            error=error,
            form=form or {"email": "", "note": ""},
        )


def _lookup_address(raw: str) -> str:
    """An address as stored, for finding it: normalised when it is a valid address,
    else as typed (an old or odd row must still be reachable to be lifted)."""
    try:
        return normalize_email(raw)
    except InvalidInput:
        return one_line(raw, 320).lower()


@router.get("/suppressions/history")
def history(
    staff: AdminDep,
    email: Annotated[str, Query(max_length=1000)] = "",
    notice: Annotated[str, Query(max_length=40)] = "",
) -> HTMLResponse:
    """One address: whether it is suppressed now, and every add, change and lift."""
    address = _lookup_address(email)
    if not address:
        raise InvalidInput("give the address whose history you want to see")
    with session_scope() as session:
        reader = session.scalar(select(Subscriber.id).where(Subscriber.email == address))
        return page(
            "suppression.html",
            staff,
            "suppressions",
            email=address,
            current=suppression.find(session, address),
            events=suppression.history(session, address),
            reader_id=reader,
            notice=HISTORY_NOTICES.get(notice),
        )


@router.post("/suppressions")
def add(
    request: Request,
    admin: AdminDep,
    _csrf: CsrfDep,
    email: Annotated[str, Form(max_length=1000)] = "",
    note: Annotated[str, Form(max_length=5000)] = "",
) -> Response:
    """A manual suppression: no mail of any kind until an admin lifts it. An address on
    the list already keeps its entry; a manual suppression outranks an unsubscribe."""
    try:
        address = normalize_email(email)
    except InvalidInput as exc:
        form = {"email": email[:320], "note": note[:MAX_NOTE_LENGTH]}
        return _list_page(admin, status_code=400, error=str(exc), form=form)
    detail = one_line(note, MAX_NOTE_LENGTH) or f"suppressed by {admin.email}"
    with session_scope() as session:
        row = suppression.suppress(
            session, address, SuppressionReason.MANUAL, detail, actor=admin.email
        )
        services.audit(
            session,
            "address_suppressed",
            actor=session.get(StaffUser, admin.user_id),
            target=address,
            detail={"reason": row.reason.value, "via": "console"},
            ip=request_ip(request),
        )
    return see_other(_history_url(address, "added"))


@router.post("/suppressions/lift")
def lift(
    request: Request,
    admin: AdminDep,
    _csrf: CsrfDep,
    email: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    address = _lookup_address(email)
    with session_scope() as session:
        if not address or suppression.find(session, address) is None:
            raise InvalidInput(f"{address or 'that address'} is not suppressed")
        row = suppression.lift(session, address, by=admin.email)
        services.audit(
            session,
            "suppression_lifted",
            actor=session.get(StaffUser, admin.user_id),
            target=address,
            detail={"reason": row.reason.value, "via": "console"},
            ip=request_ip(request),
        )
    return see_other(_history_url(address, "lifted"))
