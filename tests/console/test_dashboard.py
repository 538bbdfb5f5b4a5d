"""The dashboard over real HTTP against both databases: its figures on a small known
data set, the per-day charts, the send's progress, failures with the SMTP reply and
who may see whose, the short-lived cache; and the page at phone and desktop width in
a real browser."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update

from newsletter import stats
from newsletter.console.dashboard import nice_top
from newsletter.db import session_scope, utcnow
from newsletter.models import Cadence, Delivery, DeliveryStatus, Digest
from subscribers.models import Subscriber, SubscriberStatus
from subscribers.search import filter_clauses, search_subscribers
from tests.browser import OUTSIDE_VIEWPORT_JS, artefact, launch_chromium
from tests.console.conftest import ADMIN, EDITOR, browser_sign_in, script_problem, signed_in
from tests.factories import make_subscriber, make_tags

pytestmark = pytest.mark.usefixtures("staff")

QUEUED, SENDING, SENT, FAILED, SKIPPED = (
    DeliveryStatus.QUEUED,
    DeliveryStatus.SENDING,
    DeliveryStatus.SENT,
    DeliveryStatus.FAILED,
    DeliveryStatus.SKIPPED,
)
BOUNCE = "550 5.1.1 <dee@example.org>: Recipient address rejected: User unknown"
FULL = "552 5.2.2 Mailbox full"


@pytest.fixture(autouse=True)
def fresh_counts() -> Iterator[None]:
    """Each test counts its own rows, not what an earlier test left in the cache."""
    stats.clear_cache()
    yield
    stats.clear_cache()


@dataclass(frozen=True)
class Known:
    now: dt.datetime
    readers: dict[str, int]
    digests: dict[str, int]
    created: dict[str, dt.datetime]


def add_digest(created: dt.datetime, outcomes: dict[int, tuple[DeliveryStatus, str | None]]) -> int:
    """A digest planned at `created`, with one delivery per reader in `outcomes`."""
    with session_scope() as session:
        digest = Digest(
            content_key=secrets.token_hex(16),
            cadence=Cadence.DAILY,
            post_ids=[],
            subject=f"Digest of {created:%d %b}",
            html="<p>x</p>",
            text="x",
            created_at=created,
        )
        session.add(digest)
        session.flush()
        session.execute(
            insert(Delivery),
            [
                {
                    "subscriber_id": reader,
                    "digest_id": digest.id,
                    "status": status,
                    "last_error": error,
                    "message_id": f"<{secrets.token_hex(8)}@news.example.org>",
                    "created_at": created,
                    "updated_at": created + dt.timedelta(minutes=3),
                    "sent_at": created + dt.timedelta(minutes=2) if status is SENT else None,
                }
                for reader, (status, error) in outcomes.items()
            ],
        )
        return digest.id


def set_status(reader: int, status: SubscriberStatus) -> None:
    with session_scope() as session:
        session.execute(update(Subscriber).where(Subscriber.id == reader).values(status=status))


@pytest.fixture
def known() -> Known:
    """Six readers, four tags (one followed by nobody), three digests: one five days
    ago, one yesterday, and one ten minutes ago still being sent."""
    make_tags("sport")
    readers = {
        "ana": make_subscriber("ana@example.org", "climate, health", "daily"),
        "bob": make_subscriber("bob@example.org", "climate", "weekly"),
        "cid": make_subscriber("cid@example.org", "climate, data", "daily"),
        "dee": make_subscriber("dee@example.org", "health", "immediate"),
        "eve": make_subscriber("eve@example.org", "climate", "daily"),
        "fay": make_subscriber("fay@example.org", "health", "immediate"),
    }
    set_status(readers["cid"], SubscriberStatus.PAUSED)
    set_status(readers["dee"], SubscriberStatus.UNSUBSCRIBED)
    set_status(readers["eve"], SubscriberStatus.PENDING)
    r = readers
    now = utcnow()
    created = {
        "older": now - dt.timedelta(days=5),
        "yesterday": now - dt.timedelta(days=1),
        "current": now - dt.timedelta(minutes=10),
    }
    digests = {
        "older": add_digest(created["older"], {r["ana"]: (SENT, None), r["bob"]: (SENT, None)}),
        "yesterday": add_digest(
            created["yesterday"],
            {
                r["ana"]: (SENT, None),
                r["bob"]: (SENT, None),
                r["cid"]: (SENT, None),
                r["dee"]: (FAILED, BOUNCE),
            },
        ),
        "current": add_digest(
            created["current"],
            {
                r["ana"]: (QUEUED, None),
                r["bob"]: (SENDING, None),
                r["cid"]: (SENT, None),
                r["dee"]: (FAILED, FULL),
                r["eve"]: (SKIPPED, None),
                r["fay"]: (SENT, None),
            },
        ),
    }
    return Known(now, readers, digests, created)


# -- the figures ------------------------------------------------------------------


def test_reader_counts_by_status_cadence_and_tag(known: Known) -> None:
    with session_scope() as session:
        counts = stats.reader_counts(session)
    assert counts.total == 6
    assert {s: counts.in_status(s) for s in SubscriberStatus} == {
        SubscriberStatus.ACTIVE: 3,
        SubscriberStatus.PAUSED: 1,
        SubscriberStatus.UNSUBSCRIBED: 1,
        SubscriberStatus.PENDING: 1,
    }
    assert counts.by_status[SubscriberStatus.ACTIVE] == {
        Cadence.IMMEDIATE: 1,
        Cadence.DAILY: 1,
        Cadence.WEEKLY: 1,
    }
    assert [(t.slug, t.followers) for t in counts.tags] == [
        ("climate", 4),
        ("health", 3),
        ("data", 1),
        ("sport", 0),
    ]


def test_thirty_days_each_present_with_digests_sent_and_failed(known: Known) -> None:
    with session_scope() as session:
        days = stats.daily_counts(session, known.now)
    assert len(days) == 30
    today = known.now.date()
    assert [d.day for d in days] == [today - dt.timedelta(days=29 - i) for i in range(30)]
    expected: dict[dt.date, Counter[str]] = {d.day: Counter() for d in days}
    rows = {
        "older": {"digests": 1, "sent": 2},
        "yesterday": {"digests": 1, "sent": 3, "failed": 1},
        "current": {"digests": 1, "sent": 2, "failed": 1},
    }
    for name, counted in rows.items():
        expected[known.created[name].date()].update(counted)
    assert {d.day: (d.digests, d.sent, d.failed) for d in days} == {
        day: (c["digests"], c["sent"], c["failed"]) for day, c in expected.items()
    }
    assert sum(d.messages for d in days) == 9


def test_the_send_in_progress_and_the_latest_one(known: Known) -> None:
    with session_scope() as session:
        progress = stats.send_progress(session, known.now)
    assert progress.running
    assert progress.since == known.created["current"]
    assert progress.counts == {QUEUED: 1, SENDING: 1, SENT: 2, FAILED: 1, SKIPPED: 1}
    assert (progress.done, progress.total, progress.percent) == (4, 6, 66)

    with session_scope() as session:
        session.execute(
            update(Delivery).where(Delivery.status.in_([QUEUED, SENDING])).values(status=SENT)
        )
    with session_scope() as session:
        latest = stats.send_progress(session, known.now)
    assert not latest.running
    assert latest.counts == {QUEUED: 0, SENDING: 0, SENT: 4, FAILED: 1, SKIPPED: 1}
    assert latest.percent == 100
    # A day later nothing is "current" any more.
    with session_scope() as session:
        later = stats.send_progress(session, known.now + dt.timedelta(days=2))
    assert later.since is None and later.total == 0


def test_recent_failures_newest_first_with_the_reply(known: Known) -> None:
    with session_scope() as session:
        failures = stats.recent_failures(session)
    assert [(f.digest_id, f.error, f.email) for f in failures] == [
        (known.digests["current"], FULL, "dee@example.org"),
        (known.digests["yesterday"], BOUNCE, "dee@example.org"),
    ]
    hidden = failures[1].without_reader()
    assert hidden.email is None and hidden.subscriber_id is None
    assert hidden.error == "550 5.1.1 <[address]>: Recipient address rejected: User unknown"


def test_nice_top_of_the_scale() -> None:
    assert [nice_top(v) for v in (0, 1, 2, 3, 7, 10, 11, 69_146, 100_000)] == [
        1,
        1,
        2,
        5,
        10,
        10,
        20,
        100_000,
        100_000,
    ]


# -- the page ---------------------------------------------------------------------


def section(html: str, id: str) -> str:
    match = re.search(rf'<section class="panel" id="{id}".*?</section>', html, re.S)
    assert match, f"no section #{id}"
    return match.group(0)


def cells(html: str, table_id: str) -> dict[str, str]:
    """A two-column table as {row header text: first cell}, tags stripped."""
    match = re.search(rf'<table[^>]*id="{table_id}".*?</table>', html, re.S)
    assert match, f"no table #{table_id}"
    rows = re.findall(
        r'<th scope="row">(.*?)</th>\s*<td class="num[^"]*">([^<]*)</td>', match.group(0), re.S
    )
    return {re.sub(r"<[^>]+>", "", k).strip(): v for k, v in rows}


def test_admin_dashboard_shows_the_figures(known: Known) -> None:
    html = signed_in(ADMIN).get("/admin/").text
    readers = section(html, "readers")
    assert cells(readers, "by-status") == {
        "pending": "1",
        "active": "3",
        "paused": "1",
        "unsubscribed": "1",
        "all": "6",
    }
    assert cells(readers, "by-cadence") == {"immediate": "1", "daily": "1", "weekly": "1"}
    assert list(cells(readers, "by-tag").items()) == [
        ("climate", "4"),
        ("health", "3"),
        ("data", "1"),
        ("sport", "0"),
    ]
    assert 'href="/admin/subscribers?tag=climate"' in readers
    assert "Counted at" in readers

    days = section(html, "days")
    messages = re.search(r'<figure class="chart" id="chart-messages">.*?</figure>', days, re.S)
    assert messages
    chart = messages.group(0)
    assert chart.count('<g class="day">') == 30
    assert 'role="img" aria-labelledby="messages-title messages-desc"' in chart
    assert '<title id="messages-title">Messages per day</title>' in chart
    assert "7 sent, 2 failed." in chart  # the description: every day's total
    assert 'class="bar-failed"' in chart
    assert re.search(r"<desc id=\"digests-desc\">[^<]*: 3 digests\.", days)
    assert len(re.findall(r'<tr><th scope="row">\d{4}-\d\d-\d\d</th>', days)) == 30
    assert ' style="' not in html  # the CSP forbids inline styles

    send = section(html, "send")
    assert "Send in progress" in send
    assert '<progress id="send-progress" max="6" value="4">' in send
    assert "66%" in send
    for status, count in [
        ("queued", 1),
        ("sending", 1),
        ("sent", 2),
        ("failed", 1),
        ("skipped", 1),
    ]:
        assert f'<div class="tally-{status}"><dt>{status}</dt><dd>{count}</dd></div>' in send

    failures = section(html, "failures")
    assert failures.count("<li>") == 2
    assert f'href="/admin/subscribers/{known.readers["dee"]}"' in failures
    assert "dee@example.org" in failures
    assert FULL in failures
    assert BOUNCE.replace("<", "&lt;").replace(">", "&gt;") in failures
    for digest in (known.digests["current"], known.digests["yesterday"]):
        assert f'href="/admin/archive/{digest}"' in failures


def test_editor_sees_failures_but_no_reader(known: Known) -> None:
    html = signed_in(EDITOR).get("/admin/").text
    assert "/admin/subscribers" not in html  # no reader, no list, no filter link
    assert "dee@example.org" not in html
    failures = section(html, "failures")
    assert FULL in failures
    assert "&lt;[address]&gt;: Recipient address rejected" in failures
    assert f'href="/admin/archive/{known.digests["yesterday"]}"' in failures
    assert "shown to admins only" in failures
    # The counts are statistics, for editors too.
    assert cells(section(html, "readers"), "by-status")["all"] == "6"


def test_an_empty_database() -> None:
    html = signed_in(ADMIN).get("/admin/").text
    assert "Nothing was planned in the last 24 hours." in html
    assert "No delivery has failed." in html
    assert "No tags yet." in html
    assert html.count('<g class="day">') == 60  # both charts, every day, no bars
    assert 'class="bar-' not in html


def test_counts_come_from_a_short_lived_cache(known: Known) -> None:
    c = signed_in(ADMIN)
    assert cells(section(c.get("/admin/").text, "readers"), "by-status")["all"] == "6"
    make_subscriber("gil@example.org", "climate", "daily")
    # Within the minute the counts are the ones shown before, with their time.
    assert cells(section(c.get("/admin/").text, "readers"), "by-status")["all"] == "6"
    stats.clear_cache()
    assert cells(section(c.get("/admin/").text, "readers"), "by-status")["all"] == "7"


def test_a_stale_figure_is_served_at_once_and_counted_again_behind() -> None:
    """After the cache's minute a page view gets the last figure without waiting, and
    one background count replaces it."""
    stats.clear_cache()
    calls: list[int] = []

    def compute(_: object) -> int:
        calls.append(1)
        return len(calls)

    with session_scope() as session:
        assert stats.cached(session, "test", compute, max_age=0).value == 1
        assert stats.cached(session, "test", compute, max_age=0).value == 1  # stale, at once
    deadline = time.monotonic() + 10
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with session_scope() as session:
        assert stats.cached(session, "test", compute, max_age=60).value == 2
    assert len(calls) == 2
    stats.clear_cache()


@pytest.mark.warm_up
def test_the_server_counts_the_figures_as_it_starts(known: Known) -> None:
    """Started with its lifespan (as `newsletter serve` runs it), the app counts the
    dashboard's figures in the background, so even the first view finds them."""
    from fastapi.testclient import TestClient

    from newsletter.web.app import create_app

    stats.clear_cache()
    with TestClient(create_app()):
        deadline = time.monotonic() + 10
        while len(stats._entries) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert {name for _, name in stats._entries} == {"readers", "days"}
    with session_scope() as session:
        assert stats.overview(session).readers.value.total == 6
    stats.clear_cache()


