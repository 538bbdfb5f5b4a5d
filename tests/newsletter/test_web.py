"""Unsubscribe links and the one-click POST exactly as a mailbox provider sends it."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from newsletter import tokens
from newsletter.db import session_scope
from newsletter.delivery import planning, sending
from newsletter.models import DeliveryStatus
from newsletter.web.app import create_app
from subscribers.models import Subscriber, SubscriberStatus
from tests.conftest import ScriptedHandler
from tests.factories import make_post, make_subscriber

pytestmark = pytest.mark.usefixtures("app_env")


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(), follow_redirects=False)


def subscriber(email: str) -> Subscriber:
    with session_scope() as session:
        return session.scalars(select(Subscriber).where(Subscriber.email == email)).one()


def test_one_click_post_unsubscribes_at_once(
    client: TestClient, smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    make_subscriber("ana@example.org", "politics", now=t0)
    make_post("politics", now=t0 + dt.timedelta(hours=1))
    [message] = smtp.messages
    header = message.parsed()["List-Unsubscribe"]
    assert message.parsed()["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = header.strip("<>")
    assert url.startswith("https://news.example.org/unsubscribe/")
    path = url.removeprefix("https://news.example.org")

    response = client.post(
        path,
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    assert subscriber("ana@example.org").status is SubscriberStatus.UNSUBSCRIBED
    # Idempotent: a provider retrying the POST gets 200 again.
    assert client.post(path, content="List-Unsubscribe=One-Click").status_code == 200


def test_unsubscribe_takes_effect_before_planned_send(
    client: TestClient, smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    make_subscriber("ana@example.org", "politics", "daily", t0)
    make_post("politics", now=t0 + dt.timedelta(hours=1))
    day = t0 + dt.timedelta(days=1)
    report = planning.plan_due(day)
    uid = subscriber("ana@example.org").uid
    client.post(
        f"/unsubscribe/{tokens.make_token('unsubscribe', uid)}",
        content="List-Unsubscribe=One-Click",
    )
    result = sending.send_batch(report.deliveries, day)
    assert result.sent == 0 and smtp.messages == []
    assert result.skipped["subscriber_unsubscribed"] == 1
    with session_scope() as session:
        from newsletter.models import Delivery

        assert session.scalars(select(Delivery.status)).one() is DeliveryStatus.SKIPPED


def test_get_shows_confirmation_and_changes_nothing(client: TestClient, t0: dt.datetime) -> None:
    make_subscriber("ana@example.org", "politics", now=t0)
    uid = subscriber("ana@example.org").uid
    response = client.get(f"/unsubscribe/{tokens.make_token('unsubscribe', uid)}")
    assert response.status_code == 200
    assert "ana@example.org" in response.text and "<form" in response.text
    assert subscriber("ana@example.org").status is SubscriberStatus.ACTIVE


@pytest.mark.parametrize("method", ["get", "post"])
def test_tampered_token_is_a_clear_400(client: TestClient, t0: dt.datetime, method: str) -> None:
    make_subscriber("ana@example.org", "politics", now=t0)
    token = tokens.make_token("unsubscribe", subscriber("ana@example.org").uid)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    response = getattr(client, method)(f"/unsubscribe/{tampered}")
    assert response.status_code == 400
    assert "not valid" in response.text and "Traceback" not in response.text
    assert subscriber("ana@example.org").status is SubscriberStatus.ACTIVE


def test_token_for_another_purpose_is_refused(client: TestClient, t0: dt.datetime) -> None:
    make_subscriber("ana@example.org", "politics", now=t0)
    token = tokens.make_token("preferences", subscriber("ana@example.org").uid)
    assert client.post(f"/unsubscribe/{token}").status_code == 400


def test_preferences_page(client: TestClient, t0: dt.datetime) -> None:
    make_subscriber("ana@example.org", "politics, health", "daily", t0, "Europe/Lisbon", 7)
    token = tokens.make_token("preferences", subscriber("ana@example.org").uid)
    response = client.get(f"/preferences/{token}")
    assert response.status_code == 200
    for text in ["ana@example.org", "politics", "health", "07:00", "Europe/Lisbon"]:
        assert text in response.text
