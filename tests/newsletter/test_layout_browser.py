"""The digest as a reader sees it: a real Chromium at phone (320 px) and desktop (600 px) width.

Needs Debian's chromium at /usr/bin/chromium and `pip install playwright` (no browser
download: Playwright drives the system Chromium). If either is missing the tests FAIL,
they do not skip: a layout check that silently never runs is worse than none.

Screenshots are written to test-artifacts/digest-320.png and digest-600.png.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from newsletter.config import get_settings
from newsletter.delivery.compose import personal_values
from newsletter.delivery.personalise import fill
from newsletter.delivery.rendering import render_digest
from newsletter.models import Cadence, Post, Tag
from subscribers.models import Subscriber
from tests.browser import ARTIFACTS, OUTSIDE_VIEWPORT_JS, launch_chromium

if TYPE_CHECKING:
    from playwright.sync_api import Page


TAGS = {
    "python": Tag(id=1, slug="python", name="Python"),
    "web": Tag(id=2, slug="web-performance", name="Web performance"),
    "a11y": Tag(id=3, slug="accessibility", name="Accessibility"),
    "email": Tag(id=4, slug="email", name="Email"),
}

POSTS: list[dict[str, Any]] = [
    {
        "id": 11,
        "title": "Shipping a zero-downtime database migration on a Friday afternoon",
        "url": "https://blog.example.org/2026/03/zero-downtime-migrations",
        "author": "Margaret Hamilton-Okonkwo",
        "summary": (
            "We moved 40 million rows to a new schema without a maintenance window. "
            "Here is the expand-and-contract plan, the backfill job, and the two "
            "mistakes that nearly sent us home late."
        ),
        "published_at": dt.datetime(2026, 3, 2, 7, 15, tzinfo=dt.UTC),
        "tags": ["python", "web"],
    },
    {
        "id": 12,
        "title": "Accessible colour contrast in transactional email",
        "url": "https://blog.example.org/2026/03/contrast-in-email?utm_source=digest&ref=rss",
        "author": "Zoë Ångström",
        "summary": (
            "Dark-mode clients rewrite your palette. A short checklist for keeping "
            "buttons, links and footers readable everywhere, with before-and-after "
            "screenshots from six clients."
        ),
        "published_at": dt.datetime(2026, 3, 1, 16, 40, tzinfo=dt.UTC),
        "tags": ["a11y", "email", "web"],
    },
    {
        "id": 13,
        "title": "Why is my Celery beat schedule drifting?",
        "url": "https://blog.example.org/2026/02/celery-beat-drift",
        "author": None,
        "summary": "Clock skew, long-running tasks and a time zone surprise.",
        "published_at": dt.datetime(2026, 2, 28, 9, 0, tzinfo=dt.UTC),
        "tags": ["python"],
    },
]


def make_posts() -> list[Post]:
    posts = []
    for spec in POSTS:
        post = Post(
            id=spec["id"],
            guid=spec["url"],
            title=spec["title"],
            url=spec["url"],
            author=spec["author"],
            summary=spec["summary"],
            published_at=spec["published_at"],
        )
        post.tags = [TAGS[t] for t in spec["tags"]]
        posts.append(post)
    return posts


@pytest.fixture
def digest_html(settings_env: dict[str, str]) -> str:
    """A realistic daily digest, personalised the way sending does it."""
    rendered = render_digest(make_posts(), Cadence.DAILY)
    subscriber = Subscriber(
        id=1,
        uid="Xq9lT2bq3x0w8mUuVhKJ3w",
        email="margaret.hamilton-okonkwo@example.com",
        name="Margaret",
        cadence=Cadence.DAILY,
        timezone="America/Argentina/Buenos_Aires",
        send_hour=7,
    )
    subscriber.tags = list(TAGS.values())
    html = fill(rendered.html, personal_values(subscriber, get_settings()), escape=True)
    assert "@@NL_" not in html
    return html


@contextmanager
def chromium_page(width: int) -> Iterator[Page]:
    """A page in the system Chromium, `width` CSS pixels wide, with the network cut off."""
    with launch_chromium() as browser:
        context = browser.new_context(
            viewport={"width": width, "height": 800}, device_scale_factor=1
        )
        yield context.new_page()


# Font size and text of every visible element that directly holds text.
_TEXT_SIZES = """
() => {
  const rows = [];
  for (const el of document.body.querySelectorAll('*')) {
    const own = Array.from(el.childNodes)
      .filter(n => n.nodeType === Node.TEXT_NODE)
      .map(n => n.textContent.trim()).join(' ').trim();
    if (!own || el.getClientRects().length === 0) continue;
    const style = getComputedStyle(el);
    if (style.display === 'none' || style.visibility === 'hidden') continue;
    rows.push([own.slice(0, 60), parseFloat(style.fontSize)]);
  }
  return rows;
}
"""


def check_layout(page: Page, html: str, width: int) -> None:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.route("**/*", lambda route: route.abort())
    page.set_content(html, wait_until="load")

    # Standards mode: the doctype reached the browser.
    assert page.evaluate("document.compatMode") == "CSS1Compat"
    # Nothing fetched: no web font, tracking pixel or stylesheet.
    assert requests == [], requests

    # No horizontal scrolling, and nothing cut off at the right edge.
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert page.evaluate("document.body.scrollWidth") <= width
    assert page.evaluate(OUTSIDE_VIEWPORT_JS) == []

    for spec in POSTS:
        title = page.get_by_role("link", name=spec["title"], exact=True)
        assert title.count() == 1, spec["title"]
        assert title.is_visible()
        box = title.bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, (spec["title"], box)
        assert title.get_attribute("href") == spec["url"]

    # Each button reads "Read more" and names its post to a screen reader.
    assert page.get_by_text("Read more", exact=True).count() == len(POSTS)
    for spec in POSTS:
        button = page.get_by_role("link", name=f"Read more: {spec['title']}", exact=True)
        assert button.is_visible()
        assert button.get_attribute("href") == spec["url"]
        box = button.bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, box
        # A comfortable tap target.
        assert box["height"] >= 36, box

    for link in ("Manage your preferences", "Unsubscribe"):
        footer_link = page.get_by_role("link", name=link, exact=True)
        assert footer_link.is_visible()
        footer_box = footer_link.bounding_box()
        assert footer_box is not None
        assert footer_box["x"] + footer_box["width"] <= width

    sizes = page.evaluate(_TEXT_SIZES)
    texts = dict((text, size) for text, size in sizes)
    # Body copy: the summaries, greeting and intro are readable without zooming.
    for spec in POSTS:
        assert texts[spec["summary"][:60]] >= 14, spec["summary"][:60]
    assert texts["Hi Margaret,"] >= 14
    # Nothing visible is tiny.
    small = [(t, s) for t, s in sizes if s < 12]
    assert small == [], small


def test_digest_reads_well_on_a_320px_phone(digest_html: str) -> None:
    with chromium_page(320) as page:
        check_layout(page, digest_html, 320)
        # The mobile media query is live: titles step down from 22px to 20px.
        title = page.get_by_role("link", name=POSTS[0]["title"], exact=True)
        size = title.evaluate("el => getComputedStyle(el.parentElement).fontSize")
        assert size == "20px"
        # The single column uses the whole width (less the 24px gutters).
        column = page.locator(".mj-column-per-100").first.bounding_box()
        assert column is not None
        assert column["width"] >= 300
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "digest-320.png"), full_page=True)


def test_digest_reads_well_at_600px(digest_html: str) -> None:
    with chromium_page(600) as page:
        check_layout(page, digest_html, 600)
        title = page.get_by_role("link", name=POSTS[0]["title"], exact=True)
        size = title.evaluate("el => getComputedStyle(el.parentElement).fontSize")
        assert size == "22px"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "digest-600.png"), full_page=True)


def test_long_words_tags_and_addresses_do_not_widen_the_phone_layout(
    settings_env: dict[str, str],
) -> None:
    """Unbreakable words, a long tag name and a long address must wrap, not scroll sideways."""
    tag = Tag(id=9, slug="ci", name="Continuous integration and deployment pipelines for monorepos")
    post = Post(
        id=21,
        guid="long",
        title="Die Donaudampfschifffahrtsgesellschaftskapitänsmützenherstellung erklärt",
        url="https://blog.example.org/long",
        author="Hubert Blaine Wolfeschlegelsteinhausenbergerdorff",
        summary=(
            "See https://example.org/a/very/long/path/that/does/not/break/anywhere/"
            "at/all/really/index.html for the details."
        ),
        published_at=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
    )
    post.tags = [tag]
    subscriber = Subscriber(
        id=2,
        uid="long",
        email="a.very.very.long.email.address.for.testing@subdomain.example.com",
        name="Wolfeschlegelsteinhausenbergerdorff",
        cadence=Cadence.WEEKLY,
        timezone="UTC",
        send_hour=8,
    )
    subscriber.tags = [tag]
    rendered = render_digest([post], Cadence.WEEKLY)
    html = fill(rendered.html, personal_values(subscriber, get_settings()), escape=True)
    with chromium_page(320) as page:
        page.route("**/*", lambda route: route.abort())
        page.set_content(html, wait_until="load")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "digest-320-long-words.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= 320
        assert page.evaluate(OUTSIDE_VIEWPORT_JS) == []
        button = page.get_by_role("link", name=f"Read more: {post.title}", exact=True)
        assert button.is_visible()
