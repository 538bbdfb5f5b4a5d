"""API tokens for admins: created with the secret shown once, and revoked.

The secret is in one place only: the body of the answer to the POST that created
it. Not in a URL, a redirect, the audit log or the database (which keeps a hash),
and that answer is `no-store`, so no cache, history entry or reload shows it again.
This is the one console form answered without Post/Redirect/Get: a redirect would
have to carry the secret somewhere to show it. So that a reload (which the browser
offers to re-send) cannot make a second token, each form carries a one-time id kept
in the audit entry of the token it made; the same id again is refused.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import apitokens
from newsletter.console import services
from newsletter.console.models import AuditEntry, StaffRole, StaffUser
from newsletter.console.security import AdminDep, ConsoleRoute, CsrfDep, Staff, request_ip
from newsletter.console.views import page, see_other
from newsletter.db import session_scope, utcnow
from newsletter.errors import InvalidInput

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)

# How long a sent form's one-time id is remembered (a reload comes within minutes).
FORM_ID_DAYS = dt.timedelta(days=1)
TOKEN_NOTICES = {"revoked": "The token is revoked: the API refuses it from now on."}


def _tokens_page(
    staff: Staff,
    status_code: int = 200,
    notice: str | None = None,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    with session_scope() as session:
        return page(
            "tokens.html",
            staff,
            "tokens",
            status_code=status_code,
            tokens=apitokens.list_tokens(session),
            roles=[r.value for r in StaffRole],
            notice=TOKEN_NOTICES.get(notice or ""),
            error=error,
            form=form or {"name": "", "role": StaffRole.EDITOR.value},
            form_id=secrets.token_urlsafe(16),
        )


@router.get("/tokens")
def token_list(staff: AdminDep, notice: Annotated[str, Query(max_length=40)] = "") -> HTMLResponse:
    return _tokens_page(staff, notice=notice)


@router.post("/tokens")
def create(
    request: Request,
    admin: AdminDep,
    _csrf: CsrfDep,
    name: Annotated[str, Form(max_length=1000)] = "",
    role: Annotated[str, Form(max_length=20)] = "",
    form_id: Annotated[str, Form(max_length=64)] = "",
) -> HTMLResponse:
    """A new token, its secret shown on this answer and never again."""
    try:
        with session_scope() as session:
            made = _made_by_form(session, form_id)
            if made is not None:
                return _tokens_page(
                    admin,
                    status_code=409,
                    error=f"This form was already sent and made {made}; its secret was shown "
                    "once and cannot be shown again. If it was lost, revoke that token and "
                    "create another.",
                )
            plain, row = apitokens.create_token(session, name, role)
            services.audit(
                session,
                "token_created",
                actor=session.get(StaffUser, admin.user_id),
                target=f"token #{row.id}",
                # The prefix names the token as the API's audit entries do; it is not
                # enough of the secret to use it.
                detail={
                    "name": row.name,
                    "role": row.role,
                    "prefix": row.prefix,
                    "form_id": form_id,
                },
                ip=request_ip(request),
            )
            token = {"id": row.id, "name": row.name, "role": row.role, "prefix": row.prefix}
    except InvalidInput as exc:
        form = {"name": name[:200], "role": role[:20]}
        return _tokens_page(admin, status_code=400, error=str(exc), form=form)
    response = page("token_created.html", admin, "tokens", token=token, secret=plain)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _made_by_form(session: Session, form_id: str) -> str | None:
    """The token an earlier sending of this form made ("token #N"), if any."""
    if not form_id:
        return None
    since = utcnow() - FORM_ID_DAYS
    return session.scalar(
        select(AuditEntry.target).where(
            AuditEntry.action == "token_created",
            AuditEntry.created_at >= since,
            AuditEntry.detail["form_id"].as_string() == form_id,
        )
    )


@router.post("/tokens/{token_id}/revoke")
def revoke(request: Request, token_id: int, admin: AdminDep, _csrf: CsrfDep) -> Response:
    with session_scope() as session:
        row = apitokens.revoke_token(session, token_id)
        services.audit(
            session,
            "token_revoked",
            actor=session.get(StaffUser, admin.user_id),
            target=f"token #{row.id}",
            detail={"name": row.name, "role": row.role, "prefix": row.prefix},
            ip=request_ip(request),
        )
    return see_other("/admin/tokens?notice=revoked")
