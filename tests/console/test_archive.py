"""The console's archive over real HTTP, on digests sent through the real pipeline to a
real SMTP server: counts (a deleted reader's copy included), paging, and a copy with
no reader's name, address or token in it."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path

import pytest
from sqlalchemy import event, select

from newsletter import archive, tokens
from newsletter.console import archive as console_archive
from newsletter.db import session_scope
from newsletter.delivery import planning, sending
from newsletter.models import Cadence, Delivery, Digest, Post, Tag
from newsletter.web.rendering import FRAME_CSP
from subscribers.models import Subscriber
from subscribers.services import by_uid, remove_subscriber, unsubscribe
from tests.browser import artefact, launch_chromium
from tests.conftest import ScriptedHandler, apply_env
from tests.console.conftest import (
    ADMIN,
    EDITOR,
    browser_sign_in,
    client,
    script_problem,
    serve,
    signed_in,
)
from tests.factories import make_post, make_subscriber

HOUR = dt.timedelta(hours=1)
REFUSED = ["550 5.1.1 no such user"]


@dataclass(frozen=True)
class Archive:
    """Digest ids by what they hold, and every reader's address, name and links."""

    daily: int  # Budget vote + Clinic hours, daily: 4 readers, 2 sent, 1 failed, 1 skipped
    health: int  # Clinic hours, to an immediate reader of health: sent
    secret: int  # Quiet plans, whose only tag is unlisted: sent
    never_sent: int  # Clinic hours, daily, to a reader whose server refuses it
    personal: list[str]


def digest_with(cadence: Cadence, *titles: str) -> int:
    with session_scope() as session:
        ids = sorted(session.scalars(select(Post.id).where(Post.title.in_(titles))))
        digests = session.scalars(select(Digest).where(Digest.cadence == cadence))
        return next(d.id for d in digests if sorted(d.post_ids) == ids)


def build_archive(smtp: ScriptedHandler, t0: dt.datetime) -> Archive:
    """Digests sent by the real pipeline: planned, sent to the SMTP server, one refused,
    one reader unsubscribed between planning and sending, one deleted afterwards."""
    smtp.replies["bad@example.org"] = REFUSED
    smtp.replies["bad2@example.org"] = REFUSED
    for email, name in [
        ("ana@example.org", "Ana Lima"),
        ("ben@example.org", "Ben Okafor"),
        ("bad@example.org", "Bad Box"),
        ("gone@example.org", "Gone Girl"),
    ]:
        make_subscriber(email, "politics", "daily", t0, name=name)
    make_subscriber("bad2@example.org", "health", "daily", t0, name="Second Bad")
    make_subscriber("hana@example.org", "health", now=t0, name="Hana Mori")
    make_subscriber("imm@example.org", "secret", now=t0, name="Ivo Marsh")
    with session_scope() as session:
        readers = list(session.scalars(select(Subscriber)))
        personal = [r.email for r in readers] + [r.name for r in readers]
        personal += [tokens.link(p, r.uid) for r in readers for p in ("preferences", "unsubscribe")]

    make_post("politics", t0 + HOUR, "Budget vote")
    make_post("politics, health", t0 + HOUR, "Clinic hours")  # hana gets it at once
    make_post("secret", t0 + 2 * HOUR, "Quiet plans")  # imm gets it at once
    report = planning.plan_due(t0 + 24 * HOUR)
    with session_scope() as session:
        gone = session.scalars(select(Subscriber).where(Subscriber.email == "gone@example.org"))
        unsubscribe(session, by_uid(session, gone.one().uid))
    result = sending.send_batch(report.deliveries, t0 + 24 * HOUR)
    assert result.sent == 2 and result.skipped["subscriber_unsubscribed"] == 1
    with session_scope() as session:
        remove_subscriber(session, "ben@example.org")
        session.scalars(select(Tag).where(Tag.slug == "secret")).one().listed = False

    recipients = sorted(m.recipients[0].split("@")[0] for m in smtp.messages)
    assert recipients == ["ana", "ben", "hana", "imm"]
    return Archive(
        daily=digest_with(Cadence.DAILY, "Budget vote", "Clinic hours"),
        health=digest_with(Cadence.IMMEDIATE, "Clinic hours"),
        secret=digest_with(Cadence.IMMEDIATE, "Quiet plans"),
        never_sent=digest_with(Cadence.DAILY, "Clinic hours"),
        personal=personal,
    )


