"""POST /hooks/posts: signed pushes from a CMS. Every refusal is a clear 4xx and stores nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from newsletter.db import session_scope
from newsletter.models import Post, Tag
from newsletter.web.app import create_app
from newsletter.webhooks import SIGNATURE_HEADER, sign, verify
from tests.conftest import ScriptedHandler, apply_env
from tests.factories import make_subscriber

SECRET = "whsec-test-0123456789abcdef"

pytestmark = pytest.mark.usefixtures("app_env")


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, app_env: str) -> Iterator[TestClient]:
    apply_env(monkeypatch, NEWSLETTER_WEBHOOK_SECRET=SECRET)
    with TestClient(create_app()) as c:
        yield c


def payload(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "title": "Budget day",
        "url": "https://blog.example.org/2026/03/budget/",
        "tags": ["Politics", "Public Services"],
        "summary": "What <b>changes</b>.",
        "body": '<p>Read <a href="../older/">this</a>.</p><script>alert(1)</script>',
        "published_at": "2026-03-02T09:00:00+01:00",
        "guid": "cms-1042",
    }
    data.update(changes)
    return data


def push(
    client: TestClient,
    body: bytes | dict[str, Any],
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    header: str | None = None,
    content_type: str = "application/json",
) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    signature = header if header is not None else sign(secret, raw, timestamp)
    return client.post(
        "/hooks/posts",
        content=raw,
        headers={SIGNATURE_HEADER: signature, "Content-Type": content_type},
    )


def stored() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Post)) or 0)


def test_signed_post_is_stored_and_mailed_once(client: TestClient, smtp: ScriptedHandler) -> None:
    make_subscriber("ana@example.org", "politics")
    make_subscriber("ben@example.org", "climate")
    response = push(client, payload())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "created" and body["guid"] == "cms-1042"
    assert [m.recipients for m in smtp.messages] == [["ana@example.org"]]
    with session_scope() as session:
        post = session.scalars(select(Post)).one()
        assert post.source == "webhook" and post.summary == "What changes."
        assert "<script" not in post.body_html
        assert 'href="https://blog.example.org/2026/03/older/"' in post.body_html
        assert [t.slug for t in post.tags] == ["politics", "public-services"]

    # The CMS retries the same delivery: known guid, nothing sent again.
    again = push(client, payload())
    assert again.status_code == 200 and again.json()["status"] == "unchanged"
    # An edit updates the stored post and mails nobody.
    edited = push(client, payload(title="Budget day (updated)"))
    assert edited.status_code == 200 and edited.json() == {
        "status": "updated",
        "id": body["id"],
        "guid": "cms-1042",
    }
    assert stored() == 1 and len(smtp.messages) == 1
    with session_scope() as session:
        assert session.scalars(select(Post.title)).one() == "Budget day (updated)"


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("", "missing_signature"),
        ("v1=abc", "malformed_signature"),
        ("t=notanumber,v1=abc", "malformed_signature"),
        # {now} is filled in when the test runs, not when tests are collected: a long
        # run would otherwise make these stale before they are sent.
        ("t={now}", "malformed_signature"),
        ("t={now},v1=" + "0" * 64, "bad_signature"),
    ],
)
def test_bad_signature_header(client: TestClient, header: str, code: str) -> None:
    response = push(client, payload(), header=header.replace("{now}", str(int(time.time()))))
    assert response.status_code == 401
    assert response.json()["error"] == code and response.json()["detail"]
    assert stored() == 0


def test_signature_with_the_wrong_secret_or_a_changed_body(client: TestClient) -> None:
    response = push(client, payload(), secret="another-secret-entirely")
    assert response.status_code == 401 and response.json()["error"] == "bad_signature"
    raw = json.dumps(payload()).encode()
    header = sign(SECRET, raw)
    tampered = raw.replace(b"Budget day", b"Hacked day")
    response = push(client, tampered, header=header)
    assert response.status_code == 401 and response.json()["error"] == "bad_signature"
    assert stored() == 0


# A few seconds past the 300 s tolerance, so a slow machine cannot bring it back inside.
@pytest.mark.parametrize("offset", [-310, -3600, 310])
def test_replayed_or_future_timestamp_is_refused(client: TestClient, offset: int) -> None:
    response = push(client, payload(), timestamp=int(time.time()) + offset)
    assert response.status_code == 401
    assert response.json()["error"] == "stale_timestamp"
    assert "replay" in response.json()["detail"]
    assert stored() == 0


def test_timestamp_within_tolerance_and_rotating_secrets(client: TestClient) -> None:
    raw = json.dumps(payload()).encode()
    t = int(time.time()) - 200
    header = f"t={t},v1={'f' * 64},{sign(SECRET, raw, t).split(',')[1]}"
    assert push(client, raw, header=header).status_code == 201


def test_payload_over_1_mib_is_refused(client: TestClient) -> None:
    big = payload(body="<p>" + "x" * (1024 * 1024) + "</p>")
    response = push(client, big)
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"

    # Without a Content-Length (chunked), the stream is counted and cut off.
    raw = json.dumps(big).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 65536):
            yield raw[start : start + 65536]

    response = client.post(
        "/hooks/posts",
        content=chunks(),
        headers={SIGNATURE_HEADER: sign(SECRET, raw), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert stored() == 0


def test_malformed_json(client: TestClient) -> None:
    response = push(client, b'{"title": "unterminated')
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"
    assert push(client, b"\xff\xfe not utf-8").status_code == 400
    assert stored() == 0


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"title": ""}, "title"),
        ({"url": None}, "url"),
        ({"tags": "Politics"}, "tags"),
        ({"published_at": "next tuesday"}, "published_at"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_schema_errors_name_the_field(
    client: TestClient, changes: dict[str, Any], field: str
) -> None:
    response = push(client, payload(**changes))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_payload"
    assert any(field in map(str, e["loc"]) for e in body["errors"])
    assert stored() == 0


def test_a_json_array_is_a_schema_error(client: TestClient) -> None:
    response = push(client, b"[1, 2]")
    assert response.status_code == 422 and response.json()["error"] == "invalid_payload"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": "/relative/path"}, "http(s) URL"),
        ({"url": "javascript:alert(1)"}, "http(s) URL"),
        ({"tags": ["!!!"]}, "no letters or digits"),
        ({"title": "   "}, "needs a title"),
    ],
)
def test_invalid_fields_store_nothing(
    client: TestClient, changes: dict[str, Any], message: str
) -> None:
    response = push(client, payload(**changes))
    assert response.status_code == 422
    assert message in response.json()["detail"]
    assert stored() == 0
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Tag)) == 0


def test_wrong_content_type(client: TestClient) -> None:
    response = push(client, payload(), content_type="text/plain")
    assert response.status_code == 415 and response.json()["error"] == "unsupported_media_type"


def test_disabled_without_a_secret(monkeypatch: pytest.MonkeyPatch, app_env: str) -> None:
    apply_env(monkeypatch, NEWSLETTER_WEBHOOK_SECRET="")
    with TestClient(create_app()) as client:
        response = push(client, payload())
    assert response.status_code == 503 and response.json()["error"] == "webhook_disabled"
    assert stored() == 0


def test_verify_is_usable_by_senders() -> None:
    body = b'{"title": "x"}'
    header = sign("s3cret", body, 1_700_000_000)
    assert verify("s3cret", header, body, 300, now=1_700_000_100) == 1_700_000_000
