"""The console's reader pages over real HTTP against real databases: the keyset-paged
list with its search and filters, a reader's page with their deliveries and suppression
history, editing every field, suppress, lift and delete with their personal data, and
who may do them."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections import Counter
from html import unescape
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, update

from newsletter.console.models import AuditEntry
from newsletter.db import session_scope
from newsletter.models import Delivery, DeliveryStatus, Tag
from newsletter.tags import get_or_create_tags, parse_tag_names
from subscribers import suppression
from subscribers.models import (
    Subscriber,
    SubscriberStatus,
    SuppressionEvent,
    SuppressionReason,
    subscriber_tags,
)
from subscribers.search import search_subscribers
from subscribers.services import SubscriberInput, add_subscriber, editable_values
from tests.browser import artefact, launch_chromium
from tests.cli_runner import count
from tests.conftest import ScriptedHandler
from tests.console.conftest import (
    ADMIN,
    EDITOR,
    actions,
    browser_sign_in,
    form_token,
    script_problem,
    signed_in,
)
from tests.factories import make_post, make_subscriber, make_tags
from tests.subscribers.test_forget import rows_mentioning

pytestmark = pytest.mark.usefixtures("staff")


@pytest.fixture(autouse=True)
def no_old_history(staff: None) -> None:
    """suppression_events is not among the tables emptied between tests (yet)."""
    with session_scope() as session:
        session.execute(delete(SuppressionEvent))


ROW = re.compile(r'<a href="/admin/subscribers/(\d+)">([^<]+)</a>')
NEXT = re.compile(r'<a href="([^"]+)" rel="next">')


def add_readers(readers: list[tuple[str, str, str, str]]) -> dict[str, int]:
    """(email, name, tags, cadence) rows in one transaction; their ids by address."""
    with session_scope() as session:
        get_or_create_tags(session, parse_tag_names(",".join(r[2] for r in readers)))
        ids = {}
        for email, name, tags, cadence in readers:
            data = SubscriberInput(email, tags, cadence, name)
            ids[email] = add_subscriber(session, data).id
        return ids


def set_status(email: str, status: SubscriberStatus) -> None:
    with session_scope() as session:
        session.execute(update(Subscriber).where(Subscriber.email == email).values(status=status))


def listed(html: str) -> list[str]:
    return [email for _, email in ROW.findall(html)]


def next_link(html: str) -> str | None:
    match = NEXT.search(html)
    return match.group(1).replace("&amp;", "&") if match else None


def token_of(c: TestClient) -> str:
    return form_token(c.get("/admin/").text)


def suppressed(email: str) -> SuppressionReason | None:
    with session_scope() as session:
        row = suppression.find(session, email)
        return row.reason if row else None


def reader_state(reader: int) -> dict[str, Any]:
    """Every column of the reader and their follows with dates: to prove nothing changed."""
    with session_scope() as session:
        row = session.get(Subscriber, reader)
        assert row is not None
        columns = {c.key: getattr(row, c.key) for c in Subscriber.__table__.columns}
        follows = session.execute(
            select(subscriber_tags.c.tag_id, subscriber_tags.c.created_at).where(
                subscriber_tags.c.subscriber_id == reader
            )
        ).all()
        return {**columns, "follows": sorted(follows)}


def edit_form(reader: int) -> dict[str, Any]:
    """The edit form's fields as they are now: post it with some changed."""
    with session_scope() as session:
        row = session.get(Subscriber, reader)
        assert row is not None
        values = editable_values(row)
    return {k: str(v) if isinstance(v, int) else v for k, v in values.items()}


def form_on_page(html: str) -> dict[str, Any]:
    """The edit form as the page fills it in."""
    form: dict[str, Any] = {"tags": re.findall(r'name="tags" value="([^"]+)" checked', html)}
    for name in ("email", "name", "timezone"):
        match = re.search(rf'name="{name}"[^>]* value="([^"]*)"', html)
        assert match, name
        form[name] = unescape(match.group(1))
    for name in ("status", "cadence", "send_hour", "send_weekday"):
        options = html[html.index(f'<select name="{name}"') :].split("</select>")[0]
        match = re.search(r'<option value="([^"]+)" selected>', options)
        assert match, name
        form[name] = match.group(1)
    return form