@pytest.fixture
def built(staff: None, smtp: ScriptedHandler, t0: dt.datetime) -> Archive:
    return build_archive(smtp, t0)


def rows(html: str) -> dict[int, list[str]]:
    """The archive table: digest id -> its cells as text."""
    result: dict[int, list[str]] = {}
    for row in re.findall(r"<tr>(.*?)</tr>", html, re.S):
        found = re.search(r'href="/admin/archive/(\d+)"', row)
        if found:
            cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
            text = [" ".join(unescape(re.sub(r"<[^>]+>", " ", c)).split()) for c in cells]
            result[int(found.group(1))] = text
    return result


def page_counts(html: str) -> list[str]:
    """Readers, sent, failed, skipped, pending, as a digest's page shows them."""
    table = re.search(r'<table class="counts" id="counts">(.*?)</table>', html, re.S)
    assert table, "no counts on the page"
    return re.findall(r"<td[^>]*>(\d+)</td>", table.group(1))


def assert_nothing_personal(html: str, built: Archive) -> None:
    assert "@@NL_" not in html
    for value in built.personal:
        assert value not in html, value
    assert "/unsubscribe/" not in html and "/preferences/" not in html


def test_the_archive_lists_sent_digests_with_their_counts(built: Archive) -> None:
    c = signed_in(EDITOR)
    page = c.get("/admin/archive")
    assert page.status_code == 200
    table = rows(page.text)
    # Newest first; a digest no copy of which left is not in the archive.
    assert list(table) == sorted([built.daily, built.health, built.secret], reverse=True)
    date, cadence, posts, readers, sent, failed, skipped, pending = table[built.daily]
    assert cadence == "daily" and "Budget vote" in posts and "Clinic hours" in posts
    # Ben was deleted after his copy went: his row still counts, as sent.
    assert (readers, sent, failed, skipped, pending) == ("4", "2", "1", "1", "0")
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d #\d+", date)
    assert table[built.health][1:] == ["immediate", "Clinic hours", "1", "1", "0", "0", "0"]
    with session_scope() as session:
        orphans = session.scalars(select(Delivery).where(Delivery.subscriber_id.is_(None)))
        assert [d.digest_id for d in orphans] == [built.daily]


def test_counts_take_one_grouped_query_per_page(built: Archive) -> None:
    with session_scope() as session:
        statements: list[str] = []
        bind = session.get_bind()
        listen = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(bind, "before_cursor_execute", listen)
        try:
            page = archive.sent_digests(session)
        finally:
            event.remove(bind, "before_cursor_execute", listen)
    assert len(page.digests) == 3
    counting = [s for s in statements if "FROM deliveries" in s and "GROUP BY" in s]
    assert len(counting) == 1
    # The page (with its EXISTS), the posts, their tags, the counts: never one per digest.
    assert len(statements) <= 4


def test_keyset_paging(built: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_archive, "PAGE_SIZE", 2)
    c = signed_in(EDITOR)
    first = c.get("/admin/archive")
    newest = sorted([built.daily, built.health, built.secret], reverse=True)
    assert list(rows(first.text)) == newest[:2]
    older = re.search(r'href="(/admin/archive\?before=\d+)" rel="next"', first.text)
    assert older and older.group(1) == f"/admin/archive?before={newest[1]}"
    second = c.get(older.group(1))
    assert list(rows(second.text)) == newest[2:]
    assert 'rel="next"' not in second.text and 'href="/admin/archive">Newest' in second.text


