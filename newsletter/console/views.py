"""The console's pages under `/admin/`: sign-in, the dashboard, posts, staff, audit log.

Every route names its rule in its signature (`EditorDep`, `AdminDep`, `CsrfDep`);
every form carries the CSRF token; every action is written to the audit log.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from newsletter.console import services
from newsletter.console.models import StaffRole, StaffUser
from newsletter.console.security import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    AdminDep,
    ConsoleRoute,
    CsrfDep,
    Staff,
    check_login_csrf,
    clear_cookie,
    current_staff,
    request_ip,
    safe_next,
    set_cookie,
)
from newsletter.db import session_scope
from newsletter.errors import InvalidInput, NotFound
from newsletter.web.rendering import render_page

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)

WRONG_LOGIN = "Wrong email or password."
LOCKED_LOGIN = "Too many failed sign-ins. Wait {minutes} minutes, then try again."
AUDIT_PAGE_SIZE = 50


@dataclass(frozen=True)
class NavItem:
    key: str
    label: str
    href: str
    admin_only: bool = False


NAV = (
    NavItem("dashboard", "Dashboard", "/admin/"),
    NavItem("posts", "Posts", "/admin/posts"),
    NavItem("upcoming", "Upcoming", "/admin/upcoming"),
    NavItem("preview", "Preview", "/admin/preview"),
    NavItem("archive", "Archive", "/admin/archive"),
    NavItem("tags", "Tags", "/admin/tags"),
    NavItem("subscribers", "Subscribers", "/admin/subscribers", admin_only=True),
    NavItem("suppressions", "Suppressions", "/admin/suppressions", admin_only=True),
    NavItem("feeds", "Feeds", "/admin/feeds", admin_only=True),
    NavItem("tokens", "API tokens", "/admin/tokens", admin_only=True),
    NavItem("staff", "Staff", "/admin/staff", admin_only=True),
    NavItem("audit", "Audit log", "/admin/audit", admin_only=True),
)


def page(
    template: str, staff: Staff, active: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """A console page: the navigation this role may use, and the session's CSRF token."""
    nav = [item for item in NAV if staff.is_admin or not item.admin_only]
    return render_page(
        f"web/admin/{template}",
        status_code=status_code,
        staff=staff,
        nav=nav,
        active=active,
        csrf_token=staff.csrf_token,
        **context,
    )


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def list_url(path: str, filters: dict[str, str], after: str | None = None) -> str:
    """A list page with these filters, from the keyset cursor `after` on: the next
    page, the first page and a confirmed action all keep the search."""
    params = {**filters, **({"after": after} if after else {})}
    return path + ("?" + urlencode(params) if params else "")


# -- sign-in and sign-out ---------------------------------------------------------


