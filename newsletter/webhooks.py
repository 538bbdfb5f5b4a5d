"""Signed webhooks: a CMS pushes a post, signed with HMAC-SHA256 over the raw body.

The header is Stripe-style: `X-Newsletter-Signature: t=<unix seconds>,v1=<hex>`,
where the hex is HMAC-SHA256(secret, "<t>.<raw body>"). Signing the timestamp
with the body and refusing timestamps outside the tolerance (5 minutes by default)
stops a captured request from being replayed later; a replay within the window
is harmless, since a known guid is never a new post. Several `v1=` values may be
given (while rotating secrets); one match is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from newsletter.db import session_scope
from newsletter.models import Post
from newsletter.posts import PostInput, add_post, check_post, update_post

SIGNATURE_HEADER = "X-Newsletter-Signature"
MAX_BODY_BYTES = 1024 * 1024


class SignatureError(Exception):
    """The request is not provably from the holder of the secret, or is too old."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC a sender puts after `v1=`."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """A complete header value, for senders and tests."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={signature(secret, body, timestamp)}"


def check_age(timestamp: int, tolerance: int, now: float | None = None) -> None:
    """SignatureError unless the signed `timestamp` is within `tolerance` s of now."""
    now = time.time() if now is None else now
    age = now - timestamp
    if abs(age) > tolerance:
        when = f"{int(age)} s old" if age > 0 else f"{int(-age)} s in the future"
        raise SignatureError(
            "stale_timestamp",
            f"the signed timestamp is {when}; more than {tolerance} s apart from now is "
            "refused as a possible replay",
        )


def verify(
    secret: str, header: str | None, body: bytes, tolerance: int, now: float | None = None
) -> int:
    """The signed timestamp, or SignatureError saying what is wrong."""
    if not header:
        raise SignatureError("missing_signature", f"the {SIGNATURE_HEADER} header is missing")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        # ASCII digits only: "²".isdigit() is True, and int() refuses it.
        if key == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == "v1" and value:
            candidates.append(value.strip().lower())
    if timestamp is None or not candidates:
        raise SignatureError(
            "malformed_signature",
            f"the {SIGNATURE_HEADER} header must look like t=<unix time>,v1=<hex HMAC-SHA256>",
        )
    check_age(timestamp, tolerance, now)
    expected = signature(secret, body, timestamp)
    # compare_digest on every candidate: the time taken says nothing about the secret.
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("bad_signature", "the signature does not match the body")
    return timestamp


@dataclass(frozen=True)
class Received:
    status: Literal["created", "updated", "unchanged"]
    id: int
    guid: str


def receive_post(data: PostInput) -> Received:
    """Store a pushed post: new guid -> created and announced; known -> updated in place.

    A known guid is an edit (or a retry of a delivery we already have): it is
    applied and mails nobody. Raises InvalidInput, storing nothing, for bad fields.
    """
    guid = check_post(data).guid
    for _attempt in range(2):
        try:
            with session_scope() as session:
                post = session.scalar(select(Post).where(Post.guid == guid))
                if post is None:
                    post = add_post(session, data, source="webhook")
                    return Received("created", post.id, post.guid)
                changed = update_post(session, post, data)
                return Received("updated" if changed else "unchanged", post.id, post.guid)
        except IntegrityError:
            # The same post arrived twice at once; the retry finds the other copy.
            continue
    raise RuntimeError("could not store the webhook post")
