"""The console's reader pages, for admins: find readers, see one reader's history,
suppress, lift and delete.

The list is the shared search (`subscribers.search`), paged by keyset. Every action
is a CSRF-checked POST written to the audit log.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.console import services
from newsletter.console.models import StaffUser
from newsletter.console.security import AdminDep, ConsoleRoute, CsrfDep, Staff, request_ip
from newsletter.console.views import page, see_other
from newsletter.db import session_scope
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import Cadence, Delivery, Tag
from subscribers import suppression
from subscribers.cadence import WEEKDAYS
from subscribers.models import Subscriber, SubscriberStatus, SuppressionReason, subscriber_tags
from subscribers.search import PAGE_SIZE, search_subscribers

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)

DELIVERIES_SHOWN = 50
READER_NOTICES = {
    "suppressed": "The address is suppressed: no mail goes to it until the suppression is lifted.",
    "lifted": "The suppression is lifted.",
}
LIST_NOTICES = {"deleted": "The reader and their personal data are deleted."}

Filter = Annotated[str, Query(max_length=320)]


def _list_url(filters: dict[str, str], after: str | None) -> str:
    """The list with these filters, from `after` on: pages keep the search."""
    params = {**filters, **({"after": after} if after else {})}
    return "/admin/subscribers" + ("?" + urlencode(params) if params else "")


@router.get("/subscribers")
def subscriber_list(
    staff: AdminDep,
    q: Filter = "",
    tag: Filter = "",
    status: Filter = "",
    cadence: Filter = "",
    after: Filter = "",
    notice: Filter = "",
) -> HTMLResponse:
    filters = {"q": q, "tag": tag, "status": status, "cadence": cadence}
    active = {key: value for key, value in filters.items() if value}
    with session_scope() as session:
        result = search_subscribers(session, q, tag, status, cadence, after or None, PAGE_SIZE)
        tags = list(session.scalars(select(Tag.slug).order_by(Tag.slug)))
        return page(
            "subscribers.html",
            staff,
            "subscribers",
            rows=result.rows,
            next_url=_list_url(active, result.next_after) if result.next_after else None,
            first_url=None if not after else _list_url(active, None),
            filters=filters,
            filtered=bool(active),
            tags=tags,
            statuses=[s.value for s in SubscriberStatus],
            cadences=[c.value for c in Cadence],
            notice=LIST_NOTICES.get(notice),
        )


def _reader(session: Session, subscriber_id: int) -> Subscriber:
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise NotFound("no such reader (deleted, or never existed)")
    return subscriber


@router.get("/subscribers/{subscriber_id}")
def subscriber_page(
    staff: AdminDep, subscriber_id: int, notice: Annotated[str, Query(max_length=40)] = ""
) -> HTMLResponse:
    with session_scope() as session:
        subscriber = _reader(session, subscriber_id)
        follows = session.execute(
            select(Tag.slug, Tag.name, subscriber_tags.c.created_at)
            .join(subscriber_tags, subscriber_tags.c.tag_id == Tag.id)
            .where(subscriber_tags.c.subscriber_id == subscriber.id)
            .order_by(Tag.slug)
        ).all()
        deliveries = list(
            session.scalars(
                select(Delivery)
                .where(Delivery.subscriber_id == subscriber.id)
                .order_by(Delivery.created_at.desc(), Delivery.id.desc())
                .limit(DELIVERIES_SHOWN)
            )
        )
        return page(
            "subscriber.html",
            staff,
            "subscribers",
            reader=subscriber,
            weekday=WEEKDAYS[subscriber.send_weekday].capitalize(),
            follows=follows,
            deliveries=deliveries,
            suppressed=suppression.find(session, subscriber.email),
            notice=READER_NOTICES.get(notice),
        )


def _actor(session: Session, staff: Staff) -> StaffUser | None:
    return session.get(StaffUser, staff.user_id)


@router.post("/subscribers/{subscriber_id}/suppress")
def suppress(request: Request, subscriber_id: int, admin: AdminDep, _csrf: CsrfDep) -> Response:
    """An admin's suppression: no mail of any kind until an admin lifts it."""
    with session_scope() as session:
        subscriber = _reader(session, subscriber_id)
        row = suppression.suppress(
            session, subscriber.email, SuppressionReason.MANUAL, f"suppressed by {admin.email}"
        )
        services.audit(
            session,
            "subscriber_suppressed",
            actor=_actor(session, admin),
            target=subscriber.email,
            detail={"reason": row.reason.value},
            ip=request_ip(request),
        )
    return see_other(f"/admin/subscribers/{subscriber_id}?notice=suppressed")


@router.post("/subscribers/{subscriber_id}/lift")
def lift(request: Request, subscriber_id: int, admin: AdminDep, _csrf: CsrfDep) -> Response:
    with session_scope() as session:
        subscriber = _reader(session, subscriber_id)
        if suppression.find(session, subscriber.email) is None:
            raise InvalidInput(f"{subscriber.email} is not suppressed")
        row = suppression.lift(session, subscriber.email, by=admin.email)
        services.audit(
            session,
            "suppression_lifted",
            actor=_actor(session, admin),
            target=subscriber.email,
            detail={"reason": row.reason.value},
            ip=request_ip(request),
        )
    return see_other(f"/admin/subscribers/{subscriber_id}?notice=lifted")


@router.get("/subscribers/{subscriber_id}/delete")
def confirm_delete(staff: AdminDep, subscriber_id: int) -> HTMLResponse:
    with session_scope() as session:
        subscriber = _reader(session, subscriber_id)
        deliveries = session.scalar(
            select(Delivery.id).where(Delivery.subscriber_id == subscriber.id).limit(1)
        )
        return page(
            "subscriber_delete.html",
            staff,
            "subscribers",
            reader=subscriber,
            has_deliveries=deliveries is not None,
        )


@router.post("/subscribers/{subscriber_id}/delete")
def delete(request: Request, subscriber_id: int, admin: AdminDep, _csrf: CsrfDep) -> Response:
    """Delete the reader row with their name, address, preferences and ledger rows.

    The audit entry names the reader by number only, so the log keeps no personal
    data of someone who asked to be forgotten. A suppression of the address stays:
    it is what keeps them from being mailed again.
    """
    with session_scope() as session:
        subscriber = _reader(session, subscriber_id)
        status = subscriber.status.value
        session.delete(subscriber)
        session.flush()
        services.audit(
            session,
            "subscriber_deleted",
            actor=_actor(session, admin),
            target=f"subscriber #{subscriber_id}",
            detail={"status": status},
            ip=request_ip(request),
        )
    return see_other("/admin/subscribers?notice=deleted")
