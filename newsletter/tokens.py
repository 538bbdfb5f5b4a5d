"""Signed tokens for links in emails: they carry a random subscriber key, never an id."""

from __future__ import annotations

from typing import Literal

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from newsletter.config import get_settings
from newsletter.errors import InvalidInput

Purpose = Literal["unsubscribe", "preferences", "confirm"]


def _serializer(purpose: Purpose) -> URLSafeTimedSerializer:
    # The purpose is the salt: a preferences token cannot be replayed as a confirmation.
    return URLSafeTimedSerializer(get_settings().secret_key, salt=f"newsletter.{purpose}")


def make_token(purpose: Purpose, uid: str) -> str:
    return _serializer(purpose).dumps(uid)


def read_token(purpose: Purpose, token: str, max_age: int | None = None) -> str:
    """The subscriber key in a token; InvalidInput if it was tampered with or has expired."""
    try:
        uid = _serializer(purpose).loads(token, max_age=max_age)
    except SignatureExpired:
        raise InvalidInput("this link has expired") from None
    except BadSignature:
        raise InvalidInput("this link is not valid") from None
    if not isinstance(uid, str):
        raise InvalidInput("this link is not valid")
    return uid


def link(purpose: Purpose, uid: str) -> str:
    """The absolute URL of a subscriber's page for this purpose."""
    path = {"unsubscribe": "unsubscribe", "preferences": "preferences", "confirm": "confirm"}
    return f"{get_settings().public_base_url}/{path[purpose]}/{make_token(purpose, uid)}"
