"""The console's reader pages over real HTTP against real databases: the keyset-paged
list with its search and filters, a reader's page, suppress, lift and delete, and who
may do them."""

from __future__ import annotations

import datetime as dt
import random
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from newsletter.db import session_scope
from newsletter.models import Delivery, DeliveryStatus
from newsletter.tags import get_or_create_tags, parse_tag_names
from subscribers import suppression
from subscribers.models import Subscriber, SubscriberStatus, SuppressionReason
from subscribers.search import search_subscribers
from subscribers.services import SubscriberInput, add_subscriber
from tests.browser import launch_chromium
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
from tests.factories import make_post, make_subscriber

pytestmark = pytest.mark.usefixtures("staff")

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
    assert c.get(f"/admin/subscribers/{reader}/delete").status_code == 403
    for action in ("suppress", "lift", "delete"):
        response = c.post(f"/admin/subscribers/{reader}/{action}", data={"csrf_token": token})
        assert response.status_code == 403
    assert "Subscribers" not in c.get("/admin/").text
    assert count(Subscriber) == 1 and suppressed("ana@example.org") is None
    assert [a for a, _ in actions()] == ["login"]


def test_without_the_csrf_token_nothing_changes() -> None:
    ids = add_readers([("ana@example.org", "", "news", "daily")])
    reader = ids["ana@example.org"]
    c = signed_in(ADMIN)
    for action in ("suppress", "delete"):
        url = f"/admin/subscribers/{reader}/{action}"
        assert c.post(url).status_code == 403
        assert c.post(url, data={"csrf_token": "not-the-token"}).status_code == 403
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

    assert actions() == [
        ("login", ADMIN),
        ("subscriber_suppressed", "ana@example.org"),
        ("suppression_lifted", "ana@example.org"),
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
    assert f"#{digest_id}" in row and "failed" in row
    assert "550 5.1.1 &lt;ana@example.org&gt;: no such user" in row


def test_deleting_a_reader_deletes_their_deliveries_too(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    """Today the ledger rows cascade with the reader (no anonymous counts are kept)."""
    reader = make_subscriber("ana@example.org", "climate", now=t0)
    make_post("climate", now=t0 + dt.timedelta(hours=1))
    assert count(Delivery) == 1
    c = signed_in(ADMIN)
    c.post(f"/admin/subscribers/{reader}/delete", data={"csrf_token": token_of(c)})
    assert count(Subscriber) == 0 and count(Delivery) == 0


def test_admin_finds_a_reader_and_suppresses_them_in_the_browser(
    console_server: str, tmp_path: Path
) -> None:
    base = console_server
    add_readers(
        [
            ("ana@example.org", "Ana Lima", "climate", "daily"),
            ("bob@example.org", "Bob Stone", "climate", "weekly"),
            ("carla@example.org", "Ana Costa", "health", "daily"),
        ]
    )
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
        page.screenshot(path=str(tmp_path / "console-reader.png"), full_page=True)
    assert (tmp_path / "console-reader.png").stat().st_size > 0
    assert problems == []
    assert suppressed("ana@example.org") is SuppressionReason.MANUAL
    assert actions()[-1] == ("subscriber_suppressed", "ana@example.org")
