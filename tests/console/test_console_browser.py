"""The console and the API reference in a real Chromium against a real server.

uvicorn serves `create_app()` on a free loopback port. Needs Debian's chromium and
playwright (see tests/browser.py); a missing piece fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from tests.browser import artefact, launch_chromium
from tests.console.conftest import ADMIN, PASSWORD, actions, script_problem, serve

if TYPE_CHECKING:
    from playwright.sync_api import Route


@pytest.fixture
def docs_server(settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from serve(monkeypatch)


def test_sign_in_in_the_browser(console_server: str, tmp_path: Path) -> None:
    base = console_server
    problems: list[str] = []
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("console", script_problem(problems))
        page.goto(f"{base}/admin/")
        assert page.url == f"{base}/admin/login"

        page.fill("input[name=email]", ADMIN)
        page.fill("input[name=password]", "not the password")
        page.click("button[type=submit]")
        assert page.locator("[role=alert]").inner_text() == "Wrong email or password."
        assert page.url == f"{base}/admin/login"
        assert page.input_value("input[name=email]") == ADMIN

        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/admin/")
        assert page.locator("h1").inner_text() == "Dashboard"
        assert page.locator(".who").inner_text().startswith(ADMIN)
        cookie = next(c for c in page.context.cookies() if c["name"] == "nl_console")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and not cookie["secure"]
        page.screenshot(path=str(artefact("console-dashboard.png")), full_page=True)

        page.click("nav >> text=Staff")
        page.wait_for_url(f"{base}/admin/staff")
        assert page.locator("table").inner_text().count("@example.org") == 2

        page.click("button:has-text('Sign out')")
        page.wait_for_url(f"{base}/admin/login")
        page.goto(f"{base}/admin/")
        assert page.url == f"{base}/admin/login"
    assert (artefact("console-dashboard.png")).stat().st_size > 0
    assert problems == []
    assert [a for a, _ in actions()] == ["login_failed", "login", "logout"]


def test_docs_load_with_no_request_leaving_the_app(docs_server: str) -> None:
    base = docs_server
    host = urlsplit(base).netloc
    requested: list[str] = []
    problems: list[str] = []
    with launch_chromium() as browser:
        context = browser.new_context()

        def log_and_go(route: Route) -> None:
            requested.append(route.request.url)
            if urlsplit(route.request.url).netloc == host:
                route.continue_()
            else:
                route.abort()

        context.route("**/*", log_and_go)
        page = context.new_page()
        page.on("console", script_problem(problems))
        page.goto(f"{base}/docs")
        title = page.locator(".information-container .title")
        title.wait_for(timeout=15000)
        assert "Tag-digest newsletter" in title.inner_text()
        assert page.locator(".opblock").count() > 0  # the operations were rendered
        assert problems == []

        # ReDoc renders too; its "API docs by Redocly" logo points at a CDN, which
        # the page's CSP blocks before any request is made.
        page.goto(f"{base}/redoc")
        page.locator("h1:has-text('Tag-digest newsletter')").wait_for(timeout=15000)
    assert requested, "no request was seen"
    assert [u for u in requested if urlsplit(u).netloc != host] == []
    assert f"{base}/openapi.json" in requested
