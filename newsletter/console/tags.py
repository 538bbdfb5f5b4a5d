"""Tags for editors and admins: rename, merge, describe, list on the sign-up page.

Editors see the tags and their counts; only admins change them. The work itself is
in `newsletter.tags`, shared with the command line.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import tags as tag_service
from newsletter.console import services
from newsletter.console.models import StaffUser
from newsletter.console.security import (
    AdminDep,
    ConsoleRoute,
    CsrfDep,
    EditorDep,
    Staff,
    request_ip,
)
from newsletter.console.views import page, see_other
from newsletter.db import session_scope
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import Tag

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)

TAG_NOTICES = {
    "renamed": "The tag is renamed; its posts and followers stay with it.",
    "saved": "The description and the sign-up setting are saved.",
    "merged": "Merged: the posts and followers of the other tag are now on this one.",
}


@router.get("/tags")
def tag_list(staff: EditorDep) -> HTMLResponse:
    with session_scope() as session:
        return page("tags.html", staff, "tags", rows=tag_service.tag_summaries(session))


def _tag(session: Session, tag_id: int) -> Tag:
    tag = session.get(Tag, tag_id)
    if tag is None:
        raise NotFound("no such tag (merged, or never existed)")
    return tag


def _tag_page(
    session: Session,
    staff: Staff,
    tag: Tag,
    status_code: int = 200,
    notice: str | None = None,
    error: str | None = None,
    name: str | None = None,
) -> HTMLResponse:
    others = session.scalars(select(Tag).where(Tag.id != tag.id).order_by(Tag.slug))
    return page(
        "tag.html",
        staff,
        "tags",
        status_code=status_code,
        row=tag_service.tag_summary(session, tag),
        others=list(others),
        feeds=tag_service.feeds_adding(session, tag),
        notice=TAG_NOTICES.get(notice or ""),
        error=error,
        name=tag.name if name is None else name,
    )


@router.get("/tags/{tag_id}")
def tag_page(
    staff: EditorDep, tag_id: int, notice: Annotated[str, Query(max_length=40)] = ""
) -> HTMLResponse:
    with session_scope() as session:
        return _tag_page(session, staff, _tag(session, tag_id), notice=notice)


@router.post("/tags/{tag_id}/rename")
def rename(
    request: Request,
    tag_id: int,
    admin: AdminDep,
    _csrf: CsrfDep,
    name: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """A new name, and the slug that goes with it; a slug another tag has is refused
    with the form shown again, and nothing changes."""
    try:
        with session_scope() as session:
            tag = _tag(session, tag_id)
            old_slug = tag.slug
            tag_service.rename_tag(session, tag, name)
            services.audit(
                session,
                "tag_renamed",
                actor=session.get(StaffUser, admin.user_id),
                target=tag.slug,
                detail={"from": old_slug, "to": tag.slug, "name": tag.name},
                ip=request_ip(request),
            )
    except InvalidInput as exc:
        with session_scope() as session:
            tag = _tag(session, tag_id)
            return _tag_page(session, admin, tag, 400, error=str(exc), name=name[:200])
    return see_other(f"/admin/tags/{tag_id}?notice=renamed")


@router.post("/tags/{tag_id}/details")
def details(
    request: Request,
    tag_id: int,
    admin: AdminDep,
    _csrf: CsrfDep,
    description: Annotated[str, Form(max_length=5000)] = "",
    listed: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """The description and the "shown on the sign-up page" switch (an unticked box
    sends nothing, so absent means off)."""
    with session_scope() as session:
        tag = _tag(session, tag_id)
        tag_service.describe_tag(session, tag, description, listed == "yes")
        services.audit(
            session,
            "tag_updated",
            actor=session.get(StaffUser, admin.user_id),
            target=tag.slug,
            detail={"listed": tag.listed, "description": tag.description},
            ip=request_ip(request),
        )
    return see_other(f"/admin/tags/{tag_id}?notice=saved")


@router.post("/tags/{tag_id}/merge")
def merge(
    request: Request,
    tag_id: int,
    admin: AdminDep,
    _csrf: CsrfDep,
    into: Annotated[int | None, Form()] = None,
    confirm: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """Merge this tag into another: its posts and followers move there, it is deleted."""
    with session_scope() as session:
        source = _tag(session, tag_id)
        if into is None:
            raise InvalidInput("choose the tag to merge into")
        target = _tag(session, into)
        if confirm != "yes":
            raise InvalidInput(
                f"tick the box to confirm: {source.name!r} is deleted by the merge, "
                "which cannot be undone"
            )
        report = tag_service.merge_tags(session, source, target)
        services.audit(
            session,
            "tag_merged",
            actor=session.get(StaffUser, admin.user_id),
            target=report.target,
            detail={
                "from": report.source,
                "posts_moved": report.posts_moved,
                "followers_moved": report.followers_moved,
                "followers_both": report.followers_both,
            },
            ip=request_ip(request),
        )
        target_id = target.id
    return see_other(f"/admin/tags/{target_id}?notice=merged")
