"""Sign-up with double opt-in, preferences and suppression, over HTTP with a real SMTP server."""

from __future__ import annotations

import datetime as dt
import re
import time

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner
from sqlalchemy import select

from newsletter import tokens
from newsletter.db import session_scope
from newsletter.pipeline import run_due
from newsletter.tags import get_or_create_tags, parse_tag_names
from newsletter.web.app import create_app
from subscribers.models import Subscriber, SubscriberStatus, Suppression
from subscribers.signup import expire_pending
from tests.conftest import ScriptedHandler, apply_env
from tests.factories import make_post, make_subscriber

pytestmark = pytest.mark.usefixtures("app_env")

FORM = {
    "email": "reader@example.org",
    "name": "Rae",
    "tags": ["politics", "health"],
    "cadence": "daily",
    "timezone": "Europe/Lisbon",
    "send_hour": "7",
    "send_weekday": "0",
}


@pytest.fixture
def client(smtp: ScriptedHandler) -> TestClient:
    with session_scope() as session:
        get_or_create_tags(session, parse_tag_names("Politics, Health, Climate"))
    return TestClient(create_app(), follow_redirects=False)


def subscriber(email: str = "reader@example.org") -> Subscriber | None:
    with session_scope() as session:
        return session.scalars(select(Subscriber).where(Subscriber.email == email)).one_or_none()


def link_in(smtp: ScriptedHandler, path: str, index: int = -1) -> str:
    text = smtp.messages[index].parsed().get_body(("plain",))
    assert text is not None
    match = re.search(rf"https://news\.example\.org(/{path}/\S+)", text.get_content())
    assert match, text.get_content()
    return match.group(1)


def sign_up(client: TestClient, **changes: object) -> str:
    response = client.post("/subscribe", data={**FORM, **changes})
    assert response.status_code == 200, response.text
    return response.text


def test_double_opt_in(client: TestClient, smtp: ScriptedHandler) -> None:
    page = client.get("/subscribe")
    assert page.status_code == 200
    assert 'value="politics"' in page.text and "Intl.DateTimeFormat" in page.text

    assert "Check your inbox" in sign_up(client)
    pending = subscriber()
    assert pending is not None and pending.status is SubscriberStatus.PENDING
    [confirmation] = smtp.messages
    body = confirmation.parsed().get_body(("plain",))
    assert body is not None and "Health, Politics" in body.get_content()

    # A pending reader gets no digests.
    make_post("politics")
    assert len(smtp.messages) == 1

    path = link_in(smtp, "confirm")
    landing = client.get(path)
    assert landing.status_code == 200 and "Confirm my subscription" in landing.text
    assert subscriber().status is SubscriberStatus.PENDING  # type: ignore[union-attr]
    confirmed = client.post(path)
    assert confirmed.status_code == 200 and "You are subscribed" in confirmed.text
    active = subscriber()
    assert active is not None and active.status is SubscriberStatus.ACTIVE
    assert (active.cadence.value, active.timezone, active.send_hour) == (
        "daily",
        "Europe/Lisbon",
        7,
    )
    assert sorted(t.slug for t in active.tags) == ["health", "politics"]

    welcome = smtp.messages[-1].parsed()
    assert welcome["Subject"].startswith("Welcome")
    text = welcome.get_body(("plain",))
    assert text is not None
    assert (
        "Health, Politics" in text.get_content()
        and "daily at 07:00 (Europe/Lisbon)" in text.get_content()
    )
    assert welcome["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # A second click changes nothing and sends no second welcome.
    assert client.post(path).status_code == 200
    assert len(smtp.messages) == 2
    # The post that arrived while pending is not sent after confirming.
    run_due(dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    assert len(smtp.messages) == 2


def test_responses_do_not_reveal_whether_an_address_exists(
    client: TestClient, smtp: ScriptedHandler
) -> None:
    make_subscriber("active@example.org", "climate")
    make_subscriber("gone@example.org", "climate")
    with session_scope() as session:
        from subscribers.services import by_uid, unsubscribe

        gone = session.scalars(
            select(Subscriber).where(Subscriber.email == "gone@example.org")
        ).one()
        unsubscribe(session, by_uid(session, gone.uid))
    from subscribers.models import SuppressionReason
    from subscribers.suppression import suppress

    with session_scope() as session:
        suppress(session, "bounced@example.org", SuppressionReason.HARD_BOUNCE)
    sign_up(client, email="pending@example.org")

    pages = {}
    for email in [
        "new@example.org",
        "pending@example.org",
        "active@example.org",
        "gone@example.org",
        "bounced@example.org",
    ]:
        response = client.post("/subscribe", data={**FORM, "email": email})
        pages[email] = (response.status_code, response.text)
    assert len(set(pages.values())) == 1

    # Nobody's preferences changed; the active reader was told, not changed.
    active = subscriber("active@example.org")
    assert active is not None and [t.slug for t in active.tags] == ["climate"]
    assert active.cadence.value == "immediate"
    notices = [m for m in smtp.messages if m.recipients == ["active@example.org"]]
    assert len(notices) == 1 and "already subscribed" in notices[0].parsed()["Subject"]
    assert not [m for m in smtp.messages if m.recipients == ["bounced@example.org"]]


def test_stranger_cannot_change_pending_preferences(
    client: TestClient, smtp: ScriptedHandler
) -> None:
    sign_up(client)
    first = link_in(smtp, "confirm")
    sign_up(client, tags=["climate"], cadence="weekly")
    stored = subscriber()
    assert stored is not None and sorted(t.slug for t in stored.tags) == ["health", "politics"]
    # The owner confirms the link they asked for.
    client.post(first)
    active = subscriber()
    assert active is not None and active.cadence.value == "daily"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"email": "not-an-address"}, "invalid email address"),
        ({"tags": []}, "choose at least one tag"),
        ({"tags": ["nonexistent"]}, "does not exist"),
        ({"cadence": "hourly"}, "unknown cadence"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"send_hour": "99"}, "0-23"),
    ],
)
def test_bad_sign_up_is_a_400_and_writes_nothing(
    client: TestClient, smtp: ScriptedHandler, changes: dict[str, object], message: str
) -> None:
    response = client.post("/subscribe", data={**FORM, **changes})
    assert response.status_code == 400 and message in response.text
    assert subscriber() is None and smtp.messages == []