def test_a_digest_page_and_its_copy_hold_nothing_personal(
    built: Archive, smtp: ScriptedHandler
) -> None:
    # The readers' own copies did carry their names and links.
    ana = next(m for m in smtp.messages if m.recipients == ["ana@example.org"]).parsed()
    html_part = ana.get_body(("html",))
    assert html_part is not None and "Hi Ana Lima," in str(html_part.get_content())

    c = signed_in(EDITOR)
    page = c.get(f"/admin/archive/{built.daily}")
    assert page.status_code == 200
    assert "Budget vote" in page.text and "Clinic hours" in page.text
    assert page_counts(page.text) == ["4", "2", "1", "1", "0"]
    assert f'src="/admin/archive/{built.daily}/copy"' in page.text and "sandbox=" in page.text
    assert_nothing_personal(page.text, built)

    frame = c.get(f"/admin/archive/{built.daily}/copy")
    assert frame.status_code == 200
    assert frame.headers["content-security-policy"] == FRAME_CSP
    assert frame.headers["x-frame-options"] == "SAMEORIGIN"
    assert "Budget vote" in frame.text and "Hello," in frame.text
    assert_nothing_personal(frame.text, built)
    links = {unescape(h) for h in re.findall(r'href="([^"]+)"', frame.text)}
    own = {u for u in links if "blog.example.org" not in u}
    assert own == {
        "https://news.example.org/about/web-copy?link=preferences",
        "https://news.example.org/about/web-copy?link=unsubscribe",
    }
    # Where those links lead explains itself, and never says the subscription is gone.
    about = client().get("/about/web-copy?link=unsubscribe")
    assert about.status_code == 200 and "changes nothing" in about.text
    assert "no longer exists" not in about.text and 'href="/subscribe"' in about.text


def test_a_digest_that_never_went_out_still_has_a_page(built: Archive) -> None:
    c = signed_in(EDITOR)
    page = c.get(f"/admin/archive/{built.never_sent}")
    assert page.status_code == 200 and "never sent" in page.text
    assert page_counts(page.text) == ["1", "0", "1", "0", "0"]


def test_bad_addresses_and_anonymous_visitors(built: Archive) -> None:
    assert signed_in(ADMIN).get(f"/admin/archive/{built.daily}").status_code == 200
    c = signed_in(EDITOR)
    assert c.get("/admin/archive/99999").status_code == 404
    for path in ("/admin/archive/abc", "/admin/archive/0", "/admin/archive?before=0"):
        response = c.get(path)
        assert response.status_code == 422 and "Traceback" not in response.text
    anonymous = client()
    daily = f"/admin/archive/{built.daily}"
    for path in ("/admin/archive", daily, f"{daily}/copy"):
        response = anonymous.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/admin/login?next=/admin/archive")


@pytest.fixture
def archive_server(
    built: Archive, smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    apply_env(monkeypatch, NEWSLETTER_PUBLIC_ARCHIVE="true")
    yield from serve(monkeypatch)


def test_archive_in_the_browser(archive_server: str, built: Archive, tmp_path: Path) -> None:
    base = archive_server
    problems: list[str] = []
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", script_problem(problems))
        browser_sign_in(page, base, EDITOR)

        page.click("nav >> text=Archive")
        page.wait_for_url(f"{base}/admin/archive")
        assert page.locator("#archive tbody tr").count() == 3
        page.screenshot(path=str(artefact("console-archive.png")), full_page=True)

        page.click(f"a[href='/admin/archive/{built.daily}']")
        page.wait_for_url(f"{base}/admin/archive/{built.daily}")
        frame = page.frame_locator("#preview-frame")
        frame.locator("a:has-text('Budget vote')").first.wait_for()
        assert "Hello," in frame.locator("body").inner_text()
        page.click("button[data-width='375']")
        page.screenshot(path=str(artefact("console-archive-digest.png")), full_page=True)

        # The public page of the same digest keeps the site's policy.
        page.goto(f"{base}/archive/d/{built.daily}")
        page.frame_locator("#digest-copy").locator("a:has-text('Clinic hours')").first.wait_for()
        page.screenshot(path=str(artefact("public-archive-digest.png")), full_page=True)
    for name in ("console-archive.png", "console-archive-digest.png", "public-archive-digest.png"):
        assert artefact(name).stat().st_size > 0
    assert problems == []
