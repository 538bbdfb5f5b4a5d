"""POST /hooks/bounces and /hooks/bounces/mailgun: a sending provider reports bounces
and complaints (see `newsletter.bounces.providers`).

Both take NEWSLETTER_BOUNCE_WEBHOOK_SECRET: the generic endpoint as the key of the
same signature header as /hooks/posts, Mailgun's as its webhook signing key. The
whole request is checked before any event is applied; a refusal is a JSON error
with a stable code and applies nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from newsletter.bounces import intake, providers
from newsletter.config import Settings, get_settings
from newsletter.errors import InvalidInput
from newsletter.web.hooks import Refused, body_schema, json_body, read_body
from newsletter.web.schemas import WebhookError
from newsletter.webhooks import MAX_BODY_BYTES, SIGNATURE_HEADER, SignatureError, verify

router = APIRouter(prefix="/hooks/bounces", tags=["webhooks"])


class BounceHookResult(BaseModel):
    events: int = Field(description="Bounce and complaint events in the request.")
    effects: list[str] = Field(description="What they did, one line each.")


def _error(description: str) -> dict[str, Any]:
    return {"model": WebhookError, "description": description}


RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("The body is not JSON (`malformed_json`)."),
    401: _error(
        "Signature missing, malformed or not matching, or its timestamp outside the "
        "tolerance (`missing_signature`, `malformed_signature`, `bad_signature`, "
        "`stale_timestamp`)."
    ),
    413: _error("The body is over 1 MiB (`payload_too_large`)."),
    415: _error("The body is not declared as application/json (`unsupported_media_type`)."),
    422: _error("The events do not match the format (`invalid_payload`)."),
    503: _error("NEWSLETTER_BOUNCE_WEBHOOK_SECRET is not set (`webhook_disabled`)."),
}


def _secret(settings: Settings) -> str:
    if not settings.bounce_webhook_secret:
        raise Refused(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "webhook_disabled",
            "bounce webhooks are disabled: set NEWSLETTER_BOUNCE_WEBHOOK_SECRET to enable them",
        )
    return settings.bounce_webhook_secret


def _invalid(exc: InvalidInput) -> Refused:
    errors = exc.errors if isinstance(exc, providers.FieldErrors) else None
    return Refused(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_payload", str(exc), errors)


async def _apply(parse: Callable[[], list[intake.BounceEvent]], source: str) -> JSONResponse:
    """Parse every event, then apply them all at once (nothing applied if one is bad)."""

    def run() -> BounceHookResult:
        events = parse()
        if not events:
            return BounceHookResult(events=0, effects=[])
        result = intake.ingest_events(events, source=source)
        return BounceHookResult(events=len(events), effects=result.effects)

    try:
        outcome = await run_in_threadpool(run)
    except InvalidInput as exc:
        raise _invalid(exc) from None
    return JSONResponse(outcome.model_dump())


@router.post(
    "",
    summary="Receive bounce and complaint events (generic JSON)",
    response_model=BounceHookResult,
    responses=RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "Events, signed over these exact bytes.",
            "content": {"application/json": {"schema": body_schema(providers.GenericPayload)}},
        }
    },
)
async def receive_events(
    request: Request,
    x_newsletter_signature: Annotated[
        str | None,
        Header(
            alias=SIGNATURE_HEADER,
            description="\"t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<raw body>'>\" "
            "with NEWSLETTER_BOUNCE_WEBHOOK_SECRET as the key.",
        ),
    ] = None,
) -> Any:
    """Apply `{"events": [{"type": "hard|soft|complaint", "email": ..., "delivery_id": ...,
    "diagnostic": ..., "occurred_at": ...}]}`: a hard bounce or a complaint suppresses
    the address, soft bounces count towards NEWSLETTER_SOFT_BOUNCE_LIMIT."""
    settings = get_settings()
    try:
        secret = _secret(settings)
        body = await read_body(request, MAX_BODY_BYTES)
        try:
            verify(secret, x_newsletter_signature, body, settings.webhook_tolerance)
        except SignatureError as exc:
            raise Refused(status.HTTP_401_UNAUTHORIZED, exc.code, str(exc)) from None
        data = json_body(request, body, "the events")
        return await _apply(lambda: providers.generic_events(data), "webhook:json")
    except Refused as refused:
        return refused.response


@router.post(
    "/mailgun",
    summary="Receive a Mailgun webhook (failed, complained)",
    response_model=BounceHookResult,
    responses=RESPONSES,
)
async def receive_mailgun(request: Request) -> Any:
    """Mailgun's webhook body, signed with NEWSLETTER_BOUNCE_WEBHOOK_SECRET as the
    webhook signing key. "failed" with severity permanent is a hard bounce, temporary
    a soft one; "complained" a complaint; other events are acknowledged and ignored."""
    settings = get_settings()
    try:
        secret = _secret(settings)
        body = await read_body(request, MAX_BODY_BYTES)
        data = json_body(request, body, "the events")
        try:
            providers.verify_mailgun(secret, data, settings.webhook_tolerance)
        except SignatureError as exc:
            raise Refused(status.HTTP_401_UNAUTHORIZED, exc.code, str(exc)) from None
        return await _apply(lambda: providers.mailgun_events(data, settings), "webhook:mailgun")
    except Refused as refused:
        return refused.response
