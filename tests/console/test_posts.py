"""The console's post pages over real HTTP against real databases: the list with held
and failed posts, hold and release, corrections before a post goes out (and how far it
went already), the upcoming sends, and who may do what."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from newsletter import dispatch
from newsletter.console.models import AuditEntry
from newsletter.db import session_scope, utcnow
from newsletter.delivery.pipeline import run_due
from newsletter.models import Cadence, Digest, Post, Tag
from newsletter.posts import PostInput, add_post, hold_post
from newsletter.upcoming import upcoming_sends
from subscribers.models import Subscriber, SubscriberStatus
from tests.browser import artefact, launch_chromium
from tests.conftest import ScriptedHandler
from tests.console.conftest import (
    EDITOR,
    actions,
    browser_sign_in,
    client,
    form_token,
    script_problem,
    signed_in,
)
from tests.factories import make_post, make_subscriber, make_tags
from tests.newsletter.test_pipeline import titles_by_recipient

pytestmark = pytest.mark.usefixtures("staff")

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def post_row(post_id: int) -> Post:
    with session_scope() as session:
        post = session.get(Post, post_id)
        assert post is not None
        session.expunge(post)
        return post


def post_actions() -> list[tuple[str, str]]:
    return [a for a in actions() if a[0].startswith("post_")]


def client_for_editor() -> TestClient:
    return signed_in(EDITOR)


def token_for(c: TestClient, path: str = "/admin/posts") -> str:
    return form_token(c.get(path).text)


def test_list_shows_state_and_links_to_each_post() -> None:
    held = make_post("politics", title="Post number 1")
    failed = make_post("health", title="Post number 2")
    with session_scope() as session:
        session.execute(
            update(Post)
            .where(Post.id == failed)
            .values(failed_at=utcnow(), failed_reason="ValueError: bad MJML")
        )
        post = session.get(Post, held)
        assert post is not None and hold_post(post, EDITOR)
    page = client_for_editor().get("/admin/posts")
    assert page.status_code == 200
    row = re.search(rf'<tr id="post-{held}" class="held">(.*?)</tr>', page.text, re.S)
    assert row and "held" in row.group(1) and f"by {EDITOR}" in row.group(1)
    assert f'action="/admin/posts/{held}/release"' in row.group(1)
    row = re.search(rf'<tr id="post-{failed}">(.*?)</tr>', page.text, re.S)
    assert row and "failed" in row.group(1) and "bad MJML" in row.group(1)
    assert f'action="/admin/posts/{failed}/hold"' in row.group(1)
    for post_id in (held, failed):
        assert f'<a href="/admin/posts/{post_id}">' in page.text


def test_editor_holds_and_releases_a_post_from_the_list() -> None:
    post_id = make_post("politics", title="Post number 1")
    c = client_for_editor()
    data = {"csrf_token": token_for(c), "back": "list"}
    response = c.post(f"/admin/posts/{post_id}/hold", data=data, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/posts?notice=held"
    assert "The post is held" in c.get(response.headers["location"]).text
    post = post_row(post_id)
    assert post.held_at is not None and post.held_by == EDITOR

    # Pressed twice: nothing changes, nothing is logged again.
    again = c.post(f"/admin/posts/{post_id}/hold", data=data, follow_redirects=False)
    assert again.headers["location"] == "/admin/posts?notice=unchanged"
    assert post_row(post_id).held_at == post.held_at

    response = c.post(f"/admin/posts/{post_id}/release", data=data, follow_redirects=False)
    assert response.headers["location"] == "/admin/posts?notice=released"
    assert post_row(post_id).held_at is None and post_row(post_id).held_by is None
    assert post_actions() == [
        ("post_held", f"post #{post_id}"),
        ("post_released", f"post #{post_id}"),
    ]

    # From the post's own page, the answer leads back to it.
    data = {"csrf_token": token_for(c)}
    response = c.post(f"/admin/posts/{post_id}/hold", data=data, follow_redirects=False)
    assert response.headers["location"] == f"/admin/posts/{post_id}?notice=held"


def test_editor_corrects_the_title_and_summary() -> None:
    post_id = make_post("politics", title="Post number 1 with a tpyo")
    c = client_for_editor()
    page = c.get(f"/admin/posts/{post_id}")
    assert page.status_code == 200
    assert "No reader has got this post yet" in page.text
    data = {
        "csrf_token": form_token(page.text),
        # Cleaned like every other way in: no line break, no bidi override survives.
        "title": "  Post number 1,\r\nBcc: corrected \u202e ",
        "summary": "Two\nlines.",
    }
    response = c.post(f"/admin/posts/{post_id}", data=data, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/admin/posts/{post_id}?notice=corrected"
    post = post_row(post_id)
    assert (post.title, post.summary) == ("Post number 1, Bcc: corrected", "Two lines.")
    shown = c.get(response.headers["location"]).text
    assert '<h1 id="post-title">Post number 1, Bcc: corrected</h1>' in shown
    assert "The correction is saved" in shown
    with session_scope() as session:
        entry = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "post_corrected")
        ).one()
        assert entry.actor_email == EDITOR and entry.target == f"post #{post_id}"
        assert entry.detail["before"]["title"] == "Post number 1 with a tpyo"
        assert entry.detail["after"]["title"] == "Post number 1, Bcc: corrected"


@pytest.mark.parametrize(
    ("title", "summary", "message"),
    [
        ("", "A summary.", "a post needs a title"),
        (" \r\n\t ", "A summary.", "a post needs a title"),
        ("x" * 501, "A summary.", "the title is longer than 500 characters"),
        ("A title", "y" * 401, "the summary is longer than 400 characters"),
    ],
)
def test_bad_correction_is_refused_and_changes_nothing(
    title: str, summary: str, message: str
) -> None:
    post_id = make_post("politics", title="Post number 1")
    before = post_row(post_id)
    c = client_for_editor()
    data = {
        "csrf_token": token_for(c, f"/admin/posts/{post_id}"),
        "title": title,
        "summary": summary,
    }
    response = c.post(f"/admin/posts/{post_id}", data=data, follow_redirects=False)
    assert response.status_code == 400
    assert message in response.text and "Traceback" not in response.text
    assert 'role="alert"' in response.text and 'name="title"' in response.text
    after = post_row(post_id)
    assert (after.title, after.summary, after.updated_at) == (
        before.title,
        before.summary,
        before.updated_at,
    )
    assert post_actions() == []


def test_a_long_summary_shortened_on_the_way_in_can_be_kept() -> None:
    long = "x" * 500  # shortened to 400 characters, the ellipsis included
    with session_scope() as session:
        post = add_post(session, PostInput("A title", "https://x.example/a", "politics", long))
        post_id, stored = post.id, post.summary
    assert len(stored) == 400 and stored.endswith("\u2026")
    c = client_for_editor()
    data = {"csrf_token": token_for(c), "title": "A better title", "summary": stored}
    assert c.post(f"/admin/posts/{post_id}", data=data, follow_redirects=False).status_code == 303
    assert (post_row(post_id).title, post_row(post_id).summary) == ("A better title", stored)
    data["summary"] = stored + "x"
    assert c.post(f"/admin/posts/{post_id}", data=data).status_code == 400


def test_without_or_with_a_wrong_csrf_token_nothing_changes() -> None:
    post_id = make_post("politics", title="Post number 1")
    held_id = make_post("politics", title="Post number 2")
    with session_scope() as session:
        post = session.get(Post, held_id)
        assert post is not None and hold_post(post, EDITOR)
    c = client_for_editor()
    for token in (None, "not-the-token"):
        extra = {"csrf_token": token} if token else {}
        attempts = [
            (f"/admin/posts/{post_id}/hold", extra),
            (f"/admin/posts/{held_id}/release", extra),
            (f"/admin/posts/{post_id}", {**extra, "title": "Changed", "summary": ""}),
        ]
        for path, data in attempts:
            response = c.post(path, data=data, follow_redirects=False)
            assert response.status_code == 403, path
    assert post_row(post_id).held_at is None and post_row(post_id).title == "Post number 1"
    assert post_row(held_id).held_at is not None
    assert post_actions() == []


def test_unknown_post_and_anonymous_visitor() -> None:
    c = client_for_editor()
    assert c.get("/admin/posts/999999").status_code == 404
    data = {"csrf_token": token_for(c)}
    assert c.post("/admin/posts/999999/hold", data=data).status_code == 404
    anonymous = client()
    for path in ("/admin/posts", "/admin/posts/1", "/admin/upcoming"):
        response = anonymous.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith(
            "/admin/login"
        )
    response = anonymous.post("/admin/posts/1/hold", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/admin/login")


def test_a_correction_reaches_only_digests_rendered_after_it(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    """Two daily readers with the same posts an hour apart: the first got the old title;
    the second's digest is rendered afresh with the correction, not reused."""
    make_subscriber("eight@example.org", "politics", "daily", t0, send_hour=8)
    make_subscriber("nine@example.org", "politics", "daily", t0, send_hour=9)
    post_id = make_post("politics", now=t0 + HOUR, title="Post number 1 tpyo")
    tuesday = t0 + DAY - 2 * HOUR  # 08:00 UTC
    run_due(tuesday + 0.5 * HOUR)

    c = client_for_editor()
    page = c.get(f"/admin/posts/{post_id}")
    assert "<strong>1</strong> reader already got this post" in page.text
    assert "it reaches only the digests rendered from now on" in page.text
    data = {"csrf_token": form_token(page.text), "title": "Post number 1 fixed", "summary": ""}
    assert c.post(f"/admin/posts/{post_id}", data=data, follow_redirects=False).status_code == 303

    run_due(tuesday + 1.5 * HOUR)
    assert titles_by_recipient(smtp) == {
        "eight@example.org": ["Post number 1 tpyo"],
        "nine@example.org": ["Post number 1 fixed"],
    }
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Digest)) == 2


