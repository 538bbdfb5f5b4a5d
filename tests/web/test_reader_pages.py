"""The reader pages over HTTP: Post/Redirect/Get, errors by field, links that no
longer work, unsubscribe alternatives and undo, the state on the preferences page.

The same pages in a real browser (JavaScript, layout, axe-core) are in
test_reader_pages_browser.py.
"""

from __future__ import annotations

import datetime as dt
import re
import time

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from itsdangerous import TimestampSigner
from sqlalchemy import select

from newsletter import timezones, tokens
from newsletter.db import session_scope
from newsletter.models import Cadence
from newsletter.web.app import create_app
from subscribers.models import Subscriber, SubscriberStatus, Suppression, SuppressionReason
from subscribers.suppression import suppress
from tests.conftest import apply_env
from tests.factories import make_subscriber, make_tags

pytestmark = pytest.mark.usefixtures("app_env")

EMAIL = "ana@example.org"


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(), follow_redirects=False)


def stored(email: str = EMAIL) -> Subscriber:
    with session_scope() as session:
        return session.scalars(select(Subscriber).where(Subscriber.email == email)).one()


def link(purpose: tokens.Purpose, email: str = EMAIL) -> str:
    return f"/{purpose}/{tokens.make_token(purpose, stored(email).uid)}"


def old_link(purpose: tokens.Purpose, seconds_ago: int, email: str = EMAIL) -> str:
    signer_time = TimestampSigner.get_timestamp
    TimestampSigner.get_timestamp = lambda self: int(time.time()) - seconds_ago  # type: ignore[method-assign]
    try:
        return link(purpose, email)
    finally:
        TimestampSigner.get_timestamp = signer_time  # type: ignore[method-assign]


# -- sign-up page --------------------------------------------------------------------


