"""POST /hooks/bounces/mailgun and /hooks/bounces: a provider's bounce and complaint
events, signed, applied through the one intake on SQLite and PostgreSQL. Every
refusal is a clear 4xx (503 while unconfigured) and applies nothing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from newsletter.bounces.models import BounceRecord
from newsletter.bounces.providers import mailgun_signature
from newsletter.db import session_scope
from newsletter.web.app import create_app
from newsletter.webhooks import SIGNATURE_HEADER, sign
from subscribers.models import SubscriberStatus, Suppression, SuppressionReason
from tests.bounces.test_mailbox import Sent, send_to, status_of
from tests.conftest import ScriptedHandler, apply_env
from tests.factories import make_subscriber

SECRET = "key-bounces-0123456789abcdef"

pytestmark = pytest.mark.usefixtures("app_env")


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    apply_env(monkeypatch, NEWSLETTER_BOUNCE_WEBHOOK_SECRET=SECRET)
    with TestClient(create_app()) as c:
        yield c


@pytest.fixture
def sent(smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch) -> dict[str, Sent]:
    return send_to(smtp, monkeypatch, "ana@example.org", "bob@example.org", "carla@example.org")


def applied() -> tuple[int, int]:
    """Bounce records and suppressions: what any request may have changed."""
    with session_scope() as session:
        records = session.scalar(select(func.count()).select_from(BounceRecord)) or 0
        suppressions = session.scalar(select(func.count()).select_from(Suppression)) or 0
        return int(records), int(suppressions)


def record_of(email: str) -> BounceRecord:
    with session_scope() as session:
        record = session.scalars(select(BounceRecord).where(BounceRecord.email == email)).one()
        session.expunge(record)
        return record


# -- Mailgun -------------------------------------------------------------------------


def message_id(sent: Sent) -> str:
    for line in sent.headers.decode().splitlines():
        if line.lower().startswith("message-id:"):
            return line.split(":", 1)[1].strip().strip("<>")
    raise AssertionError("no Message-ID")


def mailgun_event(
    event: str,
    recipient: str,
    *,
    severity: str | None = None,
    sender: str = "digest@news.example.org",
    message_id: str = "20260302100000.1.ABC@news.example.org",
    **extra: Any,
) -> dict[str, Any]:
    """An "event-data" object as Mailgun's webhooks send it."""
    data: dict[str, Any] = {
        "id": uuid.uuid4().hex[:22],
        "event": event,
        "timestamp": time.time() - 60,
        "log-level": "error" if event == "failed" else "warn",
        "recipient": recipient,
        "recipient-domain": recipient.split("@")[1],
        "envelope": {"sender": sender, "targets": recipient, "transport": "smtp"},
        "message": {
            "headers": {
                "to": recipient,
                "message-id": message_id,
                "from": "The Weekly <digest@news.example.org>",
                "subject": "This week's posts",
            },
            "attachments": [],
            "size": 41234,
        },
        "flags": {"is-routed": False, "is-authenticated": True, "is-test-mode": False},
        "tags": [],
        "campaigns": [],
        "user-variables": {},
    }
    if event == "failed":
        data["severity"] = severity
        data["reason"] = "bounce" if severity == "permanent" else "generic"
        data["delivery-status"] = {
            "attempt-no": 1,
            "code": 550 if severity == "permanent" else 452,
            "enhanced-code": "5.1.1" if severity == "permanent" else "4.2.2",
            "message": "5.1.1 The email account that you tried to reach does not exist."
            if severity == "permanent"
            else "4.2.2 The email account that you tried to reach is over quota.",
            "description": "",
            "mx-host": "mx.example.org",
            "tls": True,
        }
    data.update(extra)
    return data


def to_mailgun(
    client: TestClient,
    event_data: dict[str, Any],
    *,
    key: str = SECRET,
    timestamp: int | None = None,
    signature: dict[str, Any] | None = None,
) -> Any:
    ts = int(time.time()) if timestamp is None else timestamp
    body = {
        "signature": signature or mailgun_signature(key, ts, uuid.uuid4().hex * 2),
        "event-data": event_data,
    }
    return client.post("/hooks/bounces/mailgun", json=body)


