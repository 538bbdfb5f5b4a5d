"""Sign-up with double opt-in, preferences and suppression, over HTTP with a real SMTP server."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

import pytest
from fastapi import BackgroundTasks
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner
from sqlalchemy import func, select

from newsletter import tokens
from newsletter.db import session_scope
from newsletter.delivery.pipeline import run_due
from newsletter.models import DeliveryPost
from newsletter.tags import get_or_create_tags, parse_tag_names
from newsletter.transactional import send_transactional
from newsletter.web.app import create_app
from newsletter.web.subscriber_pages import answer_signup_after_response
from subscribers.models import (
    SignupAttempt,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
)
from subscribers.signup import expire_pending
from subscribers.suppression import suppress
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
    """Post the form; it answers 303 to the "check your inbox" page (Post/Redirect/Get)."""
    response = client.post("/subscribe", data={**FORM, **changes})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/subscribe/check-inbox"
    return client.get(response.headers["location"]).text


def confirm_and_follow(client: TestClient, path: str, **data: str) -> str:
    """Confirm; the POST answers 303 back to the link, which now says it is done."""
    response = client.post(path, data=data)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"{path}?done=confirmed"
    return client.get(response.headers["location"]).text


def test_double_opt_in(client: TestClient, smtp: ScriptedHandler) -> None:
    page = client.get("/subscribe")
    assert page.status_code == 200
    assert 'value="politics"' in page.text and "/static/subscribe.js" in page.text

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
    assert "You are subscribed" in confirm_and_follow(client, path)
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
    # A second click changes nothing and sends no second welcome; the link now
    # says it was used, with the way to the preferences, and no button.
    assert client.post(path).status_code == 303
    assert len(smtp.messages) == 2
    again = client.get(path)
    assert again.status_code == 200 and "Already confirmed" in again.text
    assert "/preferences/" in again.text and "Confirm my subscription" not in again.text
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
        ({"email": "not-an-address"}, "doesn&#39;t look like an email address"),
        ({"email": "  "}, "Enter your email address"),
        ({"tags": []}, "Pick at least one tag"),
        ({"tags": ["nonexistent"]}, "no longer exists"),
        ({"cadence": "hourly"}, "Choose how often"),
        ({"timezone": "Mars/Olympus"}, "time zone isn&#39;t one we know"),
        ({"send_hour": "99"}, "Pick a time from the list"),
    ],
)
def test_bad_sign_up_is_a_400_and_writes_nothing(
    client: TestClient, smtp: ScriptedHandler, changes: dict[str, object], message: str
) -> None:
    response = client.post("/subscribe", data={**FORM, **changes})
    # Back to the form (Post/Redirect/Get), which shows what was typed and the mistake.
    assert response.status_code == 303 and response.headers["location"] == "/subscribe"
    page = client.get("/subscribe")
    assert page.status_code == 400 and message in page.text
    assert subscriber() is None and smtp.messages == []
    # Shown once: a reload is the plain form again.
    assert client.get("/subscribe").status_code == 200


def test_tampered_and_expired_links(
    client: TestClient, smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    sign_up(client)
    path = link_in(smtp, "confirm")
    tampered = path[:-3] + ("xyz" if not path.endswith("xyz") else "abc")
    for response in (client.get(tampered), client.post(tampered)):
        assert response.status_code == 400 and "not valid" in response.text
        assert "Traceback" not in response.text
        assert 'href="/subscribe"' in response.text  # what to do next
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
        # A guard row left from an earlier subscription goes with the reader.
        reader = subscriber()
        assert reader is not None
        session.add(DeliveryPost(subscriber_id=reader.id, post_id=1, delivery_id=1))
    summary = run_due(dt.datetime.now(dt.UTC) + dt.timedelta(hours=49))
    assert summary.expired_signups == 1
    assert subscriber() is None
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(DeliveryPost)) == 0


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
    assert saved.status_code == 303 and saved.headers["location"] == f"{path}?done=saved"
    assert "Your preferences are saved." in client.get(saved.headers["location"]).text
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
    assert bad.status_code == 303 and bad.headers["location"] == path
    shown = client.get(path)
    assert shown.status_code == 400 and "time zone isn&#39;t one we know" in shown.text
    assert subscriber("ana@example.org").timezone == "Asia/Tokyo"  # type: ignore[union-attr]

    paused = client.post(path, data={"action": "pause"})
    assert (
        paused.status_code == 303
        and "Digests paused" in client.get(paused.headers["location"]).text
    )
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


# -- addresses at sign-up ------------------------------------------------------------


def counts() -> tuple[int, int]:
    with session_scope() as session:
        return (
            session.scalar(select(func.count()).select_from(Subscriber)) or 0,
            session.scalar(select(func.count()).select_from(SignupAttempt)) or 0,
        )


@pytest.mark.parametrize(
    ("email", "scripts"),
    [
        ("test@ex\u0430mple.org", "Cyrillic and Latin"),
        ("test@xn--exmple-4nf.org", "Cyrillic and Latin"),  # the same, as punycode
        ("test@ex\u03b1mple.org", "Greek and Latin"),
    ],
)
def test_look_alike_domains_are_refused_at_sign_up(
    client: TestClient, smtp: ScriptedHandler, email: str, scripts: str
) -> None:
    assert client.post("/subscribe", data={**FORM, "email": email}).status_code == 303
    response = client.get("/subscribe")
    assert response.status_code == 400
    assert f"mixes {scripts} letters" in response.text and "look-alike" in response.text
    assert counts() == (0, 0) and smtp.messages == []


@pytest.mark.parametrize(
    ("typed", "stored", "wire"),
    [
        (
            "reader@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444",
            "reader@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444",
            "reader@xn--e1afmkfd.xn--p1ai",
        ),
        ("reader@xn--bcher-kva.de", "reader@b\u00fccher.de", "reader@xn--bcher-kva.de"),
        ("\uff54\uff45\uff53\uff54@example.org", "test@example.org", "test@example.org"),
        ("T\u00cbST@example.org", "t\u00ebst@example.org", "t\u00ebst@example.org"),
    ],
)
def test_internationalised_sign_ups_get_their_confirmation(
    client: TestClient, smtp: ScriptedHandler, typed: str, stored: str, wire: str
) -> None:
    assert "Check your inbox" in sign_up(client, email=typed)
    pending = subscriber(stored)
    assert pending is not None and pending.status is SubscriberStatus.PENDING
    [confirmation] = smtp.messages
    assert confirmation.recipients == [wire]
    client.post(link_in(smtp, "confirm"))
    assert subscriber(stored).status is SubscriberStatus.ACTIVE  # type: ignore[union-attr]


# -- a stranger's name -------------------------------------------------------------


STRANGER = "Totally Legit Bank Support"


def test_a_strangers_name_never_reaches_the_mailbox(
    client: TestClient, smtp: ScriptedHandler
) -> None:
    make_subscriber("ana@example.org", "climate", name="Ana")
    with session_scope() as session:
        from subscribers.services import by_uid, unsubscribe

        unsubscribe(session, by_uid(session, subscriber("ana@example.org").uid))  # type: ignore[union-attr]
    sign_up(client, name=STRANGER)  # a new address
    sign_up(client, email="ana@example.org", name=STRANGER)  # a known, unsubscribed one
    assert len(smtp.messages) == 2
    for received in smtp.messages:
        message = received.parsed()
        [to] = message["To"].addresses
        assert to.display_name == ""
        text, html = message.get_body(("plain",)), message.get_body(("html",))
        assert text is not None and html is not None
        assert "Hello," in text.get_content()
        for part in (text.get_content(), html.get_content(), str(message["To"])):
            assert STRANGER not in part
        # Nor in the link: the token carries the choices, not the name.
        token = link_in(smtp, "confirm", smtp.messages.index(received)).rsplit("/", 1)[1]
        assert "n" not in tokens.read_data("confirm", token)
    pending = subscriber()
    assert pending is not None and pending.name == ""
    assert subscriber("ana@example.org").name == "Ana"  # type: ignore[union-attr]


def test_the_owner_names_themselves_on_the_confirmation_page(
    client: TestClient, smtp: ScriptedHandler
) -> None:
    sign_up(client, name=STRANGER)
    path = link_in(smtp, "confirm")
    page = client.get(path)
    assert page.status_code == 200
    assert '<input type="text" name="name" value=""' in page.text and STRANGER not in page.text
    assert client.post(path, data={"name": "  Rae\u202e\r\nR  "}).status_code == 303
    assert subscriber().name == "Rae R"  # type: ignore[union-attr]
    welcome = smtp.messages[-1].parsed()
    assert welcome["To"].addresses[0].display_name == "Rae R"
    text = welcome.get_body(("plain",))
    assert text is not None and "Hi Rae R" in text.get_content()


def test_a_blank_name_at_confirmation_clears_what_a_stranger_left(
    client: TestClient, smtp: ScriptedHandler
) -> None:
    sign_up(client)
    # A pending row from before names were kept off sign-ups still holds one.
    with session_scope() as session:
        session.scalars(select(Subscriber)).one().name = STRANGER
    client.post(link_in(smtp, "confirm"), data={"name": ""})
    confirmed = subscriber()
    assert confirmed is not None and confirmed.status is SubscriberStatus.ACTIVE
    assert confirmed.name == ""
    assert STRANGER not in smtp.messages[-1].data.decode("utf-8", "replace")


# -- suppressed means suppressed ----------------------------------------------------


def test_a_manual_suppression_gets_no_confirmation(
    client: TestClient, smtp: ScriptedHandler
) -> None:
    sign_up(client)
    pending_link = link_in(smtp, "confirm")
    with session_scope() as session:
        suppress(session, "reader@example.org", SuppressionReason.MANUAL, "asked by letter")
    sign_up(client)
    sign_up(client, email="other@example.org")
    with session_scope() as session:
        suppress(session, "other@example.org", SuppressionReason.MANUAL)
    assert [m.recipients for m in smtp.messages] == [["reader@example.org"], ["other@example.org"]]
    # A link sent before the suppression confirms nothing either.
    response = client.post(pending_link)
    assert response.status_code == 400 and "cannot be subscribed" in response.text
    assert subscriber().status is SubscriberStatus.PENDING  # type: ignore[union-attr]
    # And the mail itself refuses, however it is asked for.
    uid = subscriber().uid  # type: ignore[union-attr]
    payload = {"u": uid, "t": ["politics"], "c": "daily", "z": "UTC", "h": 7, "w": 0}
    assert (
        send_transactional("confirm", subscriber().id, {"preferences": payload})  # type: ignore[union-attr]
        == "suppressed"
    )
    assert len(smtp.messages) == 2


def test_a_confirmation_sent_before_an_unsubscribe_cannot_undo_it(
    client: TestClient, smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first link was issued a minute ago (token times are whole seconds).
    minute_ago = int(time.time()) - 60
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: minute_ago)
    sign_up(client)
    monkeypatch.undo()
    old_link = link_in(smtp, "confirm")
    client.post(old_link)
    client.post(link_in(smtp, "unsubscribe"), content="List-Unsubscribe=One-Click")
    assert subscriber().status is SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]

    for response in (client.get(old_link), client.post(old_link, data={"name": "X"})):
        assert response.status_code == 400
        assert "before you unsubscribed" in response.text and "Traceback" not in response.text
    gone = subscriber()
    assert gone is not None and gone.status is SubscriberStatus.UNSUBSCRIBED and gone.name == ""
    with session_scope() as session:
        assert session.scalars(select(Suppression.reason)).one() is SuppressionReason.UNSUBSCRIBED
    mails = len(smtp.messages)

    # A new sign-up after the unsubscribe sends a new link, and that one still works.
    sign_up(client, tags=["climate"])
    assert len(smtp.messages) == mails + 1
    assert client.post(link_in(smtp, "confirm")).status_code == 303
    back = subscriber()
    assert back is not None and back.status is SubscriberStatus.ACTIVE
    assert [t.slug for t in back.tags] == ["climate"]
    with session_scope() as session:
        assert session.scalars(select(Suppression)).all() == []


# -- the same work for every address ------------------------------------------------


def test_every_sign_up_schedules_the_same_work_after_the_response(
    client: TestClient, smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the address's state, the request does the same work and schedules the
    same one job; deciding, storing and mailing all happen in that job."""
    make_subscriber("active@example.org", "climate")
    make_subscriber("paused@example.org", "climate")
    make_subscriber("gone@example.org", "climate")
    with session_scope() as session:
        from subscribers.services import by_uid, unsubscribe
        from subscribers.signup import set_paused

        rows = {s.email: s for s in session.scalars(select(Subscriber))}
        set_paused(session, rows["paused@example.org"], True, dt.datetime.now(dt.UTC))
        unsubscribe(session, by_uid(session, rows["gone@example.org"].uid))
        suppress(session, "bounced@example.org", SuppressionReason.HARD_BOUNCE)
        suppress(session, "blocked@example.org", SuppressionReason.MANUAL)
        past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        session.add_all(
            SignupAttempt(ip="192.0.2.9", email="flooded@example.org", created_at=past)
            for _ in range(5)
        )
    sign_up(client, email="pending@example.org")
    smtp.messages.clear()

    scheduled: list[tuple[Any, tuple[Any, ...]]] = []
    monkeypatch.setattr(
        BackgroundTasks, "add_task", lambda self, func, *args: scheduled.append((func, args))
    )
    states = {
        "new": "new@example.org",
        "pending": "pending@example.org",
        "active": "active@example.org",
        "paused": "paused@example.org",
        "unsubscribed": "gone@example.org",
        "hard bounce": "bounced@example.org",
        "manual suppression": "blocked@example.org",
        "flooded": "flooded@example.org",
    }
    before = snapshot()
    answers = [client.post("/subscribe", data={**FORM, "email": e}) for e in states.values()]
    assert {(a.status_code, a.headers["location"], a.text) for a in answers} == {
        (303, "/subscribe/check-inbox", "")
    }
    # Before the response: no row made or changed, no mail, one job each, all alike.
    assert snapshot() == before and smtp.messages == []
    assert len(scheduled) == len(states)
    assert {job for job, _ in scheduled} == {answer_signup_after_response}
    assert [args[0] for _, args in scheduled] == list(states.values())
    assert all(args[1] == scheduled[0][1][1] for _, args in scheduled)
    assert {type(args[2]) for _, args in scheduled} == {bool}

    # The job decides: confirmations, notices, or nothing at all.
    for job, args in scheduled:
        job(*args)
    mailed = sorted(m.recipients[0] for m in smtp.messages)
    confirmations = ["new@example.org", "pending@example.org", "gone@example.org"]
    notices = ["active@example.org", "paused@example.org"]
    assert mailed == sorted([*confirmations, *notices])


def snapshot() -> list[tuple[str, str, str]]:
    with session_scope() as session:
        return [
            (s.email, s.status.value, s.name)
            for s in session.scalars(select(Subscriber).order_by(Subscriber.email))
        ]
