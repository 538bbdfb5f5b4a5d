"""The details readers expect of a digest email: buttons that say which post they open,
an excerpt for a post without a summary, a footer that names the weekly weekday, an
intro that is true of a first digest too, a "view in your browser" link that works with
or without the public archive, and demo posts that read like real ones."""

from __future__ import annotations

import datetime as dt
import re
from html import unescape
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from newsletter import demo, tokens
from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.delivery.compose import personal_values
from newsletter.delivery.pipeline import run_due
from newsletter.delivery.rendering import render_digest
from newsletter.models import Cadence, Post
from newsletter.posts import correct_post
from newsletter.web.app import create_app
from subscribers.models import Subscriber
from tests.browser import artefact
from tests.conftest import ScriptedHandler, apply_env
from tests.factories import make_post as add_post
from tests.factories import make_subscriber
from tests.newsletter.test_rendering import PYTHON, make_post, parse_html, sample_posts
from tests.web import test_browser_lifecycle as lifecycle

if TYPE_CHECKING:
    from playwright.sync_api import Browser

BASE = "https://news.example.org"
HOUR = dt.timedelta(hours=1)
# The app served by uvicorn, and the system Chromium, as the reader-page tests use them.
live_server = lifecycle.live_server
browser = lifecycle.browser


def reader(cadence: Cadence, weekday: int | None = 0) -> Subscriber:
    subscriber = Subscriber(
        id=3,
        uid="k3yOfKenji_01234",
        email="kenji@example.jp",
        name="Kenji",
        cadence=cadence,
        timezone="Asia/Tokyo",
        send_hour=9,
        send_weekday=weekday,
    )
    subscriber.tags = [PYTHON]
    return subscriber


# --- point 10: buttons and excerpts ---------------------------------------------------------


def test_each_read_more_button_names_its_post(settings_env: dict[str, str]) -> None:
    html = render_digest(sample_posts(), Cadence.DAILY).html
    parsed = parse_html(html)
    buttons = [a for t, a in parsed.start_tags if t == "a" and a.get("class") == "button"]
    assert len(buttons) == len(sample_posts())
    for post in sample_posts():
        # Seen as "Read more"; heard as "Read more: <title>" (its accessible name).
        matching = [a for a in buttons if a.get("href") == post.url]
        assert [a.get("aria-label") for a in matching] == [f"Read more: {post.title}"]
        assert (post.url, "Read more") in parsed.anchors


def test_a_post_without_a_summary_shows_the_start_of_its_body(
    settings_env: dict[str, str],
) -> None:
    paragraph = "<p>The <b>council</b> met &amp; voted on the budget for the year. </p>"
    post = make_post(
        9,
        title="No summary here",
        url="https://blog.example.org/no-summary",
        author=None,
        summary="",
        published_at=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
        tags=[PYTHON],
    )
    post.body_html = paragraph * 40 + '<img src="https://tracker.example.org/x.gif">'
    rendered = render_digest([post], Cadence.IMMEDIATE)
    parsed = parse_html(rendered.html)
    visible = " ".join(" ".join(parsed.text).split())
    assert "The council met & voted on the budget for the year. The council" in visible
    excerpt = re.search(r"(The council met .*?\u2026)", visible)
    assert excerpt is not None
    limit = get_settings().summary_max_chars
    assert len(excerpt.group(1)) <= limit
    # Cut after a whole word, and nothing of the body's markup reaches the email.
    body = " ".join(["The council met & voted on the budget for the year."] * 40)
    shown = excerpt.group(1).removesuffix("\u2026")
    assert body.startswith(shown) and not body[len(shown)].isalnum()
    assert "tracker.example.org" not in rendered.html
    assert not [t for t, _ in parsed.start_tags if t in {"b", "img"}]
    assert excerpt.group(1) in " ".join(rendered.text.split())


# --- point 11: the footer and the intro -----------------------------------------------------


@pytest.mark.parametrize(
    ("cadence", "weekday", "schedule"),
    [
        (Cadence.WEEKLY, 4, "weekly on Fridays at 09:00 (Asia/Tokyo)"),
        (Cadence.WEEKLY, 6, "weekly on Sundays at 09:00 (Asia/Tokyo)"),
        (Cadence.DAILY, 4, "daily at 09:00 (Asia/Tokyo)"),
        (Cadence.IMMEDIATE, 4, "as soon as they are published"),
    ],
)
def test_the_footer_says_when_digests_come(
    settings_env: dict[str, str], cadence: Cadence, weekday: int, schedule: str
) -> None:
    reason = personal_values(reader(cadence, weekday), get_settings())["REASON"]
    assert reason.endswith(f"for posts tagged Python, {schedule}.")


