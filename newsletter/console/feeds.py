"""Feeds for admins: their last poll result, and a poll on demand.

"Poll now" runs the same poll as the scheduler (`newsletter.feeds.services`), for
one feed, inside the request and bounded by the fetch deadline (`feed_timeout`). A
feed that fails shows its error on the page; it never becomes a 500.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse

from newsletter.console import services
from newsletter.console.models import StaffUser
from newsletter.console.security import AdminDep, ConsoleRoute, CsrfDep, Staff, request_ip
from newsletter.console.views import page, see_other
from newsletter.db import session_scope
from newsletter.errors import InvalidInput, NotFound
from newsletter.feeds import services as feeds
from newsletter.models import Feed

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)

FEED_NOTICES = {"added": "The feed is added and its backlog imported.", "removed": "Feed removed."}
Small = Annotated[int, Query(ge=0, le=10**6)]


def _feeds_page(
    staff: Staff,
    status_code: int = 200,
    notice: str | None = None,
    polled: dict[str, object] | None = None,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    with session_scope() as session:
        return page(
            "feeds.html",
            staff,
            "feeds",
            status_code=status_code,
            feeds=feeds.list_feeds(session),
            notice=FEED_NOTICES.get(notice or ""),
            polled=polled,
            error=error,
            form=form or {"url": "", "tags": "", "interval": str(feeds.DEFAULT_INTERVAL)},
            min_interval=feeds.MIN_INTERVAL,
            max_interval=feeds.MAX_INTERVAL,
        )


@router.get("/feeds")
def feed_list(
    staff: AdminDep,
    notice: Annotated[str, Query(max_length=40)] = "",
    polled: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    outcome: Annotated[str, Query(max_length=20)] = "",
    new: Small = 0,
    backlog: Small = 0,
    updated: Small = 0,
) -> HTMLResponse:
    """The list, and after "Poll now" what that poll did (the error itself is read from
    the feed, where the poll recorded it, not from the URL)."""
    result: dict[str, object] | None = None
    if polled is not None:
        with session_scope() as session:
            feed = session.get(Feed, polled)
            if feed is not None:
                result = {
                    "url": feed.url,
                    "outcome": outcome,
                    "new": new,
                    "backlog": backlog,
                    "updated": updated,
                    "error": feed.last_error,
                    "status": feed.last_status,
                }
    return _feeds_page(staff, notice=notice, polled=result)


def _outcome(report: feeds.PollReport) -> str:
    if report.error:
        return "failed"
    return "not_modified" if report.not_modified else "fetched"


@router.post("/feeds/{feed_id}/poll")
def poll_now(request: Request, feed_id: int, admin: AdminDep, _csrf: CsrfDep) -> Response:
    """Poll this one feed now, due or not; any failure is recorded on the feed."""
    with session_scope() as session:
        if session.get(Feed, feed_id) is None:
            raise NotFound("no such feed (removed, or never existed)")
    reports = feeds.poll_many([feed_id])
    if not reports:
        raise NotFound("the feed was removed while it was polled")
    report = reports[0]
    outcome = _outcome(report)
    with session_scope() as session:
        services.audit(
            session,
            "feed_polled",
            actor=session.get(StaffUser, admin.user_id),
            target=report.url,
            detail={
                "outcome": outcome,
                "status": report.status,
                "new": len(report.new),
                "backlog": report.backlog,
                "updated": report.updated,
                "error": report.error,
            },
            ip=request_ip(request),
        )
    params = {"polled": feed_id, "outcome": outcome}
    counts = {"new": len(report.new), "backlog": report.backlog, "updated": report.updated}
    params.update({key: value for key, value in counts.items() if value})
    return see_other("/admin/feeds?" + urlencode(params))


def _interval(raw: str) -> int:
    text = raw.strip() or str(feeds.DEFAULT_INTERVAL)
    if not text.isdigit() or len(text) > 9:
        raise InvalidInput("the poll interval is a whole number of seconds")
    return int(text)


@router.post("/feeds")
def add(
    request: Request,
    admin: AdminDep,
    _csrf: CsrfDep,
    url: Annotated[str, Form(max_length=2000)] = "",
    tags: Annotated[str, Form(max_length=1000)] = "",
    interval: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Add a feed and read it at once, as `newsletter feeds add` does: its backlog is
    imported as already published (nobody is mailed), and a feed that cannot be read
    is not added."""
    form = {"url": url, "tags": tags, "interval": interval}
    try:
        with session_scope() as session:
            feed_id = feeds.add_feed(session, url.strip(), tags, _interval(interval)).id
    except InvalidInput as exc:
        return _feeds_page(admin, status_code=400, error=str(exc), form=form)
    reports = feeds.poll_many([feed_id])
    if not reports:
        raise NotFound("the feed was removed while it was read")
    report = reports[0]
    with session_scope() as session:
        if report.error:
            feeds.remove_feed(session, feed_id)
            message = f"The feed was not added: {report.error}"
        else:
            services.audit(
                session,
                "feed_added",
                actor=session.get(StaffUser, admin.user_id),
                target=report.url,
                detail={"tags": tags.strip(), "backlog": report.backlog, "new": len(report.new)},
                ip=request_ip(request),
            )
    if report.error:
        return _feeds_page(admin, status_code=400, error=message, form=form)
    return see_other("/admin/feeds?notice=added")


@router.post("/feeds/{feed_id}/remove")
def remove(request: Request, feed_id: int, admin: AdminDep, _csrf: CsrfDep) -> Response:
    """Stop polling a feed; the posts it brought stay."""
    with session_scope() as session:
        url = feeds.remove_feed(session, feed_id)
        services.audit(
            session,
            "feed_removed",
            actor=session.get(StaffUser, admin.user_id),
            target=url,
            ip=request_ip(request),
        )
    return see_other("/admin/feeds?notice=removed")