def test_anonymous_visitor_is_sent_to_sign_in() -> None:
    from tests.console.conftest import client

    response = client().get("/admin/", follow_redirects=False)
    assert response.status_code in (302, 303)
    assert response.headers["location"].startswith("/admin/login")


# -- the list's search, as rewritten for a million readers ------------------------


def test_search_pages_match_the_shared_filter(known: Known) -> None:
    """The list's query (two index range scans, tag id written in) finds what the
    shared filter (one OR, used by bulk actions and exports) finds, page by page."""
    names = ["Ana Lima", "Anabel Ruiz", "Bob Anders", "Carla Ana", "Ana Costa", "Zed"]
    for n, name in enumerate(names):
        make_subscriber(f"x{n}-{name.split()[0].lower()}@example.org", "climate", name=name)
    make_subscriber("anne@example.org", "data", name="Zoe")
    cases = [
        {"q": "ana"},
        {"q": "an", "tag": "climate"},
        {"q": "a", "status": "active", "cadence": "immediate"},
        {"tag": "climate", "status": "active"},
        {"tag": "data"},
        {"tag": "no-such-tag"},
    ]
    for case in cases:
        with session_scope() as session:
            expected = [
                s.email
                for s in session.scalars(
                    select(Subscriber)
                    .where(*filter_clauses(**case))
                    .order_by(Subscriber.email, Subscriber.id)
                )
            ]
            seen: list[str] = []
            after = None
            while True:
                found = search_subscribers(session, after=after, limit=2, **case)
                seen += [r.subscriber.email for r in found.rows]
                if found.next_after is None:
                    break
                after = found.next_after
        assert seen == expected, case
    assert expected == []  # the unknown tag