def test_mailgun_permanent_failure_suppresses_and_finds_the_delivery_by_verp(
    client: TestClient, sent: dict[str, Sent]
) -> None:
    ana = sent["ana@example.org"]
    response = to_mailgun(
        client,
        mailgun_event(
            "failed", "ana@example.org", severity="permanent", sender=ana.envelope_sender
        ),
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"events": 1, "effects": ["ana@example.org suppressed: hard bounce"]}
    assert status_of("ana@example.org") == (
        SubscriberStatus.ACTIVE,
        SuppressionReason.HARD_BOUNCE,
    )
    record = record_of("ana@example.org")
    assert record.delivery_id == ana.delivery_id
    assert record.kind == "hard" and record.source == "mailgun"
    assert record.via == "webhook:mailgun"
    assert record.diagnostic.startswith("550 5.1.1 The email account that you tried")


def test_mailgun_temporary_failure_counts_and_finds_the_delivery_by_message_id(
    client: TestClient, sent: dict[str, Sent]
) -> None:
    bob = sent["bob@example.org"]
    event = mailgun_event(
        "failed", "bob@example.org", severity="temporary", message_id=message_id(bob)
    )
    response = to_mailgun(client, event)
    assert response.status_code == 200, response.text
    assert response.json()["effects"] == ["bob@example.org: soft bounce 1 of 3 in 14 days"]
    assert status_of("bob@example.org") == (SubscriberStatus.ACTIVE, None)
    assert record_of("bob@example.org").delivery_id == bob.delivery_id

    # Mailgun retries a webhook it thinks failed: the same event counts once.
    again = to_mailgun(client, event)
    assert again.status_code == 200
    assert applied() == (1, 0)


def test_mailgun_complaint_suppresses_and_unsubscribes(
    client: TestClient, sent: dict[str, Sent]
) -> None:
    event = mailgun_event(
        "complained",
        "carla@example.org",
        **{"user-variables": {"delivery_id": str(sent["carla@example.org"].delivery_id)}},
    )
    response = to_mailgun(client, event)
    assert response.status_code == 200, response.text
    assert status_of("carla@example.org") == (
        SubscriberStatus.UNSUBSCRIBED,
        SuppressionReason.COMPLAINT,
    )
    assert record_of("carla@example.org").delivery_id == sent["carla@example.org"].delivery_id


def test_other_mailgun_events_are_acknowledged_and_change_nothing(client: TestClient) -> None:
    make_subscriber("ana@example.org", "politics")
    for event in ("delivered", "opened", "accepted", "unsubscribed"):
        response = to_mailgun(client, mailgun_event(event, "ana@example.org"))
        assert response.status_code == 200, (event, response.text)
        assert response.json() == {"events": 0, "effects": []}
    assert applied() == (0, 0)


def test_mailgun_refuses_bad_stale_or_missing_signatures(client: TestClient) -> None:
    make_subscriber("ana@example.org", "politics")
    event = mailgun_event("failed", "ana@example.org", severity="permanent")
    old = int(time.time()) - 3600
    cases = {
        "bad_signature": to_mailgun(client, event, key="not-the-signing-key"),
        "stale_timestamp": to_mailgun(client, event, timestamp=old),
        "malformed_signature": to_mailgun(client, event, signature={"token": "t"}),
    }
    for code, response in cases.items():
        assert response.status_code == 401, (code, response.text)
        assert response.json()["error"] == code
    missing = client.post("/hooks/bounces/mailgun", json={"event-data": event})
    assert missing.status_code == 401 and missing.json()["error"] == "missing_signature"
    # A signature lifted from one request is no good with another timestamp.
    signature = mailgun_signature(SECRET, int(time.time()), "a" * 50)
    signature["timestamp"] = str(int(signature["timestamp"]) + 1)
    forged = to_mailgun(client, event, signature=signature)
    assert forged.status_code == 401 and forged.json()["error"] == "bad_signature"
    assert applied() == (0, 0)


MALFORMED_MAILGUN: list[Any] = [
    {"event": "failed", "recipient": "ana@example.org"},  # no severity
    {"event": "failed", "severity": "permanent"},  # no recipient
    {"event": "complained", "recipient": "ana@example.org", "timestamp": "yesterday"},
    "failed",
]