def test_tampered_and_expired_links(
    client: TestClient, smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    sign_up(client)
    path = link_in(smtp, "confirm")
    tampered = path[:-3] + ("xyz" if not path.endswith("xyz") else "abc")
    for response in (client.get(tampered), client.post(tampered)):
        assert response.status_code == 400 and "not valid" in response.text
        assert "Traceback" not in response.text
    # A link older than the pending lifetime has expired.
    old = int(time.time()) - 49 * 3600
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: old)
    stale_path = "/confirm/" + tokens.make_token(
        "confirm", {"u": subscriber().uid, "t": ["politics"]}
    )  # type: ignore[union-attr]
    stale_prefs = "/preferences/" + tokens.make_token("preferences", subscriber().uid)  # type: ignore[union-attr]
    monkeypatch.undo()
    response = client.post(stale_path)
    assert response.status_code == 400 and "expired" in response.text
    assert subscriber().status is SubscriberStatus.PENDING  # type: ignore[union-attr]
    # Preference links last longer (180 days by default): this one still works.
    assert client.get(stale_prefs).status_code == 200
    monkeypatch.setattr(
        TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 181 * 86400
    )
    very_old = "/preferences/" + tokens.make_token("preferences", subscriber().uid)  # type: ignore[union-attr]
    monkeypatch.undo()
    response = client.get(very_old)
    assert response.status_code == 400 and "expired" in response.text


def test_unconfirmed_sign_ups_expire(client: TestClient) -> None:
    sign_up(client)
    with session_scope() as session:
        assert expire_pending(session, dt.datetime.now(dt.UTC) + dt.timedelta(hours=47)) == 0
    summary = run_due(dt.datetime.now(dt.UTC) + dt.timedelta(hours=49))
    assert summary.expired_signups == 1
    assert subscriber() is None


