"""A reader's whole life as a subscriber, in a real Chromium against a real server.

uvicorn serves `create_app()` on a free loopback port; the confirmation and welcome
emails go through a real SMTP server (aiosmtpd) and the test follows the links in
them, exactly as a reader would: sign up, confirm, change preferences, pause, resume,
unsubscribe. Runs on SQLite and PostgreSQL (the `app_env` fixture).

Needs Debian's chromium at /usr/bin/chromium and `pip install playwright` (no browser
download). If either is missing the test FAILS, it does not skip.

Screenshots of every page at 375 px and 1280 px go to
test-artifacts/lifecycle/<backend>-<page>-<width>.png.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING, TypeVar

import pytest
import uvicorn
from sqlalchemy import select

from newsletter.db import session_scope
from newsletter.models import Cadence
from newsletter.outbox import Received, free_port
from newsletter.tags import get_or_create_tags, parse_tag_names
from newsletter.web.app import create_app
from subscribers.models import Subscriber, SubscriberStatus
from tests.browser import ARTIFACTS as BROWSER_ARTIFACTS
from tests.browser import OUTSIDE_VIEWPORT_JS, launch_chromium
from tests.conftest import ScriptedHandler, apply_env

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ARTIFACTS = BROWSER_ARTIFACTS / "lifecycle"
PHONE, DESKTOP = 375, 1280
HEIGHT = 800

EMAIL = "margaret.hamilton@example.org"
TAG_NAMES = "Python, Web performance, Accessibility, Email, Databases"

T = TypeVar("T")


@dataclass
class Subscription:
    """What the database says about the reader, read outside the server's session."""

    status: SubscriberStatus
    cadence: Cadence
    timezone: str
    send_hour: int
    send_weekday: int
    name: str
    tags: list[str] = field(default_factory=list)


def stored() -> Subscription:
    with session_scope() as session:
        row = session.scalars(select(Subscriber).where(Subscriber.email == EMAIL)).one()
        return Subscription(
            status=row.status,
            cadence=row.cadence,
            timezone=row.timezone,
            send_hour=row.send_hour,
            send_weekday=row.send_weekday,
            name=row.name,
            tags=[t.slug for t in row.tags],
        )


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Poll `probe` until it returns something; the mail leaves after the response."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def nth_message(smtp: ScriptedHandler, n: int) -> Received:
    return wait_for(
        f"email #{n + 1} at the SMTP server",
        lambda: smtp.messages[n] if len(smtp.messages) > n else None,
    )