def delivery_counts() -> Counter[tuple[int, str]]:
    """Deliveries by digest and status: what the archive counts."""
    with session_scope() as session:
        rows = session.execute(select(Delivery.digest_id, Delivery.status))
        return Counter((digest, status.value) for digest, status in rows)


def test_keyset_pages_give_every_reader_once_in_order() -> None:
    emails = [f"reader{n:03d}@example.org" for n in range(120)]
    shuffled = random.Random(8).sample(emails, len(emails))
    add_readers([(e, "", "news", "daily") for e in shuffled])
    c = signed_in(ADMIN)
    seen: list[str] = []
    url: str | None = "/admin/subscribers"
    pages = 0
    while url is not None:
        response = c.get(url)
        assert response.status_code == 200
        seen += listed(response.text)
        url = next_link(response.text)
        pages += 1
    assert pages == 3
    assert seen == sorted(emails)
    # The same search from the service the CLI and the API use.
    with session_scope() as session:
        first = search_subscribers(session, limit=50)
        assert first.next_after == sorted(emails)[49]
        last = search_subscribers(session, after=sorted(emails)[99], limit=50)
        assert [r.subscriber.email for r in last.rows] == sorted(emails)[100:]
        assert last.next_after is None


def test_prefix_search_by_address_and_by_name() -> None:
    add_readers(
        [
            ("ana@example.org", "Zoe Park", "news", "daily"),
            ("anabel@example.org", "", "news", "daily"),
            ("bob@example.org", "Ana Lima", "news", "daily"),
            ("carla@example.org", "Banana", "news", "daily"),
        ]
    )
    c = signed_in(ADMIN)
    hits = ["ana@example.org", "anabel@example.org", "bob@example.org"]
    assert listed(c.get("/admin/subscribers?q=ana").text) == hits
    assert listed(c.get("/admin/subscribers?q=ANA").text) == hits
    assert listed(c.get("/admin/subscribers?q=anab").text) == ["anabel@example.org"]
    assert listed(c.get("/admin/subscribers?q=zoe").text) == ["ana@example.org"]
    assert listed(c.get("/admin/subscribers?q=nobody").text) == []
    # A NUL (which PostgreSQL refuses outright) is a clear 400, never a 500.
    for query in ("q=ana%00", "after=ana%00@example.org", "q=%01"):
        response = c.get(f"/admin/subscribers?{query}")
        assert response.status_code == 400, query
        assert "no address or name holds" in response.text


def test_tag_status_and_cadence_filters() -> None:
    add_readers(
        [
            ("a@example.org", "", "climate", "daily"),
            ("b@example.org", "", "climate, health", "weekly"),
            ("c@example.org", "", "health", "daily"),
            ("d@example.org", "", "climate", "immediate"),
        ]
    )
    set_status("b@example.org", SubscriberStatus.PAUSED)
    c = signed_in(ADMIN)

    def find(query: str) -> list[str]:
        response = c.get("/admin/subscribers?" + query)
        assert response.status_code == 200
        return listed(response.text)

    assert find("tag=climate") == ["a@example.org", "b@example.org", "d@example.org"]
    assert find("tag=health&status=active") == ["c@example.org"]
    assert find("status=paused") == ["b@example.org"]
    assert find("cadence=daily") == ["a@example.org", "c@example.org"]
    assert find("tag=climate&cadence=daily&q=a") == ["a@example.org"]
    assert find("tag=no-such-tag") == []
    # Filters survive paging: the next link keeps them.
    many = [(f"z{n:02d}@example.org", "", "health", "weekly") for n in range(55)]
    add_readers(many)
    html = c.get("/admin/subscribers?tag=health&cadence=weekly").text
    link = next_link(html)
    assert link is not None and "tag=health" in link and "cadence=weekly" in link
    assert len(listed(html)) == 50 and len(listed(c.get(link).text)) == 6  # b@ and 55 z
    # A status or cadence that does not exist is refused with a page, not a traceback.
    bad = c.get("/admin/subscribers?status=asleep")
    assert bad.status_code == 400 and "unknown status" in bad.text
    assert c.get("/admin/subscribers?cadence=hourly").status_code == 400