def test_correcting_a_failed_post_clears_the_failure() -> None:
    post_id = make_post("politics", title="Post number 1")
    with session_scope() as session:
        session.execute(
            update(Post).where(Post.id == post_id).values(failed_at=utcnow(), failed_reason="boom")
        )
    c = client_for_editor()
    page = c.get(f"/admin/posts/{post_id}")
    assert "boom" in page.text and "a correction clears it" in page.text
    data = {"csrf_token": form_token(page.text), "title": "Post number 1 mended", "summary": ""}
    assert c.post(f"/admin/posts/{post_id}", data=data, follow_redirects=False).status_code == 303
    post = post_row(post_id)
    assert post.failed_at is None and post.failed_reason is None


# -- upcoming sends -----------------------------------------------------------------


@pytest.fixture
def known_list(t0: dt.datetime, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A small list whose next runs can be worked out by hand (see the test)."""
    joined = t0 - HOUR  # Monday 09:00 UTC
    for email, tags in (("i1", "politics"), ("i2", "health"), ("i3", "climate")):
        make_subscriber(f"{email}@example.org", tags, now=joined)
    for email, tags, hour in (
        ("d1", "politics", 8),
        ("d2", "politics", 8),
        ("d3", "politics, health", 8),
        ("d4", "health", 9),
        ("d5", "climate", 8),
        ("paused", "politics", 8),
        ("late", "health", 8),
    ):
        make_subscriber(f"{email}@example.org", tags, "daily", joined, send_hour=hour)
    make_subscriber("w1@example.org", "politics", "weekly", joined, send_weekday="wednesday")
    make_subscriber("d6@example.org", "politics", "daily", t0 + 0.25 * HOUR)
    with session_scope() as session:
        session.execute(
            update(Subscriber)
            .where(Subscriber.email == "paused@example.org")
            .values(status=SubscriberStatus.PAUSED)
        )
        # Overdue: the planner has not reached this reader yet.
        session.execute(
            update(Subscriber)
            .where(Subscriber.email == "late@example.org")
            .values(next_digest_at=t0 - 2 * HOUR)
        )
    posts = {
        "p1": make_post("politics", now=t0),
        "p2": make_post("health", now=t0),
        "held": make_post("politics", now=t0),
        "failed": make_post("climate", now=t0),
    }
    with monkeypatch.context() as broker_down:
        broker_down.setattr(dispatch, "send_task", lambda task, *args: None)
        posts["p5"] = make_post("politics", now=t0 + 0.5 * HOUR)  # not planned yet
    with session_scope() as session:
        post = session.get(Post, posts["held"])
        assert post is not None and hold_post(post, EDITOR)
        session.execute(
            update(Post).where(Post.id == posts["failed"]).values(failed_at=t0, failed_reason="x")
        )
    return posts


def test_upcoming_counts_a_known_list(t0: dt.datetime, known_list: dict[str, int]) -> None:
    p1, p2, p5 = known_list["p1"], known_list["p2"], known_list["p5"]
    now = t0 + HOUR  # Monday 11:00 UTC
    with session_scope() as session:
        result = upcoming_sends(session, now)
    table = [(r.cadence, r.slot, r.readers, r.with_news, r.contents) for r in result.runs]
    tuesday = t0 + DAY - 2 * HOUR
    assert table == [
        # Immediate readers: the next run plans p5, which only i1 follows.
        (Cadence.IMMEDIATE, None, 3, 1, {(p5,)}),
        # The overdue reader runs now; they follow health: p2.
        (Cadence.DAILY, now, 1, 1, {(p2,)}),
        # d1, d2: politics; d3: politics and health; d5: climate, whose post failed;
        # d6 subscribed after p1 and p2 arrived; the paused reader is not counted.
        (Cadence.DAILY, tuesday, 5, 4, {(p1, p5), (p1, p2, p5), (p5,)}),
        (Cadence.DAILY, tuesday + HOUR, 1, 1, {(p2,)}),
        (Cadence.WEEKLY, tuesday + DAY, 1, 1, {(p1, p5)}),
    ]
    assert all(r.counted and r.sample == 1 for r in result.runs)
    totals = [(r.cadence, r.readers, r.with_news, r.digests) for r in result.totals()]
    # A digest shared by two slots is rendered once: daily has four, not five.
    assert totals == [
        (Cadence.IMMEDIATE, 3, 1, 1),
        (Cadence.DAILY, 7, 6, 4),
        (Cadence.WEEKLY, 1, 1, 1),
    ]
    assert (result.posts_waiting, result.held) == (3, 1)


def test_upcoming_counts_only_the_soonest_runs_within_its_budget(
    t0: dt.datetime, known_list: dict[str, int]
) -> None:
    now = t0 + HOUR
    with session_scope() as session:
        result = upcoming_sends(session, now, budget=4)
    assert [r.counted for r in result.runs] == [True, True, False, False, False]
    assert [r.readers for r in result.runs] == [3, 1, 5, 1, 1]
    assert [r.digests for r in result.runs] == [1, 1, 0, 0, 0]
    with session_scope() as session:
        result = upcoming_sends(session, now, budget=2)
    # A first run bigger than the budget is counted on a sample of its readers.
    assert result.runs[0].counted and result.runs[0].sample == 2
    assert not any(r.counted for r in result.runs[1:])


def test_upcoming_tells_apart_tags_far_down_the_list(t0: dt.datetime) -> None:
    """Tag ids fill several 62-bit mask columns, high bits included (no overflow)."""
    make_tags(",".join(f"t{n:03d}" for n in range(1, 131)))
    with session_scope() as session:
        ids = {slug: tag_id for slug, tag_id in session.execute(select(Tag.slug, Tag.id))}
    high = [slug for slug, tag_id in ids.items() if tag_id > 62 and tag_id % 62 >= 40]
    x, y = high[0], high[-1]
    assert ids[x] // 62 != ids[y] // 62 or ids[x] % 62 != ids[y] % 62
    joined = t0 - HOUR
    make_subscriber("x@example.org", x, "daily", joined)
    make_subscriber("y@example.org", y, "daily", joined)
    make_subscriber("xy@example.org", f"{x}, {y}", "daily", joined)
    a, b = make_post(x, now=t0), make_post(y, now=t0)
    with session_scope() as session:
        result = upcoming_sends(session, t0 + HOUR)
    [run] = result.runs
    assert (run.readers, run.with_news, run.contents) == (3, 3, {(a,), (b,), (a, b)})


def test_upcoming_page(known_list: dict[str, int]) -> None:
    c = client_for_editor()
    page = c.get("/admin/upcoming")
    assert page.status_code == 200 and "Traceback" not in page.text
    assert '<table id="totals">' in page.text and '<table id="runs">' in page.text
    for cadence in ("immediate", "daily", "weekly"):
        assert f"<td>{cadence}</td>" in page.text
    assert "1 held</a>" in page.text


def test_upcoming_with_no_readers() -> None:
    page = client_for_editor().get("/admin/upcoming")
    assert page.status_code == 200 and "No active readers." in page.text


# -- in the browser -----------------------------------------------------------------


def test_hold_release_and_correct_in_the_browser(console_server: str, tmp_path: Path) -> None:
    base = console_server
    post_id = make_post("politics", title="Post number 1 tpyo")
    problems: list[str] = []
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", script_problem(problems))
        browser_sign_in(page, base, EDITOR)

        page.click("nav >> text=Posts")
        page.wait_for_url(f"{base}/admin/posts")
        row = page.locator(f"#post-{post_id}")
        row.locator("button:has-text('Hold')").click()
        page.wait_for_url(f"{base}/admin/posts?notice=held")
        assert "held" in row.locator(".state").inner_text()
        page.screenshot(path=str(artefact("posts-held.png")), full_page=True)
        row.locator("button:has-text('Release')").click()
        page.wait_for_url(f"{base}/admin/posts?notice=released")
        assert "held" not in row.locator(".state").inner_text()

        row.locator(f"a[href='/admin/posts/{post_id}']").click()
        page.wait_for_url(f"{base}/admin/posts/{post_id}")
        page.fill("input[name=title]", "Post number 1, corrected")
        page.click("button:has-text('Save the correction')")
        page.wait_for_url(f"{base}/admin/posts/{post_id}?notice=corrected")
        assert page.locator("#post-title").inner_text() == "Post number 1, corrected"
        page.screenshot(path=str(artefact("post-corrected.png")), full_page=True)

        page.click("nav >> text=Upcoming")
        page.wait_for_url(f"{base}/admin/upcoming")
        page.locator("#totals").wait_for()
        page.screenshot(path=str(artefact("upcoming.png")), full_page=True)
    for name in ("posts-held.png", "post-corrected.png", "upcoming.png"):
        assert artefact(name).stat().st_size > 0
    assert problems == []
    assert post_row(post_id).title == "Post number 1, corrected"
    assert [a for a, _ in post_actions()] == ["post_held", "post_released", "post_corrected"]
