"""Staff accounts and a signed-in HTTP client for the console's tests."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import select

from newsletter.console import services
from newsletter.console.models import AuditEntry
from newsletter.console.security import LOGIN_CSRF_COOKIE
from newsletter.db import session_scope
from newsletter.outbox import free_port
from newsletter.web.app import create_app
from tests.conftest import apply_env

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage

PASSWORD = "correct horse battery staple"
ADMIN = "ada@example.org"
EDITOR = "grace@example.org"


@pytest.fixture(autouse=True)
def no_login_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed sign-ins answer at once in tests; the delay itself is unit-tested."""
    monkeypatch.setattr(services, "POLICY", services.LoginPolicy(delay_step=0.0))


def make_user(email: str, role: str, password: str = PASSWORD) -> int:
    with session_scope() as session:
        return services.create_user(session, email, role, password).id


@pytest.fixture
def staff(app_env: str) -> None:
    make_user(ADMIN, "admin")
    make_user(EDITOR, "editor")


def client(ip: str | None = None) -> TestClient:
    """A browser-like client on https (the base URL in the test settings is https)."""
    headers = {"x-forwarded-for": ip} if ip else {}
    return TestClient(create_app(), base_url="https://testserver", headers=headers)


def form_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the form"
    return match.group(1)


def log_in(c: TestClient, email: str, password: str = PASSWORD) -> int:
    """Fetch the form, post it; the status of the answer (303 on success)."""
    page = c.get("/admin/login")
    assert page.status_code == 200
    assert c.cookies.get(LOGIN_CSRF_COOKIE)
    response = c.post(
        "/admin/login",
        data={"email": email, "password": password, "csrf_token": form_token(page.text)},
        follow_redirects=False,
    )
    return int(response.status_code)


def signed_in(email: str, ip: str | None = None) -> TestClient:
    c = client(ip)
    assert log_in(c, email) == 303
    return c


def actions() -> list[tuple[str, str]]:
    with session_scope() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        return [(r.action, r.target) for r in rows]


def browser_sign_in(page: Any, base: str, email: str, password: str = PASSWORD) -> None:
    """Sign in through the login form in a real browser and land on the dashboard."""
    page.goto(f"{base}/admin/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/admin/")


def script_problem(problems: list[str]) -> Callable[[ConsoleMessage], None]:
    """A console listener keeping errors other than an HTTP status (the 401 of a wrong
    password, the favicon's 404): a CSP refusal or a script error."""

    def listen(message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(message.text)

    return listen


def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    apply_env(monkeypatch, NEWSLETTER_BASE_URL=base)
    config = uvicorn.Config(
        create_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def console_server(staff: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port, with an admin and an editor."""
    yield from serve(monkeypatch)
