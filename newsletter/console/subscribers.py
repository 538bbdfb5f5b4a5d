"""The console's reader pages, for admins: find readers, see and edit one reader,
their deliveries and suppression history; suppress, lift and delete.

The list is the shared search (`subscribers.search`), paged by keyset; edits and
deletes go through `subscribers.services`, as the CLI's and the API's do. Every
action is a CSRF-checked POST written to the audit log, which names a reader by
number, never by address or name.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.bounces import records as bounce_records
from newsletter.console import services
from newsletter.console.models import StaffUser
from newsletter.console.security import AdminDep, ConsoleRoute, CsrfDep, Staff, request_ip
from newsletter.console.views import list_url, page, see_other
from newsletter.db import session_scope
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import Cadence, Delivery, Tag
from newsletter.text import one_line
from subscribers import suppression
from subscribers.cadence import WEEKDAYS, zone_names
from subscribers.models import Subscriber, SubscriberStatus, SuppressionReason
from subscribers.search import PAGE_SIZE, search_subscribers
from subscribers.services import (
    FieldErrors,
    SubscriberChanges,
    audit_detail,
    editable_values,
    followed_tags,
    forget_subscriber,
    last_deliveries,
    update_subscriber,
)

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)

LIST = "/admin/subscribers"
DELIVERIES_SHOWN = 50
# More tag boxes than any form has: a crafted post is cut short, not parsed whole.
MAX_TAGS_POSTED = 1000
READER_NOTICES = {
    "suppressed": "The address is suppressed: no mail goes to it until the suppression is lifted.",
    "lifted": "The suppression is lifted.",
    "saved": "Changes saved.",
    "unchanged": "Nothing was changed.",
}
LIST_NOTICES = {"deleted": "The reader and their personal data are deleted."}

Filter = Annotated[str, Query(max_length=320)]


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
            next_url=list_url(LIST, active, result.next_after) if result.next_after else None,
            first_url=None if not after else list_url(LIST, active),
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


def _target(subscriber_id: int) -> str:
    """How the audit log names a reader: by number, so it holds no personal data."""
    return f"subscriber #{subscriber_id}"


def _actor(session: Session, staff: Staff) -> StaffUser | None:
    return session.get(StaffUser, staff.user_id)


@router.get("/subscribers/{subscriber_id:int}")
def subscriber_page(
    staff: AdminDep, subscriber_id: int, notice: Annotated[str, Query(max_length=40)] = ""
) -> HTMLResponse:
    with session_scope() as session:
        subscriber = _reader(session, subscriber_id)
        follows = followed_tags(session, subscriber)
        deliveries = [
            (d.delivery, d.cadence) for d in last_deliveries(session, subscriber, DELIVERIES_SHOWN)
        ]
        return page(
            "subscriber.html",
            staff,
            "subscribers",
            reader=subscriber,
            weekday=WEEKDAYS[subscriber.send_weekday].capitalize(),
            follows=follows,
            deliveries=deliveries,
            suppressed=suppression.find(session, subscriber.email),
            history=suppression.history(session, subscriber.email),
            bounces=bounce_records.for_reader(session, subscriber.id),
            notice=READER_NOTICES.get(notice),
        )


# -- edit -------------------------------------------------------------------------


def _form_of(subscriber: Subscriber) -> dict[str, Any]:
    """The form filled in with the reader's fields, as the browser would post them."""
    return {
        field: str(value) if isinstance(value, int) else value
        for field, value in editable_values(subscriber).items()
    }


def _edit_page(
    staff: Staff,
    session: Session,
    subscriber: Subscriber,
    form: dict[str, Any],
    errors: dict[str, str] | None = None,
) -> HTMLResponse:
    # Pending is offered only to a reader who is pending: nobody else can become it.
    statuses = [
        s.value
        for s in SubscriberStatus
        if s is not SubscriberStatus.PENDING or subscriber.status is SubscriberStatus.PENDING
    ]
    return page(
        "subscriber_edit.html",
        staff,
        "subscribers",
        status_code=400 if errors else 200,
        reader=subscriber,
        form=form,
        errors=errors or {},
        all_tags=list(session.scalars(select(Tag).order_by(Tag.slug))),
        statuses=statuses,
        cadences=[c.value for c in Cadence],
        zones=sorted(zone_names()),
        weekdays=[day.capitalize() for day in WEEKDAYS],
    )


@router.get("/subscribers/{subscriber_id:int}/edit")
def edit_form(staff: AdminDep, subscriber_id: int) -> HTMLResponse:
    with session_scope() as session:
        subscriber = _reader(session, subscriber_id)
        return _edit_page(staff, session, subscriber, _form_of(subscriber))


Field = Annotated[str, Form(max_length=1000)]


