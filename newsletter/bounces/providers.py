"""Bounce and complaint events posted by a sending provider, read into BounceEvents.

Two formats: Mailgun's webhook (signed inside the body with the webhook signing
key: HMAC-SHA256 over timestamp + token) and a generic JSON for anything else
(signed like the posts webhook, `newsletter.webhooks`). Both are parsed and checked
whole before anything is applied: one bad event refuses the request, and the
provider retries it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from newsletter.bounces import policy
from newsletter.bounces.intake import BounceEvent
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.delivery import verp
from newsletter.errors import InvalidInput
from newsletter.webhooks import SignatureError, check_age

# A provider batches at most this many events in one request (Mailgun sends one).
MAX_EVENTS = 1000
# Keys under which a sender may put the delivery id in Mailgun's user-variables
# (X-Mailgun-Variables: {"delivery_id": 1234}).
DELIVERY_VARIABLES = ("delivery_id", "delivery-id", "newsletter-delivery")

M = TypeVar("M", bound=BaseModel)


class FieldErrors(InvalidInput):
    """A body that does not match its schema, with pydantic's field errors."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


def _validate(model: type[M], data: Any, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        raise FieldErrors(f"{what} does not match the schema", errors) from None


# -- generic JSON -----------------------------------------------------------------


class GenericEvent(BaseModel):
    """One bounce or complaint, as any provider or script can report it."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["hard", "soft", "complaint"] = Field(
        description="hard: the address does not exist; soft: a temporary failure "
        "(mailbox full); complaint: the reader marked the mail as spam."
    )
    email: str | None = Field(None, min_length=3, max_length=320)
    delivery_id: int | None = Field(
        None, ge=1, description="The delivery it answers, when the sender knows it."
    )
    diagnostic: str = Field("", max_length=10_000, description="The remote server's words.")
    occurred_at: dt.datetime | None = Field(None, description="ISO 8601, with a time zone.")
    id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The sender's id for this event: sent again, it counts once.",
    )


class GenericPayload(BaseModel):
    """POST /hooks/bounces: {"events": [...]}, signed with X-Newsletter-Signature."""

    model_config = ConfigDict(extra="forbid")

    events: list[GenericEvent] = Field(min_length=1, max_length=MAX_EVENTS)


def generic_events(data: Any) -> list[BounceEvent]:
    """The events of a generic payload, or FieldErrors / InvalidInput."""
    payload = _validate(GenericPayload, data, "the bounce events")
    events = []
    for n, item in enumerate(payload.events):
        if item.email is None and item.delivery_id is None:
            raise InvalidInput(f"event {n} names neither an email nor a delivery_id")
        occurred = item.occurred_at
        if occurred is not None and occurred.tzinfo is None:
            raise InvalidInput(f"event {n}: occurred_at needs a time zone (e.g. Z)")
        events.append(
            BounceEvent(
                kind=item.type,
                email=item.email,
                delivery_id=item.delivery_id,
                diagnostic=item.diagnostic,
                source="json",
                occurred_at=occurred.astimezone(dt.UTC) if occurred else None,
                key=f"json:{item.id}" if item.id else None,
            )
        )
    return events


# -- Mailgun ----------------------------------------------------------------------


class MailgunSignature(BaseModel):
    timestamp: str = Field(pattern=r"^[0-9]{1,12}$")
    token: str = Field(min_length=1, max_length=200)
    signature: str = Field(min_length=1, max_length=200)


class _MailgunStatus(BaseModel):
    code: int | str | None = None
    enhanced_code: str | None = Field(None, alias="enhanced-code", max_length=32)
    message: str | None = Field(None, max_length=10_000)
    description: str | None = Field(None, max_length=10_000)


class _MailgunMessage(BaseModel):
    headers: dict[str, Any] = Field(default_factory=dict)


class _MailgunEvent(BaseModel):
    id: str | None = Field(None, max_length=200)
    event: str = Field(max_length=64)
    severity: str | None = Field(None, max_length=32)
    reason: str | None = Field(None, max_length=64)
    recipient: str | None = Field(None, max_length=320)
    timestamp: float | None = None
    delivery_status: _MailgunStatus = Field(default_factory=_MailgunStatus, alias="delivery-status")
    message: _MailgunMessage = Field(default_factory=_MailgunMessage)
    user_variables: dict[str, Any] = Field(default_factory=dict, alias="user-variables")
    envelope: dict[str, Any] = Field(default_factory=dict)


class _MailgunPayload(BaseModel):
    signature: MailgunSignature
    event_data: _MailgunEvent = Field(alias="event-data")


def verify_mailgun(signing_key: str, data: Any, tolerance: int, now: float | None = None) -> None:
    """SignatureError unless `data["signature"]` is Mailgun's, and recent.

    Mailgun signs `timestamp + token` (concatenated) with HMAC-SHA256 and the
    webhook signing key; the timestamp is held to the same tolerance as ours.
    """
    raw = data.get("signature") if isinstance(data, Mapping) else None
    if raw is None:
        raise SignatureError("missing_signature", 'the body has no "signature" object')
    try:
        signed = MailgunSignature.model_validate(raw)
    except ValidationError:
        raise SignatureError(
            "malformed_signature",
            'the "signature" object must hold timestamp, token and signature strings',
        ) from None
    check_age(int(signed.timestamp), tolerance, now)
    expected = hmac.new(
        signing_key.encode(), (signed.timestamp + signed.token).encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, signed.signature.strip().lower()):
        raise SignatureError("bad_signature", "the signature does not match")


def mailgun_signature(signing_key: str, timestamp: int, token: str) -> dict[str, str]:
    """The "signature" object Mailgun sends, for tests and for replaying an event."""
    digest = hmac.new(signing_key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256)
    return {"timestamp": str(timestamp), "token": token, "signature": digest.hexdigest()}


def mailgun_events(data: Any, settings: Settings) -> list[BounceEvent]:
    """The bounce or complaint in a (verified) Mailgun webhook body; [] for its other
    events (delivered, opened, ...), which say nothing about an address's health."""
    event = _validate(_MailgunPayload, data, "the Mailgun event").event_data
    kind: Literal["hard", "soft", "complaint"]
    if event.event == "complained":
        kind = "complaint"
    elif event.event == "failed":
        if event.severity not in ("permanent", "temporary"):
            raise InvalidInput('a "failed" event needs severity "permanent" or "temporary"')
        kind = "hard" if event.severity == "permanent" else "soft"
    else:
        return []
    if not event.recipient:
        raise InvalidInput(f'the "{event.event}" event names no recipient')
    occurred = (
        dt.datetime.fromtimestamp(event.timestamp, dt.UTC) if event.timestamp is not None else None
    )
    return [
        BounceEvent(
            kind=kind,
            email=event.recipient,
            delivery_id=_mailgun_delivery(event, settings),
            diagnostic=_mailgun_diagnostic(event),
            source="mailgun",
            occurred_at=occurred,
            key=f"mailgun:{event.id}" if event.id else None,
        )
    ]


def _mailgun_delivery(event: _MailgunEvent, settings: Settings) -> int | None:
    """The delivery an event answers: a delivery id the sender put in user-variables,
    the VERP token of the envelope sender, or the Message-ID we gave the message."""
    for key in DELIVERY_VARIABLES:
        value = event.user_variables.get(key)
        if isinstance(value, int) and value > 0:
            return value
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
            return int(value)
    sender = event.envelope.get("sender")
    if isinstance(sender, str):
        found = verp.delivery_id_from(sender, settings)
        if found is not None:
            return found
    message_id = _header(event.message.headers, "message-id")
    return delivery_by_message_id(message_id) if message_id else None


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name and isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _mailgun_diagnostic(event: _MailgunEvent) -> str:
    """Mailgun's words as it gave them: code, enhanced code, message, reason."""
    status = event.delivery_status
    text = (status.message or status.description or "").strip()
    enhanced = (status.enhanced_code or "").strip()
    parts = [
        str(status.code) if status.code not in (None, "", 0) else "",
        "" if text.startswith(enhanced) else enhanced,
        text,
    ]
    line = " ".join(p.strip() for p in parts if p and p.strip())
    extra = f"mailgun {event.event}" + (f" ({event.reason})" if event.reason else "")
    return f"{line} [{extra}]" if line else extra


def delivery_by_message_id(message_id: str) -> int | None:
    """The delivery sent with this Message-ID (Mailgun gives it without the brackets)."""
    bare = message_id.strip().strip("<>")
    if not bare or len(bare) > 250:
        return None
    with session_scope() as session:
        return policy.resolve_message_id(session, f"<{bare}>")
