"""Every reader page in a real Chromium: axe-core finds no serious or critical problem
at 375 and 1280 px, the time zone select is searched and guessed, fields show only for
the cadences they apply to, errors take the focus, and no form is sent twice by a
reload or Back (Post/Redirect/Get). The pages also work with JavaScript off.

axe-core is the copy shipped in the axe-playwright-python package, evaluated in the
page by the test (nothing from a CDN; the pages' CSP stays on). SQLite only: the
HTTP tests cover both databases, this one covers the browser.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from newsletter import tokens
from newsletter.db import session_scope
from subscribers.models import Subscriber, SubscriberStatus
from tests.browser import ARTIFACTS as BROWSER_ARTIFACTS
from tests.browser import OUTSIDE_VIEWPORT_JS
from tests.factories import make_subscriber, make_tags
from tests.web import test_browser_lifecycle as lifecycle

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

PHONE, DESKTOP, HEIGHT = 375, 1280, 800
ARTIFACTS = BROWSER_ARTIFACTS / "reader-pages"
ANA = "ana.maria.fernandes.de.oliveira@example.org"  # long: it must wrap at 375 px
AXE_SOURCE = (resources.files("axe_playwright_python") / "axe.min.js").read_text(encoding="utf-8")
RUN_AXE = """
async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map(n => n.target.join(" ")).slice(0, 5),
  }));
}
"""
# The same uvicorn server and Chromium as the lifecycle test.
live_server = lifecycle.live_server
browser = lifecycle.browser


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """This module runs on SQLite only (see the docstring)."""
    return sqlite_url


def axe_violations(page: Page) -> list[dict[str, Any]]:
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE_SOURCE)
    violations: list[dict[str, Any]] = page.evaluate(RUN_AXE)
    return violations


def assert_accessible(page: Page, name: str) -> None:
    """axe-core at phone and desktop width, and nothing wider than the phone; a
    screenshot of each in test-artifacts/reader-pages/ for people to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width in (DESKTOP, PHONE):
        page.set_viewport_size({"width": width, "height": HEIGHT})
        bad = [v for v in axe_violations(page) if v["impact"] in ("serious", "critical")]
        assert bad == [], f"{name} at {width}px: {bad}"
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE, name
    assert page.evaluate(OUTSIDE_VIEWPORT_JS) == [], name


def reader(email: str) -> Subscriber:
    with session_scope() as session:
        return session.scalars(select(Subscriber).where(Subscriber.email == email)).one()