@router.post("/subscribers/{subscriber_id:int}/edit")
def edit(
    request: Request,
    subscriber_id: int,
    admin: AdminDep,
    _csrf: CsrfDep,
    email: Field = "",
    name: Field = "",
    status: Annotated[str, Form(max_length=20)] = "",
    cadence: Annotated[str, Form(max_length=20)] = "",
    timezone: Annotated[str, Form(max_length=100)] = "",
    send_hour: Annotated[str, Form(max_length=20)] = "",
    send_weekday: Annotated[str, Form(max_length=20)] = "",
    tags: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """Save the whole form; a bad field re-renders it with the message beside that
    field (400) and nothing is saved."""
    chosen = [one_line(t, 200) for t in (tags or [])[:MAX_TAGS_POSTED]]
    changes = SubscriberChanges(
        email=email,
        name=name,
        status=status,
        cadence=cadence,
        timezone=timezone,
        send_hour=send_hour,
        send_weekday=send_weekday,
        tags=chosen,
    )
    try:
        with session_scope() as session:
            subscriber = _reader(session, subscriber_id)
            changed = update_subscriber(session, subscriber, changes, actor=admin.email)
            if changed:
                services.audit(
                    session,
                    "subscriber_edited",
                    actor=_actor(session, admin),
                    target=_target(subscriber_id),
                    detail=audit_detail(changed),
                    ip=request_ip(request),
                )
    except FieldErrors as exc:
        typed = {**asdict(changes), "email": email[:320], "name": name[:200]}
        with session_scope() as session:
            subscriber = _reader(session, subscriber_id)
            return _edit_page(admin, session, subscriber, typed, exc.errors)
    notice = "saved" if changed else "unchanged"
    return see_other(f"/admin/subscribers/{subscriber_id}?notice={notice}")


# -- suppression ------------------------------------------------------------------


@router.post("/subscribers/{subscriber_id:int}/suppress")
def suppress(request: Request, subscriber_id: int, admin: AdminDep, _csrf: CsrfDep) -> Response:
    """An admin's suppression: no mail of any kind until an admin lifts it."""
    with session_scope() as session:
        subscriber = _reader(session, subscriber_id)
        row = suppression.suppress(
            session,
            subscriber.email,
            SuppressionReason.MANUAL,
            "suppressed from the reader's page in the console",
            actor=admin.email,
        )
        services.audit(
            session,
            "subscriber_suppressed",
            actor=_actor(session, admin),
            target=_target(subscriber_id),
            detail={"reason": row.reason.value},
            ip=request_ip(request),
        )
    return see_other(f"/admin/subscribers/{subscriber_id}?notice=suppressed")


@router.post("/subscribers/{subscriber_id:int}/lift")
def lift(request: Request, subscriber_id: int, admin: AdminDep, _csrf: CsrfDep) -> Response:
    with session_scope() as session:
        subscriber = _reader(session, subscriber_id)
        if suppression.find(session, subscriber.email) is None:
            raise InvalidInput("this reader's address is not suppressed")
        row = suppression.lift(session, subscriber.email, by=admin.email)
        services.audit(
            session,
            "suppression_lifted",
            actor=_actor(session, admin),
            target=_target(subscriber_id),
            detail={"reason": row.reason.value},
            ip=request_ip(request),
        )
    return see_other(f"/admin/subscribers/{subscriber_id}?notice=lifted")


# -- delete -----------------------------------------------------------------------


@router.get("/subscribers/{subscriber_id:int}/delete")
def confirm_delete(staff: AdminDep, subscriber_id: int) -> HTMLResponse:
    with session_scope() as session:
        subscriber = _reader(session, subscriber_id)
        deliveries = session.scalar(
            select(func.count()).where(Delivery.subscriber_id == subscriber.id)
        )
        return page(
            "subscriber_delete.html",
            staff,
            "subscribers",
            reader=subscriber,
            deliveries=deliveries or 0,
            suppressed=suppression.find(session, subscriber.email),
        )


@router.post("/subscribers/{subscriber_id:int}/delete")
def delete(request: Request, subscriber_id: int, admin: AdminDep, _csrf: CsrfDep) -> Response:
    """Delete the reader with their personal data (`forget_subscriber`); their
    deliveries stay as anonymous rows, so the archive's counts stay true.

    The audit entry names the reader by number only, so the log keeps no personal
    data of someone who asked to be forgotten.
    """
    with session_scope() as session:
        subscriber = _reader(session, subscriber_id)
        status = subscriber.status.value
        forget_subscriber(session, subscriber)
        services.audit(
            session,
            "subscriber_deleted",
            actor=_actor(session, admin),
            target=_target(subscriber_id),
            detail={"status": status},
            ip=request_ip(request),
        )
    return see_other("/admin/subscribers?notice=deleted")