def _login_form(
    token: str, next_url: str, email: str = "", error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    response = render_page(
        "web/admin/login.html",
        status_code=status_code,
        csrf_token=token,
        next_url=next_url,
        email=email,
        error=error,
    )
    set_cookie(response, LOGIN_CSRF_COOKIE, token)
    return response


def _login_token(request: Request) -> str:
    """The sign-in form's CSRF token: the browser's if it has a sane one, else a new one."""
    token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return token if 20 <= len(token) <= 100 and token.isascii() else secrets.token_urlsafe(32)


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    if current_staff(request) is not None:
        return see_other(safe_next(next))
    return _login_form(_login_token(request), safe_next(next))


@dataclass(frozen=True)
class SignIn:
    outcome: services.LoginOutcome
    failures: int
    token: str | None = None


def _sign_in(email: str, password: str, ip: str, old_token: str | None) -> SignIn:
    """Check the password, audit the attempt and, if it is right, start a new session."""
    with session_scope() as session:
        result = services.authenticate(session, email, password, ip)
        if result.outcome is services.LoginOutcome.OK and result.user is not None:
            token = services.start_session(session, result.user, ip, old_token)
            services.audit(session, "login", actor=result.user, target=result.email, ip=ip)
            return SignIn(result.outcome, 0, token)
        if result.outcome is services.LoginOutcome.WRONG or result.lock_started:
            services.audit(
                session,
                "login_failed",
                actor_email=result.email,
                target=result.email,
                detail={"failures": result.failures},
                ip=ip,
            )
        if result.lock_started:
            minutes = int(services.POLICY.lock.total_seconds() // 60)
            services.audit(
                session,
                "lockout",
                actor_email=result.email,
                target=result.email,
                detail={"failures": result.failures, "minutes": minutes},
                ip=ip,
            )
        return SignIn(result.outcome, result.failures)


@router.post("/login")
async def login(
    request: Request,
    email: Annotated[str, Form(max_length=1000)] = "",
    password: Annotated[str, Form(max_length=4096)] = "",
    next: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    await check_login_csrf(request)
    ip = request_ip(request)
    old_token = request.cookies.get(SESSION_COOKIE)
    outcome = await run_in_threadpool(_sign_in, email, password, ip, old_token)
    if outcome.token is not None:
        response = see_other(safe_next(next))
        set_cookie(response, SESSION_COOKIE, outcome.token)
        return response
    # The answer to a failure waits longer the more failures there were: a person
    # who mistyped hardly notices, a script guessing passwords crawls.
    await asyncio.sleep(services.POLICY.delay(outcome.failures))
    token = _login_token(request)
    shown = email[:320]
    if outcome.outcome is services.LoginOutcome.LOCKED:
        minutes = int(services.POLICY.lock.total_seconds() // 60)
        message = LOCKED_LOGIN.format(minutes=minutes)
        return _login_form(token, safe_next(next), shown, message, status_code=429)
    return _login_form(token, safe_next(next), shown, WRONG_LOGIN, status_code=401)


@router.post("/logout")
def logout(request: Request, staff: CsrfDep) -> Response:
    """End the session on the server, not just in the browser."""
    ip = request_ip(request)
    with session_scope() as session:
        services.end_session(session, request.cookies.get(SESSION_COOKIE, ""))
        services.audit(session, "logout", actor=session.get(StaffUser, staff.user_id), ip=ip)
    response = see_other("/admin/login")
    clear_cookie(response, SESSION_COOKIE)
    return response


# -- pages ------------------------------------------------------------------------


STAFF_NOTICES = {"created": "Account created.", "removed": "Account removed."}


def _staff_page(
    staff: Staff,
    status_code: int = 200,
    notice: str | None = None,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    with session_scope() as session:
        users = services.list_users(session)
        return page(
            "staff.html",
            staff,
            "staff",
            status_code=status_code,
            users=users,
            roles=[r.value for r in StaffRole],
            notice=STAFF_NOTICES.get(notice or ""),
            error=error,
            form=form or {"email": "", "role": StaffRole.EDITOR.value},
            min_password=services.MIN_PASSWORD_LENGTH,
        )


@router.get("/staff")
def staff_list(staff: AdminDep, notice: str | None = None) -> HTMLResponse:
    return _staff_page(staff, notice=notice)


@router.post("/staff")
def staff_create(
    request: Request,
    admin: AdminDep,
    _csrf: CsrfDep,
    email: Annotated[str, Form(max_length=1000)] = "",
    role: Annotated[str, Form(max_length=20)] = "",
    password: Annotated[str, Form(max_length=4096)] = "",
) -> Response:
    ip = request_ip(request)
    try:
        with session_scope() as session:
            user = services.create_user(session, email, role, password)
            services.audit(
                session,
                "staff_created",
                actor=session.get(StaffUser, admin.user_id),
                target=user.email,
                detail={"role": user.role.value},
                ip=ip,
            )
    except InvalidInput as exc:
        form = {"email": email[:320], "role": role[:20]}
        return _staff_page(admin, status_code=400, error=str(exc), form=form)
    return see_other("/admin/staff?notice=created")


@router.post("/staff/{user_id}/remove")
def staff_remove(request: Request, user_id: int, admin: AdminDep, _csrf: CsrfDep) -> Response:
    ip = request_ip(request)
    with session_scope() as session:
        user = session.get(StaffUser, user_id)
        if user is None:
            raise NotFound("no such staff account")
        if user.id == admin.user_id:
            raise InvalidInput("you cannot remove your own account")
        if user.role is StaffRole.ADMIN and services.count_admins(session) <= 1:
            raise InvalidInput("the last admin cannot be removed")
        email, role = user.email, user.role.value
        services.remove_user(session, user)
        services.audit(
            session,
            "staff_removed",
            actor=session.get(StaffUser, admin.user_id),
            target=email,
            detail={"role": role},
            ip=ip,
        )
    return see_other("/admin/staff?notice=removed")


@router.get("/audit")
def audit_log(
    staff: AdminDep, before: Annotated[int | None, Query(ge=1, le=2**62)] = None
) -> HTMLResponse:
    with session_scope() as session:
        result = services.audit_page(session, before, AUDIT_PAGE_SIZE)
        return page(
            "audit.html",
            staff,
            "audit",
            entries=result.entries,
            next_before=result.next_before,
            first_page=before is None,
        )