def test_reader_pages_in_a_browser(live_server: str, browser: Browser) -> None:
    from playwright.sync_api import expect

    base = live_server
    make_tags("Python, Accessibility")
    make_subscriber(ANA, "python", "weekly", timezone="Europe/Lisbon", send_hour=18)
    context = browser.new_context(
        viewport={"width": PHONE, "height": HEIGHT}, timezone_id="Asia/Calcutta", locale="en-GB"
    )
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    posts: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)

    # Sign-up: the browser's old zone name is mapped to the zone offered.
    page.goto(f"{base}/")
    assert page.url == f"{base}/subscribe"
    expect(page.locator("#timezone")).to_have_value("Asia/Kolkata")
    assert_accessible(page, "subscribe")
    # Visible focus: the first Tab lands on the site name, outlined.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "The Digest"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"

    # The search box finds a city, a country and an old name.
    search = page.get_by_role("searchbox", name="Find your city or country")
    search.fill("Berlin")
    expect(page.locator("#timezone")).to_have_value("Europe/Berlin")
    expect(page.locator("#timezone-found")).to_have_text("Chosen: Berlin (Germany)")
    search.fill("portugal lisbon")
    expect(page.locator("#timezone")).to_have_value("Europe/Lisbon")
    search.fill("nowhere at all")
    expect(page.locator("#timezone")).to_have_value("Europe/Lisbon")
    expect(page.locator("#timezone-found")).to_contain_text("No time zone matches")
    search.fill("")

    # Only the fields that apply to the cadence are shown.
    send_at, weekly_on = page.locator("#send_hour"), page.locator("#send_weekday")
    page.get_by_role("radio", name="As soon as a post is published").check()
    expect(send_at).to_be_hidden()
    expect(weekly_on).to_be_hidden()
    page.get_by_role("radio", name="A daily digest").check()
    expect(send_at).to_be_visible()
    expect(weekly_on).to_be_hidden()
    page.get_by_role("radio", name="A weekly digest").check()
    expect(weekly_on).to_be_visible()

    # Every mistake at once; the focus is on the first bad field.
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_role("alert")).to_contain_text("There are 2 problems")
    assert page.evaluate("document.activeElement.id") == "email"
    expect(page.get_by_role("textbox", name="Email")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#timezone")).to_have_value("Europe/Lisbon")  # kept, not re-guessed
    assert_accessible(page, "subscribe-errors")

    # Post/Redirect/Get: reload and Back send nothing again.
    page.get_by_role("textbox", name="Email").fill("rae@example.org")
    page.get_by_role("checkbox", name="Accessibility").check()
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    assert page.url == f"{base}/subscribe/check-inbox"
    assert_accessible(page, "check-inbox")
    sent = len(posts)
    page.reload()
    page.go_back()
    expect(page.get_by_role("heading", name="Get the posts you care about")).to_be_visible()
    page.go_forward()
    assert len(posts) == sent

    # Confirm, then the same link again: "already confirmed", no button.
    pending = lifecycle.wait_for(
        "the pending row",
        lambda: reader("rae@example.org") if _exists("rae@example.org") else None,
    )
    payload = {"u": pending.uid, "t": ["accessibility"], "c": "daily", "z": "UTC", "h": 7, "w": 0}
    confirm_url = f"{base}/confirm/{tokens.make_token('confirm', payload)}"
    page.goto(confirm_url)
    assert_accessible(page, "confirm")
    page.get_by_role("button", name="Confirm my subscription").click()
    expect(page.get_by_role("heading", name="You are subscribed")).to_be_visible()
    assert_accessible(page, "confirmed")
    sent = len(posts)
    page.reload()
    assert len(posts) == sent
    page.goto(confirm_url)
    expect(page.get_by_role("heading", name="Already confirmed")).to_be_visible()
    expect(page.get_by_role("button", name="Confirm my subscription")).to_have_count(0)
    expect(page.get_by_role("link", name="Manage your subscription")).to_be_visible()

    # Preferences: when the next digest is due; save and pause redirect.
    ana = reader(ANA)
    page.goto(f"{base}/preferences/{tokens.make_token('preferences', ana.uid)}")
    expect(page.get_by_text("Your next digest is due")).to_contain_text("(Europe/Lisbon time)")
    expect(page.locator("#timezone")).to_have_value("Europe/Lisbon")  # stored, not guessed
    assert_accessible(page, "preferences")
    page.get_by_role("checkbox", name="Accessibility").check()
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status")).to_have_text("Your preferences are saved.")
    assert page.url.endswith("?done=saved")
    sent = len(posts)
    page.reload()
    assert len(posts) == sent
    page.get_by_role("button", name="Pause digests").click()
    expect(page.get_by_text("Your digests are paused")).to_be_visible()
    assert_accessible(page, "preferences-paused")
    page.get_by_role("button", name="Resume digests").click()
    expect(page.get_by_role("status")).to_have_text("Digests resumed.")

    # Unsubscribe: alternatives first, then the undo on the last page.
    page.get_by_role("link", name="Unsubscribe").click()
    expect(page.get_by_role("button", name="Pause digests")).to_be_visible()
    assert_accessible(page, "unsubscribe")
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
    assert reader(ANA).status is SubscriberStatus.UNSUBSCRIBED
    assert_accessible(page, "unsubscribed")
    page.get_by_role("button", name="Undo: subscribe me again").click()
    expect(page.get_by_role("status")).to_contain_text("subscribed again")
    assert reader(ANA).status is SubscriberStatus.ACTIVE

    # A link that no longer works says what to do.
    page.goto(f"{base}/preferences/not-a-token")
    expect(page.get_by_role("heading", name="This link is not valid")).to_be_visible()
    assert_accessible(page, "dead-link")
    # axe really looks: a field without its label is caught.
    page.goto(f"{base}/subscribe")
    page.evaluate("document.querySelector('label[for=email]').remove()")
    assert "label" in {v["id"] for v in axe_violations(page)}
    assert errors == []
    context.close()

    # Without JavaScript: every field shown, with the cadences it applies to; it works.
    plain = browser.new_context(
        viewport={"width": PHONE, "height": HEIGHT}, java_script_enabled=False
    )
    page = plain.new_page()
    page.goto(f"{base}/subscribe")
    expect(page.locator("#send_weekday")).to_be_visible()
    expect(page.get_by_text("(weekly digests only)")).to_be_visible()
    expect(page.locator("#timezone-search")).to_be_hidden()
    page.get_by_role("textbox", name="Email").fill("noscript@example.org")
    page.get_by_role("checkbox", name="Python").check()
    page.locator("#timezone").select_option("Europe/Berlin")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    plain.close()


def _exists(email: str) -> bool:
    with session_scope() as session:
        return session.scalar(select(Subscriber.id).where(Subscriber.email == email)) is not None
