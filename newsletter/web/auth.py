"""The bearer-token guard every `/api/` route depends on."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from newsletter.apitokens import verify_token
from newsletter.models import ApiToken
from newsletter.web.deps import SessionDep

_bearer = HTTPBearer(auto_error=False, description="A token from `newsletter tokens create`.")


def require_token(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiToken:
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

# Documented on every protected route so the OpenAPI schema lists the 401.
AUTH_RESPONSES: dict[int | str, dict[str, str]] = {
    401: {"description": "Missing, invalid or revoked bearer token"},
}
