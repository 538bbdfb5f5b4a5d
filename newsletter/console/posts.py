"""Posts for editors: the recent list, hold and release, corrections before sending,
and the upcoming sends.

The work is done by `newsletter.posts` (hold, release, correct: the same edit path as
the API and feeds) and `newsletter.upcoming`; these routes check the role and the
CSRF token, write the audit log and redirect after each change (Post/Redirect/Get).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from newsletter.console import services
from newsletter.console.models import StaffUser
from newsletter.console.security import ConsoleRoute, CsrfDep, EditorDep, Staff, request_ip
from newsletter.console.views import page, see_other
from newsletter.db import session_scope, utcnow
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import Post
from newsletter.posts import (
    SUMMARY_LENGTH,
    TITLE_LENGTH,
    correct_post,
    hold_post,
    post_reach,
    recent_posts,
    release_post,
)
from newsletter.upcoming import upcoming_sends

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)

NOTICES = {
    "held": "The post is held: no digest will carry it until it is released.",
    "released": (
        "The post is released: its immediate readers are being mailed now, daily and "
        "weekly readers get it in their next digest."
    ),
    "corrected": "The correction is saved: digests rendered from now on carry it.",
    "unchanged": "Nothing was changed.",
}
# Form fields are read up to this size; the rules in `correct_post` refuse what is
# longer than a title or summary may be, with a message on the page.
FORM_LIMIT = 10_000
Notice = Annotated[str, Query(max_length=20)]


def _post(session: Session, post_id: int) -> Post:
    post = session.get(Post, post_id)
    if post is None:
        raise NotFound("no such post")
    return post


def _back(post_id: int, back: str, notice: str) -> Response:
    """Back to the page the button was on: the list or the post's own page."""
    if back == "list":
        return see_other(f"/admin/posts?notice={notice}")
    return see_other(f"/admin/posts/{post_id}?notice={notice}")


@router.get("/posts")
def posts(staff: EditorDep, notice: Notice = "") -> HTMLResponse:
    with session_scope() as session:
        rows = recent_posts(session, 50)
        return page("posts.html", staff, "posts", posts=rows, notice=NOTICES.get(notice))


def _post_page(
    staff: Staff,
    post_id: int,
    status_code: int = 200,
    notice: str | None = None,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    with session_scope() as session:
        post = _post(session, post_id)
        return page(
            "post.html",
            staff,
            "posts",
            status_code=status_code,
            post=post,
            reach=post_reach(session, post.id),
            form=form or {"title": post.title, "summary": post.summary},
            title_length=TITLE_LENGTH,
            summary_length=SUMMARY_LENGTH,
            notice=notice,
            error=error,
        )


@router.get("/posts/{post_id}")
def post_page(staff: EditorDep, post_id: int, notice: Notice = "") -> HTMLResponse:
    return _post_page(staff, post_id, notice=NOTICES.get(notice))


@router.post("/posts/{post_id}")
def correct(
    request: Request,
    post_id: int,
    staff: EditorDep,
    _csrf: CsrfDep,
    title: Annotated[str, Form(max_length=FORM_LIMIT)] = "",
    summary: Annotated[str, Form(max_length=FORM_LIMIT)] = "",
) -> Response:
    """Correct the title and summary; bad input re-renders the form (400), unchanged."""
    try:
        with session_scope() as session:
            post = _post(session, post_id)
            before = {"title": post.title, "summary": post.summary}
            changed = correct_post(session, post, title, summary)
            after = {"title": post.title, "summary": post.summary}
            if changed:
                services.audit(
                    session,
                    "post_corrected",
                    actor=session.get(StaffUser, staff.user_id),
                    target=f"post #{post.id}",
                    detail={"before": before, "after": after},
                    ip=request_ip(request),
                )
    except InvalidInput as exc:
        form = {"title": title, "summary": summary}
        return _post_page(staff, post_id, status_code=400, error=str(exc), form=form)
    return _back(post_id, "post", "corrected" if changed else "unchanged")


BackField = Annotated[str, Form(max_length=10)]


@router.post("/posts/{post_id}/hold")
def hold(
    request: Request, post_id: int, staff: EditorDep, _csrf: CsrfDep, back: BackField = ""
) -> Response:
    return _hold_or_release(request, staff, post_id, back, hold=True)


@router.post("/posts/{post_id}/release")
def release(
    request: Request, post_id: int, staff: EditorDep, _csrf: CsrfDep, back: BackField = ""
) -> Response:
    return _hold_or_release(request, staff, post_id, back, hold=False)


def _hold_or_release(
    request: Request, staff: Staff, post_id: int, back: str, *, hold: bool
) -> Response:
    """Hold or release the post; pressing a button twice changes and logs nothing."""
    with session_scope() as session:
        post = _post(session, post_id)
        held_by = post.held_by
        changed = hold_post(post, staff.email, utcnow()) if hold else release_post(session, post)
        if changed:
            services.audit(
                session,
                "post_held" if hold else "post_released",
                actor=session.get(StaffUser, staff.user_id),
                target=f"post #{post.id}",
                detail={"title": post.title, **({} if hold else {"held_by": held_by})},
                ip=request_ip(request),
            )
    return _back(post_id, back, ("held" if hold else "released") if changed else "unchanged")


@router.get("/upcoming")
def upcoming(staff: EditorDep) -> HTMLResponse:
    with session_scope() as session:
        result = upcoming_sends(session, utcnow())
        return page("upcoming.html", staff, "upcoming", upcoming=result)
