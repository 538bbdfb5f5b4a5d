"""Who is signed in to the console, what their role lets them do, and CSRF checks.

Each is a FastAPI dependency with a typed alias (`EditorDep`, `AdminDep`, `CsrfDep`),
so a route states its rule in its signature and the server checks it on every request.
Refusals are exceptions that `ConsoleRoute` turns into pages: a redirect to the
sign-in form, or a 403 page; never a traceback.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from newsletter.config import get_settings
from newsletter.console import services
from newsletter.console.models import StaffRole
from newsletter.db import session_scope
from newsletter.errors import InvalidInput, NotFound
from newsletter.web.deps import client_ip
from newsletter.web.rendering import render_page

log = logging.getLogger(__name__)

SESSION_COOKIE = "nl_console"
# Before sign-in there is no session to hold a CSRF token: the form's token is checked
# against this cookie instead (double submit), so no other site can post the form.
LOGIN_CSRF_COOKIE = "nl_console_login"
COOKIE_PATH = "/admin"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
LOGIN_PATH = "/admin/login"


class LoginRequired(Exception):
    """No live session: the visitor is sent to the sign-in form."""


class Forbidden(Exception):
    """Signed in, but the role (or a missing or wrong CSRF token) does not allow this."""


@dataclass(frozen=True)
class Staff:
    """The signed-in person for one request, read fresh from the database each time,
    so a removed account or a changed role takes effect at once."""

    user_id: int
    email: str
    role: StaffRole
    csrf_token: str

    @property
    def is_admin(self) -> bool:
        return self.role is StaffRole.ADMIN


def request_ip(request: Request) -> str:
    return client_ip(request)[:64]


def cookie_secure() -> bool:
    """Cookies are Secure whenever the console is served over https."""
    return get_settings().base_url.lower().startswith("https://")


def set_cookie(response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=cookie_secure(),
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(
        name, path=COOKIE_PATH, httponly=True, samesite="lax", secure=cookie_secure()
    )


def same_token(given: str | None, expected: str | None) -> bool:
    if not given or not expected:
        return False
    return secrets.compare_digest(given.encode(), expected.encode())


def current_staff(request: Request) -> Staff | None:
    """The signed-in person, or None; renews the session's idle timer."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    with session_scope() as session:
        row = services.load_session(session, token)
        if row is None:
            return None
        return Staff(row.user.id, row.user.email, row.user.role, row.csrf_token)


def require_staff(request: Request) -> Staff:
    staff = current_staff(request)
    if staff is None:
        raise LoginRequired
    return staff


EditorDep = Annotated[Staff, Depends(require_staff)]
"""Anyone signed in: editors and admins."""


def require_admin(staff: EditorDep) -> Staff:
    if not staff.is_admin:
        raise Forbidden("This page is for admins only.")
    return staff


AdminDep = Annotated[Staff, Depends(require_admin)]


async def _presented_token(request: Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


async def require_csrf(request: Request, staff: EditorDep) -> Staff:
    """Every state-changing request carries the session's token, as a form field or an
    X-CSRF-Token header; without it, or with a wrong one, nothing is done."""
    if not same_token(await _presented_token(request), staff.csrf_token):
        raise Forbidden("The form was out of date or not sent from this console. Reload and retry.")
    return staff


CsrfDep = Annotated[Staff, Depends(require_csrf)]


async def check_login_csrf(request: Request) -> None:
    if not same_token(await _presented_token(request), request.cookies.get(LOGIN_CSRF_COOKIE)):
        raise Forbidden("The sign-in form was out of date. Reload the page and sign in again.")


def safe_next(value: str | None) -> str:
    """Where to go after sign-in: only a path inside the console, never another site."""
    if (
        value
        and value.startswith("/admin/")
        and not value.startswith("/admin//")
        and "\\" not in value
        and value.isprintable()
        and len(value) < 500
    ):
        return value
    return "/admin/"


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    suffix = "" if target in ("/admin", "/admin/") else "?next=" + quote(target, safe="/")
    return RedirectResponse(LOGIN_PATH + suffix, status_code=303)


def error_page(status_code: int, title: str, message: str) -> HTMLResponse:
    return render_page(
        "web/admin/error.html", status_code=status_code, title=title, message=message
    )


class ConsoleRoute(APIRoute):
    """Console routes: refusals become pages, and an unexpected error a plain 500 page
    (logged with its traceback, never shown)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                return login_redirect(request)
            except Forbidden as exc:
                return error_page(403, "Not allowed", str(exc))
            except InvalidInput as exc:
                return error_page(400, "Not valid", str(exc))
            except NotFound as exc:
                return error_page(404, "Not found", str(exc))
            except (HTTPException, RequestValidationError):
                raise  # answered by the app's own handlers, without a traceback
            except Exception:
                log.exception("console error on %s %s", request.method, request.url.path)
                return error_page(500, "Something went wrong", "The error was logged.")

        return console_handler
