"""Bearer tokens for the REST API: shown once at creation, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.console.services import parse_role
from newsletter.db import utcnow
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import ApiToken
from newsletter.text import one_line

PREFIX = "nl_"


def _hash(token: str) -> str:
    # Tokens are 256 random bits, so a plain SHA-256 is enough: there is nothing
    # to brute-force that a slow hash would protect.
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str, role: str = "admin") -> tuple[str, ApiToken]:
    """A new token with a console role; the plain value is returned here and never again."""
    label = one_line(name, 200)
    if not label:
        raise InvalidInput("a token needs a name (who or what uses it)")
    token_role = parse_role(role).value
    plain = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=label, token_hash=_hash(plain), prefix=plain[:10], role=token_role)
    session.add(row)
    session.flush()
    return plain, row


def verify_token(session: Session, presented: str) -> ApiToken | None:
    """The live token matching `presented`, or None; records when it was last used."""
    row = session.scalar(
        select(ApiToken).where(
            ApiToken.token_hash == _hash(presented), ApiToken.revoked_at.is_(None)
        )
    )
    if row is not None:
        row.last_used_at = utcnow()
    return row


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"no API token #{token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