def test_list_shows_each_readers_fields_tags_and_suppression() -> None:
    add_readers([("ana@example.org", "Ana Lima", "climate, health", "weekly")])
    with session_scope() as session:
        suppression.suppress(session, "ana@example.org", SuppressionReason.HARD_BOUNCE)
    html = signed_in(ADMIN).get("/admin/subscribers").text
    row = html[html.index("ana@example.org") :].split("</tr>")[0]
    for shown in ("Ana Lima", "active", "weekly", "climate", "health", "hard_bounce"):
        assert shown in row


def test_editor_is_refused_the_list_the_reader_page_and_every_action() -> None:
    ids = add_readers([("ana@example.org", "", "news", "daily")])
    reader = ids["ana@example.org"]
    c = signed_in(EDITOR)
    token = token_of(c)
    for url in ("/admin/subscribers", f"/admin/subscribers/{reader}"):
        assert c.get(url).status_code == 403
    before = reader_state(reader)
    for url in ("delete", "edit"):
        assert c.get(f"/admin/subscribers/{reader}/{url}").status_code == 403
    for action in ("suppress", "lift", "delete"):
        response = c.post(f"/admin/subscribers/{reader}/{action}", data={"csrf_token": token})
        assert response.status_code == 403
    edit = {**edit_form(reader), "name": "Changed", "cadence": "weekly", "csrf_token": token}
    assert c.post(f"/admin/subscribers/{reader}/edit", data=edit).status_code == 403
    assert "Subscribers" not in c.get("/admin/").text
    assert count(Subscriber) == 1 and suppressed("ana@example.org") is None
    assert reader_state(reader) == before
    assert [a for a, _ in actions()] == ["login"]


def test_without_the_csrf_token_nothing_changes() -> None:
    ids = add_readers([("ana@example.org", "", "news", "daily")])
    reader = ids["ana@example.org"]
    c = signed_in(ADMIN)
    before = reader_state(reader)
    for action in ("suppress", "delete"):
        url = f"/admin/subscribers/{reader}/{action}"
        assert c.post(url).status_code == 403
        assert c.post(url, data={"csrf_token": "not-the-token"}).status_code == 403
    edit = {**edit_form(reader), "name": "Changed", "status": "paused"}
    url = f"/admin/subscribers/{reader}/edit"
    assert c.post(url, data=edit).status_code == 403
    assert c.post(url, data={**edit, "csrf_token": "not-the-token"}).status_code == 403
    assert reader_state(reader) == before
    with session_scope() as session:
        suppression.suppress(session, "ana@example.org", SuppressionReason.MANUAL)
    assert c.post(f"/admin/subscribers/{reader}/lift").status_code == 403
    assert count(Subscriber) == 1
    assert suppressed("ana@example.org") is SuppressionReason.MANUAL
    assert [a for a, _ in actions()] == ["login"]