# -- in a browser -----------------------------------------------------------------


def test_dashboard_at_phone_and_desktop_width(
    console_server: str, known: Known, tmp_path: Path
) -> None:
    base = console_server
    problems: list[str] = []
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", script_problem(problems))
        browser_sign_in(page, base, ADMIN)
        for width in (375, 1280):
            page.set_viewport_size({"width": width, "height": 900})
            page.goto(f"{base}/admin/")
            chart = page.locator("#chart-messages svg")
            assert chart.is_visible()
            box = chart.bounding_box()
            assert box is not None and box["width"] > 200 and box["height"] > 100
            assert page.locator("#send-progress").get_attribute("value") == "4"
            assert page.evaluate(OUTSIDE_VIEWPORT_JS) == [], width
            page.screenshot(path=str(artefact(f"dashboard-{width}.png")), full_page=True)
        page.click("#days summary")
        assert page.locator("#days-table tbody tr").count() == 30
        assert page.evaluate(OUTSIDE_VIEWPORT_JS) == []
        page.click(f"#failures a[href='/admin/subscribers/{known.readers['dee']}']")
        page.wait_for_url(f"**/admin/subscribers/{known.readers['dee']}")
    assert (artefact("dashboard-375.png")).stat().st_size > 0
    assert problems == []