def test_mailgun_malformed_events_are_refused(client: TestClient) -> None:
    make_subscriber("ana@example.org", "politics")
    for event_data in MALFORMED_MAILGUN:
        response = to_mailgun(client, event_data)
        assert response.status_code == 422, (event_data, response.text)
        assert response.json()["error"] == "invalid_payload"
    assert applied() == (0, 0)


def test_mailgun_body_that_is_not_json_is_refused(client: TestClient) -> None:
    response = client.post(
        "/hooks/bounces/mailgun",
        content=b"signature=abc&event=failed",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"] == "malformed_json"


# -- the generic JSON -------------------------------------------------------------------


def to_generic(
    client: TestClient,
    body: dict[str, Any] | bytes,
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    content_type: str = "application/json",
) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(
        "/hooks/bounces",
        content=raw,
        headers={SIGNATURE_HEADER: sign(secret, raw, timestamp), "Content-Type": content_type},
    )


def test_generic_events_are_applied_together(client: TestClient, sent: dict[str, Sent]) -> None:
    body = {
        "events": [
            {
                "type": "hard",
                "email": "ana@example.org",
                "diagnostic": "smtp; 550 5.1.1 user unknown",
                "occurred_at": "2026-03-03T10:00:00Z",
            },
            {
                "type": "soft",
                "delivery_id": sent["bob@example.org"].delivery_id,
                "diagnostic": "452 4.2.2 mailbox full",
                "id": "evt-1",
            },
            {"type": "complaint", "email": "Carla@Example.org"},
        ]
    }
    response = to_generic(client, body)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "events": 3,
        "effects": [
            "ana@example.org suppressed: hard bounce",
            "bob@example.org: soft bounce 1 of 3 in 14 days",
            "carla@example.org suppressed and unsubscribed: complaint",
        ],
    }
    assert record_of("ana@example.org").via == "webhook:json"
    assert record_of("bob@example.org").delivery_id == sent["bob@example.org"].delivery_id
    assert status_of("carla@example.org")[0] == SubscriberStatus.UNSUBSCRIBED


BAD_GENERIC: list[list[dict[str, Any]]] = [
    [{"type": "hard", "email": "ana@example.org"}, {"type": "bogus", "email": "b@x.org"}],
    [{"type": "hard", "email": "ana@example.org"}, {"type": "soft"}],
    [{"type": "hard", "email": "ana@example.org", "occurred_at": "2026-03-03T10:00:00"}],
    [{"type": "hard", "email": "ana@example.org", "surprise": 1}],
    [],
]


def test_one_bad_generic_event_refuses_the_whole_request(client: TestClient) -> None:
    make_subscriber("ana@example.org", "politics")
    for events in BAD_GENERIC:
        response = to_generic(client, {"events": events})
        assert response.status_code == 422, (events, response.text)
        assert response.json()["error"] == "invalid_payload"
    assert applied() == (0, 0)


def test_generic_refuses_bad_or_stale_signatures_and_other_media(client: TestClient) -> None:
    make_subscriber("ana@example.org", "politics")
    body = {"events": [{"type": "hard", "email": "ana@example.org"}]}
    bad = to_generic(client, body, secret="not-the-secret")
    assert bad.status_code == 401 and bad.json()["error"] == "bad_signature"
    stale = to_generic(client, body, timestamp=int(time.time()) - 3600)
    assert stale.status_code == 401 and stale.json()["error"] == "stale_timestamp"
    unsigned = client.post("/hooks/bounces", json=body)
    assert unsigned.status_code == 401 and unsigned.json()["error"] == "missing_signature"
    form = to_generic(client, b"type=hard", content_type="application/x-www-form-urlencoded")
    assert form.status_code == 415
    assert applied() == (0, 0)


def test_both_endpoints_are_off_until_the_secret_is_set() -> None:
    make_subscriber("ana@example.org", "politics")
    with TestClient(create_app()) as client:
        generic = to_generic(client, {"events": [{"type": "hard", "email": "ana@example.org"}]})
        event = mailgun_event("failed", "ana@example.org", severity="permanent")
        mailgun = to_mailgun(client, event)
    for response in (generic, mailgun):
        assert response.status_code == 503
        assert response.json()["error"] == "webhook_disabled"
        assert "NEWSLETTER_BOUNCE_WEBHOOK_SECRET" in response.json()["detail"]
    assert applied() == (0, 0)
