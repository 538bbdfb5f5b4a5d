"""Staff accounts and a signed-in HTTP client for the console's tests."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from newsletter.console import services
from newsletter.console.models import AuditEntry
from newsletter.console.security import LOGIN_CSRF_COOKIE
from newsletter.db import session_scope
from newsletter.web.app import create_app

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
