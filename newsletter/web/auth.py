"""The bearer-token guards of the `/api/` routes, one per role.

A token carries the role of a console account: an editor token reaches what an
editor reaches in the console (posts, tags, previews, the archive, statistics), an
admin token everything (readers, suppressions, subscriber lists too). The role is
checked on the server for every request; a token of the wrong role gets a 403.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from newsletter.apitokens import verify_token
from newsletter.console.models import StaffRole
from newsletter.models import ApiToken
from newsletter.web.deps import SessionDep

_bearer = HTTPBearer(auto_error=False, description="A token from `newsletter tokens create`.")


def require_token(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiToken:
    """Any live token, editor or admin."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = verify_token(session, credentials.credentials)
    if token is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid or revoked token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return token


TokenDep = Annotated[ApiToken, Depends(require_token)]
EditorTokenDep = TokenDep
"""Editors and admins: posts, tags, digests, statistics. Every role reaches what an
editor does, so this is any live token."""


def is_admin(token: ApiToken) -> bool:
    # Anything but an exact "admin" (an unknown or misspelt role) is refused admin
    # routes: a role the code does not know grants nothing.
    return token.role == StaffRole.ADMIN.value


def require_admin_token(token: TokenDep) -> ApiToken:
    if not is_admin(token):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"this route needs an admin token; token {token.prefix} has the role {token.role}",
        )
    return token


AdminTokenDep = Annotated[ApiToken, Depends(require_admin_token)]
"""Admins only: readers, suppressions, subscriber lists."""


def actor(token: ApiToken) -> str:
    """Who did it, as the audit log and the suppression history name an API client."""
    return f"api token {token.prefix}"