def test_rate_limits(
    client: TestClient, smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(
        monkeypatch, NEWSLETTER_SIGNUP_PER_EMAIL_PER_HOUR="2", NEWSLETTER_SIGNUP_PER_IP_PER_HOUR="5"
    )
    for _ in range(4):
        assert "Check your inbox" in sign_up(client)
    # Per address: the same page, but only two mails were sent.
    assert len([m for m in smtp.messages if m.recipients == ["reader@example.org"]]) == 2
    sign_up(client, email="other@example.org")
    # Per client: the sixth request from this IP within the hour is refused.
    response = client.post("/subscribe", data={**FORM, "email": "third@example.org"})
    assert response.status_code == 429
    assert subscriber("third@example.org") is None


def test_preference_center(client: TestClient, smtp: ScriptedHandler) -> None:
    make_subscriber("ana@example.org", "politics", "daily", timezone="UTC", name="Ana")
    uid = subscriber("ana@example.org").uid  # type: ignore[union-attr]
    path = f"/preferences/{tokens.make_token('preferences', uid)}"
    page = client.get(path)
    assert page.status_code == 200 and "ana@example.org" in page.text

    saved = client.post(
        path,
        data={
            "action": "save",
            "name": "Ana B",
            "tags": ["health", "climate"],
            "cadence": "weekly",
            "timezone": "Asia/Tokyo",
            "send_hour": "9",
            "send_weekday": "4",
        },
    )
    assert saved.status_code == 200 and "saved" in saved.text
    after = subscriber("ana@example.org")
    assert after is not None
    assert sorted(t.slug for t in after.tags) == ["climate", "health"]
    assert (
        after.cadence.value,
        after.timezone,
        after.send_hour,
        after.send_weekday,
        after.name,
    ) == ("weekly", "Asia/Tokyo", 9, 4, "Ana B")
    assert (
        after.next_digest_at is not None and after.next_digest_at.astimezone(dt.UTC).hour == 0
    )  # Fri 09:00 Tokyo

    bad = client.post(
        path,
        data={
            "action": "save",
            "tags": ["health"],
            "cadence": "weekly",
            "timezone": "Nowhere/Land",
        },
    )
    assert bad.status_code == 400 and "unknown time zone" in bad.text
    assert subscriber("ana@example.org").timezone == "Asia/Tokyo"  # type: ignore[union-attr]

    assert "paused" in client.post(path, data={"action": "pause"}).text
    assert subscriber("ana@example.org").status is SubscriberStatus.PAUSED  # type: ignore[union-attr]
    make_post("health")
    run_due(dt.datetime.now(dt.UTC) + dt.timedelta(days=8))
    assert smtp.messages == []
    client.post(path, data={"action": "resume"})
    assert subscriber("ana@example.org").status is SubscriberStatus.ACTIVE  # type: ignore[union-attr]


def test_newly_followed_tag_brings_only_new_posts(
    client: TestClient, smtp: ScriptedHandler
) -> None:
    make_subscriber(
        "ana@example.org", "politics", now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    )
    make_post("climate", title="Old climate post")
    uid = subscriber("ana@example.org").uid  # type: ignore[union-attr]
    client.post(
        f"/preferences/{tokens.make_token('preferences', uid)}",
        data={
            "action": "save",
            "tags": ["politics", "climate"],
            "cadence": "immediate",
            "timezone": "UTC",
        },
    )
    make_post("climate", title="New climate post")
    subjects = [m.parsed()["Subject"] for m in smtp.messages]
    assert subjects == ["New climate post"]


def test_unsubscribe_suppresses_until_the_owner_signs_up_again(
    client: TestClient, smtp: ScriptedHandler
) -> None:
    sign_up(client)
    client.post(link_in(smtp, "confirm"))
    client.post(link_in(smtp, "unsubscribe"), content="List-Unsubscribe=One-Click")
    assert subscriber().status is SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]
    with session_scope() as session:
        assert session.scalars(select(Suppression.reason)).one().value == "unsubscribed"
    # Signing up again asks for confirmation; confirming lifts their own block.
    sign_up(client, tags=["climate"])
    client.post(link_in(smtp, "confirm"))
    again = subscriber()
    assert again is not None and again.status is SubscriberStatus.ACTIVE
    assert [t.slug for t in again.tags] == ["climate"]
    with session_scope() as session:
        assert session.scalars(select(Suppression)).all() == []


def test_hard_bounce_suppresses_the_address(client: TestClient, smtp: ScriptedHandler) -> None:
    smtp.replies["gone@example.org"] = ["550 5.1.1 no such user"]
    make_subscriber("gone@example.org", "politics")
    make_post("politics")
    with session_scope() as session:
        row = session.scalars(select(Suppression)).one()
        assert (row.email, row.reason.value) == ("gone@example.org", "hard_bounce")
        assert row.detail is not None and "550" in row.detail
    make_post("politics")
    assert smtp.attempts["gone@example.org"] == 1
    # Even a sign-up gets no confirmation mail now.
    sign_up(client, email="gone@example.org")
    assert smtp.attempts["gone@example.org"] == 1