def test_a_reader_not_yet_stored_gets_the_default_weekday(
    settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A preview's reader has no weekday until the row's default applies."""
    apply_env(monkeypatch, NEWSLETTER_DEFAULT_SEND_WEEKDAY="2")
    reason = personal_values(reader(Cadence.WEEKLY, None), get_settings())["REASON"]
    assert "weekly on Wednesdays at 09:00 (Asia/Tokyo)" in reason


@pytest.mark.parametrize("cadence", list(Cadence))
def test_no_digest_speaks_of_a_last_digest(settings_env: dict[str, str], cadence: Cadence) -> None:
    """A rendering is shared by readers on their first digest and their hundredth."""
    rendered = render_digest(sample_posts(), cadence)
    for part in (rendered.html, rendered.text):
        assert "last digest" not in part and "since your" not in part
        assert "in the tags you follow:" in part


# --- point 12: view in your browser ---------------------------------------------------------


def links_of(html: str) -> dict[str, str]:
    return {text: href or "" for href, text in parse_html(html).anchors}


def three_posts_mailed(smtp: ScriptedHandler, t0: dt.datetime) -> str:
    """Ana's daily digest of three posts, mailed through the pipeline: its HTML part."""
    make_subscriber("ana@example.org", "politics", "daily", t0, name="Ana Lima")
    for n in range(3):
        add_post("politics", t0 + HOUR, title=f"Budget hearing, part {n + 1}")
    run_due(t0 + 24 * HOUR)
    (message,) = smtp.messages
    html = message.parsed().get_body(("html",))
    assert html is not None
    return str(html.get_content())


@pytest.mark.usefixtures("app_env")
@pytest.mark.parametrize("public_archive", ["false", "true"])
def test_view_in_your_browser_shows_the_digest_without_the_reader(
    smtp: ScriptedHandler,
    t0: dt.datetime,
    monkeypatch: pytest.MonkeyPatch,
    public_archive: str,
) -> None:
    apply_env(
        monkeypatch, NEWSLETTER_DIGEST_MAX_POSTS="2", NEWSLETTER_PUBLIC_ARCHIVE=public_archive
    )
    links = links_of(three_posts_mailed(smtp, t0))
    view = links["View in your browser"]
    assert view.startswith(f"{BASE}/view/")
    assert links["1 more post"] == view + "#posts"
    with session_scope() as session:
        ana = session.scalars(select(Subscriber)).one()
        personal = [ana.email, ana.name, ana.uid]
        personal += [tokens.link(p, ana.uid) for p in ("preferences", "unsubscribe")]

    client = TestClient(create_app(), base_url=BASE)
    path = view.removeprefix(BASE)
    page = client.get(path)
    assert page.status_code == 200
    # Every post is listed, the one the email only counted too, above the copy.
    listed = re.search(r'<ul class="archive-posts" id="posts">(.*?)</ul>', page.text, re.S)
    assert listed is not None
    for n in (1, 2, 3):
        assert f"Budget hearing, part {n}" in listed.group(1)
    assert f'src="{path}/copy"' in page.text
    assert '<meta name="robots" content="noindex">' in page.text
    assert ('href="/archive/"' in page.text) is (public_archive == "true")

    copy = client.get(f"{path}/copy")
    assert copy.status_code == 200
    assert "Budget hearing, part 3" in copy.text and "Hello," in copy.text
    for value in personal:
        assert value not in unescape(copy.text), value
    assert "@@NL_" not in copy.text
    assert "/unsubscribe/" not in copy.text and "/preferences/" not in copy.text

    # A link not signed here, or altered, opens nothing.
    token = path.removeprefix("/view/")
    assert client.get(f"/view/{token[:-2]}xx").status_code == 404
    assert client.get("/view/WzEsImFiYyJd.forged").status_code == 404


@pytest.mark.usefixtures("app_env")
def test_the_link_still_works_after_a_post_is_corrected(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    """An edit gives the digest holding the post a new key (posts.py), so no later
    reader gets the old text; the link in mail already sent must still open it."""
    make_subscriber("ana@example.org", "politics", now=t0)
    post_id = add_post("politics", t0 + HOUR, title="Budget vote")
    (message,) = smtp.messages
    html = message.parsed().get_body(("html",))
    assert html is not None
    path = links_of(str(html.get_content()))["View in your browser"].removeprefix(BASE)
    with session_scope() as session:
        post = session.get(Post, post_id)
        assert post is not None
        assert correct_post(session, post, "Budget vote, corrected", post.summary)

    client = TestClient(create_app(), base_url=BASE)
    page = client.get(path)
    assert page.status_code == 200
    assert "Budget vote" in client.get(f"{path}/copy").text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # one browser run
def test_view_in_your_browser_in_chromium(
    database_url: str,
    live_server: str,
    smtp: ScriptedHandler,
    browser: Browser,
    t0: dt.datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From the email to the web copy as a reader goes: the "1 more post" link opens
    the page listing every post, with the copy framed below it."""
    apply_env(monkeypatch, NEWSLETTER_DIGEST_MAX_POSTS="2")
    html = three_posts_mailed(smtp, t0)
    page = browser.new_context(viewport={"width": 375, "height": 800}).new_page()
    page.set_content(html)
    page.get_by_role("link", name="1 more post", exact=True).click()
    page.wait_for_url(f"{live_server}/view/**#posts")
    listed = page.locator("#posts li")
    assert listed.all_inner_texts() == [f"Budget hearing, part {n}" for n in (3, 2, 1)]
    copy = page.frame_locator("#digest-copy")
    assert copy.get_by_text("Hello,", exact=True).is_visible()
    assert copy.get_by_role("link", name="Read more: Budget hearing, part 3").is_visible()
    assert copy.get_by_text("View in your browser").count() == 0
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(artefact("web-copy-375.png")), full_page=True)


# --- point 13: the demo ---------------------------------------------------------------------


def test_demo_posts_read_like_real_posts() -> None:
    for post in demo.POSTS:
        assert "Archives:" not in post.title, post.title
        assert not re.match(r"(?i)(tag|category) archives?\b", post.title), post.title
        assert post.summary and post.author
