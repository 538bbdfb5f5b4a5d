"""The console's preview over real HTTP against a real database and a real SMTP server:
a tag set, a reader, sample posts before any post exists, and "send me a test"."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from newsletter.console.models import AuditEntry
from newsletter.db import session_scope
from newsletter.models import Delivery, Post
from tests.browser import artefact, launch_chromium
from tests.cli_runner import count, run
from tests.conftest import ScriptedHandler, apply_env
from tests.console.conftest import (
    EDITOR,
    actions,
    browser_sign_in,
    client,
    form_token,
    script_problem,
    serve,
    signed_in,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.usefixtures("staff")


def add_post(title: str, tags: str) -> None:
    slug = re.sub(r"\W+", "-", title.lower())
    code, _, err = run(
        "posts", "add", "--title", title, "--url", f"https://x.example/{slug}", "--tags", tags
    )
    assert code == 0, err


def links(html: str) -> list[str]:
    return [unescape(h) for h in re.findall(r'href="([^"]+)"', html)]


def test_editor_previews_a_tag_set_with_real_posts() -> None:
    run("tags", "add", "politics")
    run("tags", "add", "health")
    add_post("On politics", "politics")
    add_post("On health", "health")
    c = signed_in(EDITOR)
    page = c.get("/admin/preview", params={"tags": "politics", "cadence": "daily"})
    assert page.status_code == 200
    assert '<iframe id="preview-frame"' in page.text and "sandbox" in page.text
    subject = re.search(r'<p id="preview-subject">([^<]+)</p>', page.text)
    assert subject and subject.group(1).strip()
    assert "On politics" in page.text  # the text part, beside the frame
    assert "List-Unsubscribe" in page.text and "Message-ID" in page.text
    frame = c.get("/admin/preview/frame", params={"tags": "politics", "cadence": "daily"})
    assert frame.status_code == 200
    assert "On politics" in frame.text and "On health" not in frame.text
    assert "@@NL_" not in frame.text
    assert "frame-ancestors 'self'" in frame.headers["content-security-policy"]
    assert "script-src" not in frame.headers["content-security-policy"]
    # A tag set belongs to no reader: its personal links explain themselves.
    personal = [u for u in links(frame.text) if "x.example" not in u]
    assert personal and all("/admin/preview/sample-link?link=" in u for u in personal)


def test_unknown_tag_is_refused_on_the_page() -> None:
    c = signed_in(EDITOR)
    page = c.get("/admin/preview", params={"tags": "nope"})
    assert page.status_code == 400
    assert "unknown tag" in page.text and 'name="tags" value="nope"' in page.text


def test_preview_for_a_reader_with_a_pending_digest_and_with_nothing_new() -> None:
    run("tags", "add", "health")
    add_post("Old news", "health")
    run(
        "subscribers",
        "add",
        "wen@example.org",
        "--tags",
        "health",
        "--name",
        "Wen",
        "--frequency",
        "weekly",
    )
    c = signed_in(EDITOR)

    page = c.get("/admin/preview", params={"email": "wen@example.org"})
    assert page.status_code == 200
    assert "Nothing new for wen@example.org" in page.text

    add_post("Fresh news", "health")
    page = c.get("/admin/preview", params={"email": "wen@example.org"})
    assert "The digest wen@example.org would get if the planner ran now" in page.text
    frame = c.get("/admin/preview/frame", params={"email": "wen@example.org"}).text
    assert "Fresh news" in frame and "Old news" not in frame and "Hi Wen," in frame
    # A real reader's preview carries their real links, as their copy would.
    assert any("/unsubscribe/" in u for u in links(frame))

    page = c.get("/admin/preview", params={"email": "nobody@example.org"})
    assert page.status_code == 404 and "Traceback" not in page.text
    assert 'name="email" value="nobody@example.org"' in page.text


def test_sample_posts_before_the_first_post() -> None:
    run("tags", "add", "politics")
    c = signed_in(EDITOR)
    page = c.get("/admin/preview", params={"tags": "politics"})
    assert page.status_code == 200
    assert "<strong>Sample</strong>" in page.text
    frame = c.get("/admin/preview/frame", params={"tags": "politics"}).text
    assert "Sample: a first post" in frame
    hrefs = links(frame)
    assert hrefs and all("/admin/preview/sample-link?link=" in u for u in hrefs)
    assert count(Post) == 0  # built in memory, never stored
    for which in ("preferences", "unsubscribe", "post"):
        explained = client().get(f"/admin/preview/sample-link?link={which}")
        assert explained.status_code == 200 and "Sample" in explained.text
        assert "no longer exists" not in explained.text


def test_send_me_a_test(smtp: ScriptedHandler) -> None:
    run("tags", "add", "politics")
    add_post("On politics", "politics")
    c = signed_in(EDITOR)
    page = c.get("/admin/preview", params={"tags": "politics"})
    data = {"tags": "politics", "cadence": "", "email": "", "csrf_token": form_token(page.text)}
    response = c.post("/admin/preview/test", data=data, follow_redirects=False)
    assert response.status_code == 303
    assert "Test sent to" in c.get(response.headers["location"]).text
    assert len(smtp.messages) == 1
    received = smtp.messages[0]
    assert received.recipients == [EDITOR]
    message = received.parsed()
    assert str(message["Subject"]).startswith("[Test] ")
    assert message["List-Unsubscribe"] and "sample-link" in str(message["List-Unsubscribe"])
    html = message.get_body(("html",))
    assert html is not None and "On politics" in str(html.get_content())
    assert count(Delivery) == 0
    assert ("preview_test_sent", EDITOR) in actions()


def test_test_copy_of_a_readers_digest_cannot_unsubscribe_them(smtp: ScriptedHandler) -> None:
    run("tags", "add", "health")
    run("subscribers", "add", "wen@example.org", "--tags", "health", "--frequency", "weekly")
    add_post("Fresh news", "health")
    c = signed_in(EDITOR)
    page = c.get("/admin/preview", params={"email": "wen@example.org"})
    data = {"email": "wen@example.org", "csrf_token": form_token(page.text)}
    assert c.post("/admin/preview/test", data=data, follow_redirects=False).status_code == 303
    message = smtp.messages[0].parsed()
    assert smtp.messages[0].recipients == [EDITOR]
    assert "sample-link" in str(message["List-Unsubscribe"])
    html = message.get_body(("html",))
    assert html is not None
    content = str(html.get_content())
    assert "Fresh news" in content and "/unsubscribe/" not in content
    assert count(Delivery) == 0


def test_a_refused_test_send_is_shown_and_logged(smtp: ScriptedHandler) -> None:
    run("tags", "add", "politics")
    add_post("On politics", "politics")
    smtp.replies[EDITOR] = ["550 5.1.1 no such user"]
    c = signed_in(EDITOR)
    page = c.get("/admin/preview", params={"tags": "politics"})
    data = {"tags": "politics", "csrf_token": form_token(page.text)}
    response = c.post("/admin/preview/test", data=data)
    assert response.status_code == 502
    assert "could not be sent" in response.text and "no such user" in response.text
    assert "On politics" in response.text  # the preview is still shown
    assert smtp.messages == [] and count(Delivery) == 0
    assert ("preview_test_failed", EDITOR) in actions()


def test_test_send_without_csrf_sends_nothing(smtp: ScriptedHandler) -> None:
    run("tags", "add", "politics")
    add_post("On politics", "politics")
    c = signed_in(EDITOR)
    for token in (None, "not-the-token"):
        data = {"tags": "politics"} | ({"csrf_token": token} if token else {})
        response = c.post("/admin/preview/test", data=data, follow_redirects=False)
        assert response.status_code == 403
    assert smtp.messages == [] and count(Delivery) == 0
    with session_scope() as session:
        sent = session.scalars(select(AuditEntry).where(AuditEntry.action.like("preview%")))
        assert list(sent) == []


def test_anonymous_visitor_is_sent_to_login() -> None:
    c = client()
    for path in ("/admin/preview?tags=politics", "/admin/preview/frame?tags=politics"):
        response = c.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/admin/login?next=/admin/preview")
    response = c.post("/admin/preview/test", data={"tags": "politics"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/admin/login")


@pytest.fixture
def preview_server(smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    run("tags", "add", "politics")
    add_post("On politics", "politics")
    yield from serve(monkeypatch)


def frame_width(page: Page) -> float:
    box = page.locator("#preview-frame").bounding_box()
    assert box is not None
    return float(box["width"])


def test_preview_in_the_browser(preview_server: str, smtp: ScriptedHandler, tmp_path: Path) -> None:
    base = preview_server
    problems: list[str] = []
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", script_problem(problems))
        browser_sign_in(page, base, EDITOR)

        page.click("nav >> text=Preview")
        page.wait_for_url(f"{base}/admin/preview")
        page.fill("input[name=tags]", "politics")
        page.click("button:has-text('Preview')")
        page.wait_for_url(f"{base}/admin/preview?*")
        frame = page.frame_locator("#preview-frame")
        frame.locator("a:has-text('On politics')").first.wait_for()
        assert frame_width(page) == 600

        page.click("button[data-width='375']")
        assert frame_width(page) == 375
        assert page.get_attribute("button[data-width='375']", "aria-pressed") == "true"
        page.screenshot(path=str(artefact("preview-375.png")), full_page=True)

        page.click("button[data-width='desktop']")
        assert frame_width(page) > 900  # the whole row, the details below it
        page.screenshot(path=str(artefact("preview-desktop.png")), full_page=True)

        # The sample unsubscribe link explains itself inside the frame.
        frame.locator("a:has-text('Unsubscribe')").click()
        frame.locator("h1:has-text('Unsubscribe link')").wait_for()

        page.click("button:has-text('Send me a test')")
        page.wait_for_url(f"{base}/admin/preview?*sent=*")
        assert page.locator("[role=status]").first.inner_text().startswith("Test sent to")
    for name in ("preview-375.png", "preview-desktop.png"):
        assert artefact(name).stat().st_size > 0
    assert problems == []
    assert len(smtp.messages) == 1 and smtp.messages[0].recipients == [EDITOR]
    assert count(Delivery) == 0


def test_test_addresses_receive_the_test_and_bad_ones_are_shown(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(
        monkeypatch,
        NEWSLETTER_TEST_ADDRESSES="team@example.org, Desk@Example.org,, not-an-address, "
        + EDITOR.upper(),
    )
    run("tags", "add", "politics")
    add_post("On politics", "politics")
    c = signed_in(EDITOR)
    page = c.get("/admin/preview", params={"tags": "politics"})
    assert page.status_code == 200
    recipients = f"To {EDITOR}, team@example.org, desk@example.org,"
    assert recipients in page.text
    # A bad entry in the setting is reported on the page and left out, never a crash.
    assert "NEWSLETTER_TEST_ADDRESSES: invalid email address &#39;not-an-address&#39;" in page.text

    data = {"tags": "politics", "csrf_token": form_token(page.text)}
    response = c.post("/admin/preview/test", data=data, follow_redirects=False)
    assert response.status_code == 303
    shown = c.get(response.headers["location"]).text
    assert f"Test sent to {EDITOR}, team@example.org, desk@example.org." in shown
    assert [m.recipients for m in smtp.messages] == [
        [EDITOR],
        ["team@example.org"],
        ["desk@example.org"],
    ]
    for received in smtp.messages:
        message = received.parsed()
        assert str(message["Subject"]).startswith("[Test] ")
        assert str(message["To"]) == received.recipients[0]
    assert len({m.parsed()["Message-ID"] for m in smtp.messages}) == 3
    assert count(Delivery) == 0  # never a reader's delivery
    with session_scope() as session:
        entry = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "preview_test_sent")
        ).one()
        assert entry.detail["to"] == [EDITOR, "team@example.org", "desk@example.org"]


def test_a_test_address_refused_by_the_server_does_not_stop_the_others(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(monkeypatch, NEWSLETTER_TEST_ADDRESSES="gone@example.org, team@example.org")
    smtp.replies["gone@example.org"] = ["550 5.1.1 no such user"]
    run("tags", "add", "politics")
    add_post("On politics", "politics")
    c = signed_in(EDITOR)
    page = c.get("/admin/preview", params={"tags": "politics"})
    data = {"tags": "politics", "csrf_token": form_token(page.text)}
    response = c.post("/admin/preview/test", data=data)
    assert response.status_code == 200
    assert f"Test sent to {EDITOR}, team@example.org." in response.text
    assert "could not be sent to gone@example.org" in response.text
    assert "no such user" in response.text
    assert [m.recipients for m in smtp.messages] == [[EDITOR], ["team@example.org"]]
    assert count(Delivery) == 0
    with session_scope() as session:
        entry = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "preview_test_sent")
        ).one()
        assert entry.detail["to"] == [EDITOR, "team@example.org"]
        assert "no such user" in entry.detail["failed"]["gone@example.org"]