def text_and_html(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None, message
    return str(text.get_content()), str(html.get_content())


def link_in_text(text: str, base: str, path: str) -> str:
    match = re.search(rf"{re.escape(base)}/{path}/[A-Za-z0-9_.\-~]+", text)
    assert match, f"no {base}/{path}/… link in:\n{text}"
    return match.group(0)


def href_of(html: str, label: str) -> str:
    """The href of the <a> whose text starts with `label` (premailer adds style attributes)."""
    match = re.search(rf'<a\b[^>]*\bhref="([^"]+)"[^>]*>\s*{re.escape(label)}', html)
    assert match, f"no link {label!r} in the HTML part"
    return match.group(1).replace("&amp;", "&")


@pytest.fixture
def tags(app_env: str) -> list[str]:
    with session_scope() as session:
        return [t.slug for t in get_or_create_tags(session, parse_tag_names(TAG_NAMES))]


@pytest.fixture
def live_server(
    app_env: str, smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The app served by uvicorn in a thread; links in emails point at it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    apply_env(monkeypatch, NEWSLETTER_BASE_URL=base)
    config = uvicorn.Config(
        create_app(),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for("uvicorn to start", lambda: True if server.started else None)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def browser() -> Iterator[Browser]:
    """The system Chromium, driven by Playwright; missing pieces fail loudly."""
    with launch_chromium() as chromium:
        yield chromium


class Shots:
    """Screenshots of the current page at phone and desktop width, plus the overflow check.

    The flow itself runs at phone width, the harder layout for tapping.
    """

    def __init__(self, page: Page, backend: str) -> None:
        self.page = page
        self.backend = backend
        self.taken: list[str] = []
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> None:
        page = self.page
        for width in (DESKTOP, PHONE):
            page.set_viewport_size({"width": width, "height": HEIGHT})
            path = ARTIFACTS / f"{self.backend}-{name}-{width}.png"
            page.screenshot(path=str(path), full_page=True)
            self.taken.append(path.name)
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= PHONE, f"{name}: {scroll_width}px wide at a {PHONE}px viewport"
        assert page.evaluate(OUTSIDE_VIEWPORT_JS) == [], name


def assert_row_aligned(page: Page) -> None:
    """At desktop width hour and weekday sit side by side, tops and heights equal (the
    time zone, with its search box, has a row of its own)."""
    page.set_viewport_size({"width": DESKTOP, "height": HEIGHT})
    boxes = [
        page.locator(selector).bounding_box()
        for selector in ("select[name=send_hour]", "select[name=send_weekday]")
    ]
    page.set_viewport_size({"width": PHONE, "height": HEIGHT})
    assert all(box is not None for box in boxes), boxes
    tops = {round(box["y"]) for box in boxes if box}
    heights = {round(box["height"]) for box in boxes if box}
    assert len(tops) == 1 and len(heights) == 1, boxes
    assert heights.pop() >= 40, boxes  # a comfortable tap target


def test_reader_signs_up_confirms_manages_and_leaves_in_a_real_browser(
    app_env: str,
    tags: list[str],
    live_server: str,
    smtp: ScriptedHandler,
    browser: Browser,
) -> None:
    from playwright.sync_api import expect

    base = live_server
    backend = "postgresql" if app_env.startswith("postgresql") else "sqlite"
    context = browser.new_context(
        viewport={"width": PHONE, "height": HEIGHT},
        device_scale_factor=1,
        timezone_id="Europe/Lisbon",
        locale="en-GB",
    )
    context.set_default_timeout(10_000)
    stray: list[str] = []

    def only_our_server(route: object) -> None:
        from playwright.sync_api import Route

        assert isinstance(route, Route)
        if route.request.url.startswith(base + "/"):
            route.continue_()
        else:
            stray.append(route.request.url)
            route.abort()

    context.route("**/*", only_our_server)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    shot = Shots(page, backend)

    # 1. Sign up: daily at 07:00, two tags; the browser guessed the time zone.
    response = page.goto(f"{base}/subscribe")
    assert response is not None and response.status == 200
    expect(page.get_by_role("heading", name="Get the posts you care about")).to_be_visible()
    expect(page.locator("#timezone")).to_have_value("Europe/Lisbon")
    shot("subscribe")
    assert_row_aligned(page)
    page.get_by_role("textbox", name="Email", exact=True).fill(EMAIL)
    page.get_by_role("checkbox", name="Python", exact=True).check()
    page.get_by_role("checkbox", name="Web performance", exact=True).check()
    page.get_by_role("radio", name="A daily digest").check()
    page.locator("select[name=send_hour]").select_option("7")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    assert page.url == f"{base}/subscribe/check-inbox"  # Post/Redirect/Get
    shot("check-inbox")

    # 2. The confirmation email, its link, the button, the welcome email. The pending
    # row and the mail are made after the response, whatever the address's state.
    confirmation = nth_message(smtp, 0)
    pending = stored()
    assert pending.status is SubscriberStatus.PENDING
    assert pending.tags == ["python", "web-performance"]
    assert confirmation.recipients == [EMAIL]
    message = confirmation.parsed()
    assert message["Subject"] == "Confirm your subscription to The Digest"
    text, html = text_and_html(message)
    assert "Python, Web performance, daily at 07:00 (Europe/Lisbon)" in text
    confirm_url = link_in_text(text, base, "confirm")
    assert href_of(html, "Confirm my subscription") == confirm_url
    page.goto(confirm_url)
    expect(page.get_by_role("heading", name="Confirm your subscription")).to_be_visible()
    # (Sorted: the page's query has no ORDER BY, so the order is the database's.)
    assert sorted(page.locator(".chip").all_inner_texts()) == ["Python", "Web performance"]
    expect(page.get_by_text("daily at 07:00 (Europe/Lisbon)")).to_be_visible()
    # Opening the link alone (as a link scanner would) changes nothing.
    assert stored().status is SubscriberStatus.PENDING
    # The owner names themselves here; the sign-up form never asked.
    name_field = page.get_by_role("textbox", name="Name (optional)", exact=True)
    expect(name_field).to_have_value("")
    name_field.fill("Margaret")
    shot("confirm")
    page.get_by_role("button", name="Confirm my subscription").click()
    expect(page.get_by_role("heading", name="You are subscribed")).to_be_visible()
    expect(page.get_by_text(f"{EMAIL} will get posts tagged")).to_contain_text(
        "daily at 07:00 (Europe/Lisbon)"
    )
    shot("confirmed")
    assert stored() == Subscription(
        status=SubscriberStatus.ACTIVE,
        cadence=Cadence.DAILY,
        timezone="Europe/Lisbon",
        send_hour=7,
        send_weekday=0,
        name="Margaret",
        tags=["python", "web-performance"],
    )

    welcome = nth_message(smtp, 1)
    assert welcome.recipients == [EMAIL]
    message = welcome.parsed()
    assert message["Subject"] == "Welcome to The Digest"
    text, html = text_and_html(message)
    assert "Hi Margaret, you are subscribed." in text
    assert "You will get posts tagged Python, Web performance, daily at 07:00 (Europe/Lisbon)." in (
        " ".join(text.split())
    )
    preferences_url = link_in_text(text, base, "preferences")
    assert href_of(html, "Change tags, cadence or time zone") == preferences_url
    # The button on the confirmed page leads to the same preferences page.
    manage = page.get_by_role("link", name="Manage your subscription")
    assert (manage.get_attribute("href") or "").startswith(f"{base}/preferences/")

    # 3. Preferences: swap a tag, go weekly on Friday at 18:00 in New York.
    page.goto(preferences_url)
    expect(page.get_by_role("heading", name="Your subscription")).to_be_visible()
    expect(page.get_by_text(f"{EMAIL} · active")).to_be_visible()
    expect(page.get_by_role("checkbox", name="Python", exact=True)).to_be_checked()
    expect(page.get_by_role("checkbox", name="Web performance", exact=True)).to_be_checked()
    expect(page.get_by_role("checkbox", name="Accessibility", exact=True)).not_to_be_checked()
    expect(page.get_by_role("radio", name="A daily digest")).to_be_checked()
    # The stored zone is shown as is: the browser's guess is for sign-up only.
    expect(page.locator("#timezone")).to_have_value("Europe/Lisbon")
    expect(page.locator("select[name=send_hour]")).to_have_value("7")
    shot("preferences")
    page.get_by_role("checkbox", name="Web performance", exact=True).uncheck()
    page.get_by_role("checkbox", name="Accessibility", exact=True).check()
    page.get_by_role("radio", name="A weekly digest").check()
    page.locator("#timezone").select_option("America/New_York")
    page.locator("select[name=send_hour]").select_option("18")
    page.locator("select[name=send_weekday]").select_option(label="Friday")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status")).to_have_text("Your preferences are saved.")
    expect(page.get_by_role("checkbox", name="Accessibility", exact=True)).to_be_checked()
    expect(page.get_by_role("checkbox", name="Web performance", exact=True)).not_to_be_checked()
    expect(page.get_by_role("radio", name="A weekly digest")).to_be_checked()
    expect(page.locator("#timezone")).to_have_value("America/New_York")
    shot("preferences-saved")
    assert stored() == Subscription(
        status=SubscriberStatus.ACTIVE,
        cadence=Cadence.WEEKLY,
        timezone="America/New_York",
        send_hour=18,
        send_weekday=4,
        name="Margaret",
        tags=["accessibility", "python"],
    )

    page.get_by_role("button", name="Pause digests").click()
    expect(page.get_by_role("status")).to_have_text(
        "Digests paused. Nothing is sent until you resume."
    )
    expect(page.get_by_text(f"{EMAIL} · paused")).to_be_visible()
    assert stored().status is SubscriberStatus.PAUSED
    page.get_by_role("button", name="Resume digests").click()
    expect(page.get_by_role("status")).to_have_text("Digests resumed.")
    expect(page.get_by_role("button", name="Pause digests")).to_be_visible()
    resumed = stored()
    assert resumed.status is SubscriberStatus.ACTIVE
    assert resumed.tags == ["accessibility", "python"] and resumed.cadence is Cadence.WEEKLY

    # 4. Unsubscribe from the preferences page: its link leads to the page that
    # offers a pause or fewer emails before the final button.
    page.get_by_role("link", name="Unsubscribe").click()
    expect(page.get_by_role("button", name="Pause digests")).to_be_visible()
    shot("unsubscribe")
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
    expect(page.get_by_text(f"{EMAIL} will get no more digests")).to_be_visible()
    shot("unsubscribed")
    assert stored().status is SubscriberStatus.UNSUBSCRIBED
    # The preferences link now says so instead of offering a form.
    page.goto(preferences_url)
    expect(page.get_by_text("This address is unsubscribed")).to_be_visible()
    expect(page.get_by_role("button", name="Save changes")).to_have_count(0)

    # Nothing else was mailed, nothing left the loopback server, no script broke.
    time.sleep(0.2)
    assert len(smtp.messages) == 2, [m.parsed()["Subject"] for m in smtp.messages]
    assert stray == []
    assert errors == []
    assert len(shot.taken) == 16
    context.close()