def test_root_and_sign_up_page(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    root = client.get("/")
    assert root.status_code == 303 and root.headers["location"] == "/subscribe"
    page = client.get("/subscribe").text
    # No tags yet: said plainly instead of an empty list.
    assert "no tags to follow yet" in page
    # The site name leads to the blog (the app itself while no blog is set).
    assert '<a href="https://news.example.org/">The Digest</a>' in page
    assert "We keep your email address" in page and "leave in one click" in page
    apply_env(monkeypatch, NEWSLETTER_SITE_URL="https://blog.example.org/")
    make_tags("Politics")
    page = client.get("/subscribe").text
    assert '<a href="https://blog.example.org/">The Digest</a>' in page
    assert "no tags to follow yet" not in page and 'value="politics"' in page


def back_to_form(client: TestClient, path: str, data: dict[str, object]) -> Response:
    """Post a form with mistakes: 303 back to its page, which shows them (once)."""
    response = client.post(path, data=data)
    assert response.status_code == 303 and response.headers["location"] == path
    assert "httponly" in response.headers["set-cookie"].lower()
    assert "ana@" not in response.headers["location"]
    page = client.get(path)
    assert page.status_code == 400
    return page


def test_every_mistake_is_shown_at_once_next_to_its_field(client: TestClient) -> None:
    make_tags("Politics")
    page = back_to_form(
        client,
        "/subscribe",
        {"email": "", "cadence": "weekly", "timezone": "Mars/Olympus", "send_hour": "99"},
    ).text
    assert "There are 4 problems" in page and "<title>Error: Subscribe" in page
    for field, control, words in [
        ("email", "email", "Enter your email address"),
        ("tags", "tag-1", "Pick at least one tag to follow."),
        ("timezone", "timezone", "That time zone isn&#39;t one we know, pick one from the list."),
        ("send_hour", "send_hour", "Pick a time from the list."),
    ]:
        assert re.search(rf'<p class="field-error" id="{field}-error">.*{words}', page), field
        assert f'<a href="#{control}">{words}' in page  # the summary links to the control
    # Each bad control is marked and described; focus goes to the first one.
    email = re.search(r"<input[^>]*id=\"email\"[^>]*>", page)
    assert email and 'aria-invalid="true"' in email.group(0)
    assert 'aria-describedby="email-error"' in email.group(0) and "autofocus" in email.group(0)
    assert page.count("autofocus") == 1
    assert 'aria-describedby="timezone-hint timezone-error"' in page
    assert re.search(r'id="send_hour" aria-invalid="true" aria-describedby="send_hour-error"', page)
    assert 'name="tags" value="politics" id="tag-1" aria-invalid="true">' in page
    # What was typed stays; nothing is written.
    with session_scope() as session:
        assert session.scalars(select(Subscriber)).all() == []


def test_a_bad_address_alone_focuses_the_address(client: TestClient) -> None:
    make_tags("Politics")
    response = back_to_form(
        client, "/subscribe", {"email": "ana@", "tags": ["politics"], "timezone": "Europe/Berlin"}
    )
    assert "There is a problem" in response.text
    assert "doesn&#39;t look like an email address" in response.text
    assert 'value="ana@"' in response.text
    assert re.search(r'<option value="Europe/Berlin"[^>]* selected>', response.text)


# -- time zones ----------------------------------------------------------------------


def test_only_canonical_zones_are_offered_grouped_by_region() -> None:
    names = timezones.canonical_names()
    for never in ("Factory", "localtime", "posixrules", "US/Eastern", "Etc/GMT+5", "GMT"):
        assert never not in names
    assert {"UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"} <= names
    assert [r.name for r in timezones.regions()][:3] == ["UTC", "Africa", "America"]
    europe = next(r for r in timezones.regions() if r.name == "Europe")
    assert any(z.name == "Europe/Berlin" and z.label == "Berlin (Germany)" for z in europe.zones)
    assert timezones.search("Berlin") == ["Europe/Berlin"]
    assert "Europe/Berlin" in timezones.search("germany")
    assert timezones.search("calcutta") == ["Asia/Kolkata"]  # an old name
    assert timezones.canonical("US/Eastern") == "America/New_York"


def test_the_page_offers_a_grouped_select_and_keeps_an_old_zone_name(client: TestClient) -> None:
    page = client.get("/subscribe").text
    assert '<select name="timezone" id="timezone" data-guess="yes"' in page
    assert '<optgroup label="Europe">' in page and ">Berlin (Germany)</option>" in page
    assert 'value="Asia/Kolkata" data-also="Asia/Calcutta"' in page
    assert 'value="Factory"' not in page and 'value="US/Eastern"' not in page
    # A reader stored with an old name sees the zone it stands for, chosen.
    make_subscriber(EMAIL, "politics", "daily", timezone="US/Eastern")
    prefs = client.get(link("preferences")).text
    assert re.search(r'<option value="America/New_York"[^>]* selected>', prefs)
    assert "data-guess" not in prefs


# -- Post/Redirect/Get ---------------------------------------------------------------


def test_unsubscribe_offers_a_pause_or_fewer_emails_first(client: TestClient) -> None:
    make_subscriber(EMAIL, "politics", "daily")
    path = link("unsubscribe")
    page = client.get(path).text
    assert (
        page.index("Pause digests")
        < page.index("Get fewer emails")
        < page.index('value="unsubscribe"')
    )
    weekly = client.post(path, data={"action": "weekly"})
    assert weekly.status_code == 303
    assert re.fullmatch(r"/preferences/[^?]+\?done=weekly", weekly.headers["location"])
    assert "one weekly digest instead" in client.get(weekly.headers["location"]).text
    assert stored().cadence is Cadence.WEEKLY and stored().next_digest_at is not None
    # Already weekly: only the pause is offered.
    assert "Get fewer emails" not in client.get(path).text
    paused = client.post(path, data={"action": "pause"})
    assert paused.status_code == 303 and paused.headers["location"].endswith("?done=paused")
    assert stored().status is SubscriberStatus.PAUSED


def test_unsubscribing_from_the_page_redirects_and_can_be_undone(client: TestClient) -> None:
    make_subscriber(EMAIL, "politics", "weekly", send_weekday=4)
    path = link("unsubscribe")
    left = client.post(path, data={"action": "unsubscribe"})
    assert left.status_code == 303 and left.headers["location"] == path
    assert stored().status is SubscriberStatus.UNSUBSCRIBED
    page = client.get(path).text
    assert "You are unsubscribed" in page and "Back to The Digest" in page
    undo = re.search(r'<form method="post" action="(/resubscribe/[^"]+)">', page)
    assert undo, page
    # Opening the undo link changes nothing; its button does.
    assert "Undo: subscribe me again" in client.get(undo.group(1)).text
    assert stored().status is SubscriberStatus.UNSUBSCRIBED
    back = client.post(undo.group(1))
    assert back.status_code == 303 and back.headers["location"].endswith("?done=resubscribed")
    assert "subscribed again" in client.get(back.headers["location"]).text
    again = stored()
    assert again.status is SubscriberStatus.ACTIVE and again.cadence is Cadence.WEEKLY
    assert again.next_digest_at is not None and [t.slug for t in again.tags] == ["politics"]
    with session_scope() as session:
        assert session.scalars(select(Suppression)).all() == []


def test_the_undo_is_for_a_while_and_never_lifts_a_bounce(client: TestClient) -> None:
    make_subscriber(EMAIL, "politics")
    path = link("unsubscribe")
    client.post(path, data={"action": "unsubscribe"})
    undo = re.search(r'action="(/resubscribe/[^"]+)"', client.get(path).text)
    assert undo
    expired = old_link("resubscribe", 8 * 86400)
    response = client.post(expired)
    assert response.status_code == 400 and "This link has expired" in response.text
    with session_scope() as session:
        suppress(session, EMAIL, SuppressionReason.HARD_BOUNCE)
    response = client.post(undo.group(1))
    assert response.status_code == 400 and "contact the publisher" in response.text
    assert stored().status is SubscriberStatus.UNSUBSCRIBED


def test_one_click_post_still_answers_200_without_a_redirect(client: TestClient) -> None:
    make_subscriber(EMAIL, "politics")
    response = client.post(
        link("unsubscribe"),
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200 and "You are unsubscribed" in response.text


# -- links that no longer work -------------------------------------------------------


def test_dead_links_say_what_to_do_next(client: TestClient) -> None:
    make_subscriber(EMAIL, "politics")
    expired = client.get(old_link("preferences", 181 * 86400))
    assert expired.status_code == 400 and "This link has expired" in expired.text
    assert "sign up again with the same address" in expired.text
    assert 'href="/subscribe"' in expired.text
    response = client.get(old_link("confirm", 49 * 3600))
    assert response.status_code == 400 and "Confirmation links work for 48 hours" in response.text
    assert 'href="/subscribe"' in response.text
    tampered = link("unsubscribe")[:-3] + "abc"
    response = client.get(tampered)
    assert response.status_code == 400 and "Copy the whole link" in response.text
    gone = link("preferences")
    with session_scope() as session:
        session.delete(session.scalars(select(Subscriber)).one())
    response = client.get(gone)
    assert response.status_code == 404 and "no longer exists" in response.text


# -- the preferences page says what happens next ------------------------------------


def test_preferences_say_when_the_next_digest_is_due(client: TestClient) -> None:
    monday = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
    make_subscriber(EMAIL, "politics", "weekly", monday, "America/New_York", 18, "friday")
    page = client.get(link("preferences")).text
    due = stored().next_digest_at
    assert due is not None
    assert "Your next digest is due Friday 6 March at 18:00 (America/New_York time)" in page


def test_preferences_show_paused_and_stopped_plainly(client: TestClient) -> None:
    make_subscriber(EMAIL, "politics")
    path = link("preferences")
    assert "sent as it is published" in client.get(path).text
    client.post(path, data={"action": "pause"})
    page = client.get(path).text
    assert "Your digests are paused" in page and "Resume digests" in page
    with session_scope() as session:
        suppress(session, EMAIL, SuppressionReason.HARD_BOUNCE)
    page = client.get(path).text
    assert "not sending anything to this address because mail to it bounced" in page
    assert "write to digest@news.example.org" in page


def test_undo_links_are_redacted_from_logs() -> None:
    from newsletter.redaction import redact

    line = redact('"POST /resubscribe/eyJhIjoxfQ.Zz.SIGNATURE HTTP/1.1" 303')
    assert "SIGNATURE" not in line and "/resubscribe/[redacted]" in line
