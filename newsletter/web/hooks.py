"""POST /hooks/posts: a CMS pushes a post, signed (see `newsletter.webhooks`).

Checks run cheapest and least trusting first: configured at all, size, signature
and age, content type, JSON, schema, then the post's own validation. Every refusal
is a JSON error with a stable code, and nothing is stored.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from newsletter import jsonsafe
from newsletter.config import get_settings
from newsletter.errors import InvalidInput
from newsletter.web.schemas import PostPayload, WebhookError, WebhookResult
from newsletter.webhooks import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    SignatureError,
    receive_post,
    verify,
)

router = APIRouter(prefix="/hooks", tags=["webhooks"])


class Refused(Exception):
    def __init__(
        self, status_code: int, code: str, detail: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(detail)
        self.response = JSONResponse(
            WebhookError(error=code, detail=detail, errors=errors).model_dump(exclude_none=True),
            status_code=status_code,
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused as soon as it is known to be over `limit` bytes."""
    declared = request.headers.get("content-length", "")
    too_large = Refused(
        status.HTTP_413_CONTENT_TOO_LARGE,
        "payload_too_large",
        f"the body is over the {limit} byte limit",
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def json_body(request: Request, body: bytes, what: str) -> Any:
    """The body as JSON, refused unless declared application/json and valid JSON."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise Refused(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            f"send {what} as application/json, not {media or 'no content type'}",
        )
    try:
        return jsonsafe.loads(body)
    except ValueError as exc:
        raise Refused(
            status.HTTP_400_BAD_REQUEST, "malformed_json", f"the body is not JSON: {exc}"
        ) from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of a signed body, for the OpenAPI document, with nested models
    written out in place: the route reads raw bytes (the signature covers them), so
    FastAPI never registers those models as components for a reference to point at."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return dict(inline(schema))


def _error(code: int, description: str) -> dict[str, Any]:
    return {"model": WebhookError, "description": description}


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": WebhookResult,
        "description": "Known guid: the post was updated (or was already the same); "
        "nobody is mailed again.",
    },
    400: _error(
        400,
        "The body is not JSON as RFC 8259 defines it: not UTF-8, NaN or Infinity, a lone "
        "surrogate escape, or nested too deeply (`malformed_json`).",
    ),
    401: _error(
        401,
        "Signature missing or malformed, not matching, or its timestamp outside the "
        "tolerance (`missing_signature`, `malformed_signature`, `bad_signature`, "
        "`stale_timestamp`).",
    ),
    413: _error(413, "The body is over 1 MiB (`payload_too_large`)."),
    415: _error(415, "The body is not declared as application/json (`unsupported_media_type`)."),
    422: _error(
        422,
        "The JSON does not match the schema, or a field is invalid (`invalid_payload`); "
        "`errors` lists the fields.",
    ),
    503: _error(503, "NEWSLETTER_WEBHOOK_SECRET is not set (`webhook_disabled`)."),
}


@router.post(
    "/posts",
    summary="Receive a post pushed by a CMS",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookResult,
    responses=RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A post, signed over these exact bytes.",
            "content": {"application/json": {"schema": body_schema(PostPayload)}},
        }
    },
)
async def receive(
    request: Request,
    x_newsletter_signature: Annotated[
        str | None,
        Header(
            alias=SIGNATURE_HEADER,
            description="\"t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<raw body>'>\" "
            "with NEWSLETTER_WEBHOOK_SECRET as the key.",
        ),
    ] = None,
) -> Any:
    """Store a new post (201, mailed to its readers) or apply an edit to a known one (200).

    Sign `<t>.<raw body>` with HMAC-SHA256 and the shared secret; requests whose
    timestamp is more than NEWSLETTER_WEBHOOK_TOLERANCE seconds (300) from now are
    refused as replays.
    """
    settings = get_settings()
    try:
        if not settings.webhook_secret:
            raise Refused(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "webhook_disabled",
                "webhooks are disabled: set NEWSLETTER_WEBHOOK_SECRET to enable them",
            )
        body = await read_body(request, MAX_BODY_BYTES)
        try:
            secret, tolerance = settings.webhook_secret, settings.webhook_tolerance
            verify(secret, x_newsletter_signature, body, tolerance)
        except SignatureError as exc:
            raise Refused(status.HTTP_401_UNAUTHORIZED, exc.code, str(exc)) from None
        raw = json_body(request, body, "the post")
        try:
            payload = PostPayload.model_validate(raw)
        except ValidationError as exc:
            errors = [
                {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
            ]
            raise Refused(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "invalid_payload",
                "the post does not match the schema",
                errors,
            ) from None
        try:
            received = await run_in_threadpool(receive_post, payload.to_input())
        except InvalidInput as exc:
            raise Refused(
                status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_payload", str(exc)
            ) from None
    except Refused as refused:
        return refused.response
    result = WebhookResult(status=received.status, id=received.id, guid=received.guid)
    code = status.HTTP_201_CREATED if received.status == "created" else status.HTTP_200_OK
    return JSONResponse(result.model_dump(), status_code=code)
