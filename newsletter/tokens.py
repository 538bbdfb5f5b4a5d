"""Signed tokens for links in emails: they carry a random subscriber key, never an id."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any, Literal

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from newsletter.config import get_settings
from newsletter.errors import InvalidInput

# "resubscribe" is the undo link on the page a reader sees after unsubscribing;
# "form" carries a reader form with mistakes across its redirect (a cookie).
Purpose = Literal["unsubscribe", "preferences", "confirm", "resubscribe", "form"]


def serializer(purpose: Purpose) -> URLSafeTimedSerializer:
    """The signer for one purpose, built once per key (every copy signs two links)."""
    return _serializer_for(get_settings().secret_key, purpose)


@lru_cache(maxsize=16)
def _serializer_for(secret: str, purpose: Purpose) -> URLSafeTimedSerializer:
    # The purpose is the salt: a preferences token cannot be replayed as a confirmation.
    return URLSafeTimedSerializer(secret, salt=f"newsletter.{purpose}")


def make_token(purpose: Purpose, payload: str | dict[str, Any]) -> str:
    return serializer(purpose).dumps(payload)


def _load(purpose: Purpose, token: str, max_age: int | None) -> Any:
    try:
        return serializer(purpose).loads(token, max_age=max_age)
    except SignatureExpired:
        raise InvalidInput("this link has expired") from None
    except BadSignature:
        raise InvalidInput("this link is not valid") from None


def read_token(purpose: Purpose, token: str, max_age: int | None = None) -> str:
    """The subscriber key in a token; InvalidInput if it was tampered with or has expired."""
    uid = _load(purpose, token, max_age)
    if not isinstance(uid, str):
        raise InvalidInput("this link is not valid")
    return uid


def read_data(purpose: Purpose, token: str, max_age: int | None = None) -> dict[str, Any]:
    """A token's structured payload (a confirmation carries the preferences asked for)."""
    data = _load(purpose, token, max_age)
    if not isinstance(data, dict) or not isinstance(data.get("u"), str):
        raise InvalidInput("this link is not valid")
    return data


def signed_at(purpose: Purpose, token: str) -> dt.datetime:
    """When a valid token was issued (UTC, whole seconds), to tell it from later events.

    A confirmation link sent before an unsubscribe must not undo it; the signature's
    own timestamp says which came first, and it cannot be forged.
    """
    try:
        _, issued = serializer(purpose).loads(token, return_timestamp=True)
    except BadSignature:
        raise InvalidInput("this link is not valid") from None
    if not isinstance(issued, dt.datetime):
        raise InvalidInput("this link is not valid")
    return issued.astimezone(dt.UTC)


def link(purpose: Purpose, payload: str | dict[str, Any]) -> str:
    """The absolute URL of a subscriber's page for this purpose."""
    return f"{get_settings().public_base_url}/{purpose}/{make_token(purpose, payload)}"