def test_suppress_lift_and_delete_do_what_they_say_and_are_audited() -> None:
    ids = add_readers(
        [("ana@example.org", "Ana Lima", "news", "daily"), ("bob@example.org", "", "news", "daily")]
    )
    reader = ids["ana@example.org"]
    c = signed_in(ADMIN)
    token = token_of(c)
    url = f"/admin/subscribers/{reader}"

    response = c.post(f"{url}/suppress", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303
    assert suppressed("ana@example.org") is SuppressionReason.MANUAL
    page = c.get(response.headers["location"]).text
    assert "is suppressed" in page and "Suppressed (manual)" in page

    response = c.post(f"{url}/lift", data={"csrf_token": token})
    assert response.status_code == 200 and "Not suppressed." in response.text
    assert suppressed("ana@example.org") is None
    # The history, newest first, with the admin who did each.
    history = response.text[response.text.index('id="suppression-history"') :]
    rows = history.split("</tbody>")[0].split("<tr>")[2:]
    assert len(rows) == 2
    assert "lifted" in rows[0] and "manual" in rows[0] and ADMIN in rows[0]
    assert "added" in rows[1] and "manual" in rows[1] and ADMIN in rows[1]
    # Lifting what is not suppressed is refused, and changes nothing.
    assert c.post(f"{url}/lift", data={"csrf_token": token}).status_code == 400

    confirm = c.get(f"{url}/delete")
    assert confirm.status_code == 200 and "Delete for good" in confirm.text
    assert count(Subscriber) == 2  # asking is not deleting
    response = c.post(f"{url}/delete", data={"csrf_token": token})
    assert response.status_code == 200 and "are deleted" in response.text
    with session_scope() as session:
        left = session.scalars(select(Subscriber.email)).all()
    assert left == ["bob@example.org"]
    assert c.get(url).status_code == 404
    assert c.post(f"{url}/suppress", data={"csrf_token": token}).status_code == 404

    # The log names the reader by number: it keeps no personal data of theirs.
    assert actions() == [
        ("login", ADMIN),
        ("subscriber_suppressed", f"subscriber #{reader}"),
        ("suppression_lifted", f"subscriber #{reader}"),
        ("subscriber_deleted", f"subscriber #{reader}"),
    ]


def test_reader_page_shows_fields_tags_and_a_failed_delivery_with_its_smtp_reply(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    reply = "550 5.1.1 <ana@example.org>: no such user"
    smtp.replies["ana@example.org"] = [reply]
    reader = make_subscriber("ana@example.org", "Climate, Health", now=t0, name="Ana Lima")
    make_post("climate", now=t0 + dt.timedelta(hours=1))
    with session_scope() as session:
        delivery = session.scalars(select(Delivery)).one()
        assert delivery.status is DeliveryStatus.FAILED
        digest_id = delivery.digest_id

    html = signed_in(ADMIN).get(f"/admin/subscribers/{reader}").text
    for shown in ("Ana Lima", "immediate", "UTC", "climate", "health"):
        assert shown in html
    # A permanent refusal suppressed the address; the page says so.
    assert "Suppressed (hard_bounce)" in html
    row = html[html.index('id="deliveries"') :].split("</tbody>")[0]
    assert f'<a href="/admin/archive/{digest_id}">#{digest_id}</a>' in row and "failed" in row
    assert "550 5.1.1 &lt;ana@example.org&gt;: no such user" in row
    assert "<td>1</td>" in row  # one attempt
    # The bounce is in the suppression history, put there by the sender.
    history = html[html.index('id="suppression-history"') :].split("</tbody>")[0]
    assert "added" in history and "hard_bounce" in history and "smtp reply" in history


def test_deleting_a_reader_keeps_the_counts_and_no_personal_data(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    """The ledger keeps anonymous rows, so the archive's counts stay true; no table
    keeps the reader's address or name, the audit log included."""
    smtp.replies["ana@example.org"] = ["250 OK", "550 5.1.1 <ana@example.org>: no such user"]
    reader = make_subscriber("ana@example.org", "climate", now=t0, name="Ana Quintela")
    make_subscriber("bob@example.org", "climate", now=t0)
    make_post("climate", now=t0 + dt.timedelta(hours=1))
    make_post("climate", now=t0 + dt.timedelta(hours=2))
    c = signed_in(ADMIN)
    token = token_of(c)
    url = f"/admin/subscribers/{reader}"
    # The admin works on the reader first: every action leaves a trace somewhere.
    assert c.post(f"{url}/lift", data={"csrf_token": token}).status_code == 200
    edit = {**edit_form(reader), "name": "Ana Quintela Lima", "cadence": "daily"}
    assert c.post(f"{url}/edit", data={**edit, "csrf_token": token}).status_code == 200
    counts = delivery_counts()
    assert Counter(status for _, status in counts.elements()) == {"sent": 3, "failed": 1}

    confirm = c.get(f"{url}/delete")
    assert "2 deliveries stay in the ledger" in confirm.text
    response = c.post(f"{url}/delete", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303

    assert count(Subscriber) == 1 and count(Delivery) == 4
    assert delivery_counts() == counts
    assert rows_mentioning("ana@example.org", "Ana Quintela") == []
    assert actions()[-1] == ("subscriber_deleted", f"subscriber #{reader}")


def test_admin_edits_every_field_and_the_audit_holds_no_personal_value(t0: dt.datetime) -> None:
    make_tags("climate, health, science")
    reader = make_subscriber("ana@example.org", "climate, science", "daily", t0, name="Ana Lima")
    old_uid = reader_state(reader)["uid"]
    since = follow_dates(reader)
    c = signed_in(ADMIN)
    url = f"/admin/subscribers/{reader}"
    page = c.get(f"{url}/edit")
    assert page.status_code == 200
    assert form_on_page(page.text) == edit_form(reader)
    data = {
        "csrf_token": form_token(page.text),
        "email": "  Ana.Quintela@Example.ORG ",
        "name": "Ana Quintela",
        "status": "paused",
        "cadence": "weekly",
        "timezone": "Europe/Lisbon",
        "send_hour": "7",
        "send_weekday": "4",
        "tags": ["climate", "health"],
    }
    before = dt.datetime.now(dt.UTC)
    response = c.post(f"{url}/edit", data=data, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"{url}?notice=saved"
    shown = c.get(response.headers["location"]).text
    assert "Changes saved." in shown and "<h1>ana.quintela@example.org</h1>" in shown

    with session_scope() as session:
        row = session.get(Subscriber, reader)
        assert row is not None
        # Normalised as at sign-up; a new key, so links mailed to the old address die.
        assert row.email == "ana.quintela@example.org" and row.uid != old_uid
        assert (row.name, row.status, row.cadence.value) == ("Ana Quintela", "paused", "weekly")
        assert (row.timezone, row.send_hour, row.send_weekday) == ("Europe/Lisbon", 7, 4)
        # The next digest moved to the new slot: Friday, 07:00 in Lisbon.
        assert row.next_digest_at is not None and row.next_digest_at > before
        local = row.next_digest_at.astimezone(ZoneInfo("Europe/Lisbon"))
        assert (local.weekday(), local.hour, local.minute) == (4, 7, 0)
        assert row.next_digest_at - before <= dt.timedelta(days=7)
    follows = follow_dates(reader)
    assert sorted(follows) == ["climate", "health"]
    assert follows["climate"] == since["climate"]  # kept: followed since it was
    assert follows["health"] >= before  # new: from now on

    with session_scope() as session:
        entry = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())).first()
        assert entry is not None
        assert (entry.action, entry.target) == ("subscriber_edited", f"subscriber #{reader}")
        detail = entry.detail
    assert detail["fields"] == sorted(
        ["email", "name", "status", "cadence", "timezone", "send_hour", "send_weekday", "tags"]
    )
    assert detail["changes"]["cadence"] == ["daily", "weekly"]
    assert detail["changes"]["tags"] == [["climate", "science"], ["climate", "health"]]
    assert "email" not in detail["changes"] and "name" not in detail["changes"]
    logged = json.dumps(detail).lower()
    assert "example.org" not in logged and "quintela" not in logged and "ana lima" not in logged

    # Saving the form as it is changes nothing and logs nothing.
    entries = len(actions())
    again = {**edit_form(reader), "csrf_token": data["csrf_token"]}
    response = c.post(f"{url}/edit", data=again, follow_redirects=False)
    assert response.headers["location"] == f"{url}?notice=unchanged"
    assert len(actions()) == entries


def follow_dates(reader: int) -> dict[str, dt.datetime]:
    with session_scope() as session:
        rows = session.execute(
            select(Tag.slug, subscriber_tags.c.created_at)
            .join(subscriber_tags, subscriber_tags.c.tag_id == Tag.id)
            .where(subscriber_tags.c.subscriber_id == reader)
        )
        return {slug: since for slug, since in rows}


def test_status_changes_follow_the_readers_own_rules(t0: dt.datetime) -> None:
    reader = make_subscriber("ana@example.org", "climate", "daily", t0)
    c = signed_in(ADMIN)
    token = token_of(c)
    url = f"/admin/subscribers/{reader}"

    def post_status(status: str) -> int:
        data = {**edit_form(reader), "status": status, "csrf_token": token}
        return c.post(f"{url}/edit", data=data).status_code

    # Unsubscribing them is the reader's own unsubscribe: no digest, and suppressed.
    assert post_status("unsubscribed") == 200
    state = reader_state(reader)
    assert state["status"] is SubscriberStatus.UNSUBSCRIBED and state["next_digest_at"] is None
    assert state["unsubscribed_at"] is not None
    assert suppressed("ana@example.org") is SuppressionReason.UNSUBSCRIBED
    with session_scope() as session:
        events = suppression.history(session, "ana@example.org")
        assert [(e.action, e.reason, e.actor) for e in events] == [("added", "unsubscribed", ADMIN)]

    # They asked to stop: bringing them back needs that lifted on purpose first.
    response = c.post(
        f"{url}/edit", data={**edit_form(reader), "status": "active", "csrf_token": token}
    )
    assert response.status_code == 400
    assert re.search(r'id="status-error">[^<]*lift the suppression', response.text)
    assert reader_state(reader) == state
    assert c.post(f"{url}/lift", data={"csrf_token": token}).status_code == 200
    lifted = dt.datetime.now(dt.UTC)
    assert post_status("active") == 200
    state = reader_state(reader)
    assert state["status"] is SubscriberStatus.ACTIVE and state["unsubscribed_at"] is None
    # Eligibility starts now, as after a confirmation: no backlog of what they missed.
    assert state["subscribed_at"] >= lifted and state["next_digest_at"] > lifted

    # Pausing keeps the slot; pending is for sign-ups only.
    assert post_status("paused") == 200
    assert reader_state(reader)["status"] is SubscriberStatus.PAUSED
    assert post_status("pending") == 400
    assert reader_state(reader)["status"] is SubscriberStatus.PAUSED


FIELD_ERROR = re.compile(r'<span class="field-error" id="([a-z_]+)-error">([^<]*)</span>')
LOOKALIKE = "ana@ex\u0430mple.org"  # a Cyrillic "a" in a Latin name
BAD_EDITS = [
    ("timezone", "Mars/Olympus_Mons", "unknown time zone"),
    ("timezone", "+02:00", "unknown time zone"),
    ("send_hour", "25", "send hour must be 0-23"),
    ("send_hour", "seven", "send hour must be a whole number"),
    ("send_weekday", "someday", "unknown weekday"),
    ("email", " BOB@Example.org ", "another reader already has the address bob@example.org"),
    ("email", LOOKALIKE, "look-alike"),
    ("email", "not an address", "invalid email address"),
    ("email", "carla@example.org", "on the suppression list"),
    ("tags", [], "at least one tag"),
    ("tags", ["no-such-tag"], "unknown tag"),
    ("status", "asleep", "unknown status"),
    ("cadence", "hourly", "unknown cadence"),
]


def test_a_bad_field_is_refused_beside_it_and_nothing_is_saved() -> None:
    ids = add_readers(
        [
            ("ana@example.org", "Ana Lima", "climate", "daily"),
            ("bob@example.org", "", "news", "daily"),
        ]
    )
    with session_scope() as session:
        suppression.suppress(session, "carla@example.org", SuppressionReason.COMPLAINT)
    reader = ids["ana@example.org"]
    before = reader_state(reader)
    c = signed_in(ADMIN)
    token = token_of(c)
    for field, value, message in BAD_EDITS:
        data = {**edit_form(reader), "name": "A New Name", "cadence": "weekly", field: value}
        response = c.post(f"/admin/subscribers/{reader}/edit", data={**data, "csrf_token": token})
        assert response.status_code == 400, (field, value)
        errors = dict(FIELD_ERROR.findall(response.text))
        assert list(errors) == [field], (field, value)
        assert message in unescape(errors[field]), (field, value)
        assert "Nothing was saved" in response.text
        assert 'value="A New Name"' in response.text  # what was typed is kept
        assert reader_state(reader) == before
    assert [a for a, _ in actions()] == ["login"]


def test_every_bad_field_is_named_at_once() -> None:
    reader = add_readers([("ana@example.org", "", "climate", "daily")])["ana@example.org"]
    c = signed_in(ADMIN)
    data = {**edit_form(reader), "timezone": "Nowhere/Land", "send_hour": "25", "tags": []}
    response = c.post(f"/admin/subscribers/{reader}/edit", data={**data, "csrf_token": token_of(c)})
    assert response.status_code == 400
    for field in ("timezone", "send_hour", "tags"):
        assert f'id="{field}-error"' in response.text
        assert f'aria-describedby="{field}-error"' in response.text


def test_admin_finds_a_reader_and_suppresses_them_in_the_browser(
    console_server: str, tmp_path: Path
) -> None:
    base = console_server
    ids = add_readers(
        [
            ("ana@example.org", "Ana Lima", "climate", "daily"),
            ("bob@example.org", "Bob Stone", "climate", "weekly"),
            ("carla@example.org", "Ana Costa", "health", "daily"),
        ]
    )
    reader = ids["ana@example.org"]
    problems: list[str] = []
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("console", script_problem(problems))
        browser_sign_in(page, base, ADMIN)

        page.click("nav >> text=Subscribers")
        page.wait_for_url(f"{base}/admin/subscribers")
        assert page.locator("#subscribers tbody tr").count() == 3
        page.fill("input[name=q]", "ana")
        page.select_option("select[name=tag]", "climate")
        page.click("button:has-text('Search')")
        page.wait_for_url("**/admin/subscribers?q=ana*")
        rows = page.locator("#subscribers tbody tr")
        assert rows.count() == 1 and "Ana Lima" in rows.inner_text()

        page.click("text=ana@example.org")
        assert page.locator("h1").inner_text() == "ana@example.org"
        assert "Not suppressed." in page.locator("#suppression").inner_text()
        page.click("button:has-text('Suppress this address')")
        page.wait_for_url("**?notice=suppressed")
        assert "Suppressed (manual)" in page.locator("#suppression").inner_text()
        page.screenshot(path=str(artefact("console-reader.png")), full_page=True)
    assert (artefact("console-reader.png")).stat().st_size > 0
    assert problems == []
    assert suppressed("ana@example.org") is SuppressionReason.MANUAL
    assert actions()[-1] == ("subscriber_suppressed", f"subscriber #{reader}")


def test_admin_edits_a_readers_tags_and_cadence_in_the_browser(
    console_server: str, tmp_path: Path
) -> None:
    base = console_server
    make_tags("climate, health, science")
    reader = add_readers([("ana@example.org", "Ana Lima", "climate", "daily")])["ana@example.org"]
    problems: list[str] = []
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", script_problem(problems))
        browser_sign_in(page, base, ADMIN)
        page.goto(f"{base}/admin/subscribers/{reader}")
        page.click("text=Edit this reader")
        page.wait_for_url(f"{base}/admin/subscribers/{reader}/edit")

        page.uncheck("input[name=tags][value=climate]")
        page.check("input[name=tags][value=health]")
        page.check("input[name=tags][value=science]")
        page.select_option("select[name=cadence]", "weekly")
        page.select_option("select[name=send_weekday]", "2")
        # A time zone that does not exist: the form comes back with the reason beside it.
        page.fill("input[name=timezone]", "Europe/Atlantis")
        page.click("button:has-text('Save')")
        assert "unknown time zone" in page.locator("#timezone-error").inner_text()
        assert page.is_checked("input[name=tags][value=health]")  # nothing typed is lost
        page.screenshot(path=str(artefact("console-reader-edit-error.png")), full_page=True)
        page.fill("input[name=timezone]", "Europe/Lisbon")
        page.click("button:has-text('Save')")
        page.wait_for_url("**?notice=saved")

        fields = page.locator("#fields").inner_text()
        assert "weekly" in fields and "Europe/Lisbon" in fields and "Wednesday" in fields
        follows = page.locator("#follows").inner_text()
        assert "health" in follows and "science" in follows and "climate" not in follows
        page.screenshot(path=str(artefact("console-reader-edit.png")), full_page=True)
    for name in ("console-reader-edit-error.png", "console-reader-edit.png"):
        assert artefact(name).stat().st_size > 0
    assert problems == []
    state = reader_state(reader)
    assert state["cadence"].value == "weekly" and state["send_weekday"] == 2
    assert actions()[-1] == ("subscriber_edited", f"subscriber #{reader}")
