"""Hostile input at the console's ways in: refused cleanly, never a 500 or a traceback,
and nothing written but the failed attempt."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from newsletter.console.models import LoginAttempt, StaffSession, StaffUser
from newsletter.console.security import LOGIN_CSRF_COOKIE, SESSION_COOKIE, safe_next
from newsletter.web.app import create_app
from tests.cli_runner import count
from tests.conftest import truncate
from tests.console.conftest import PASSWORD, form_token, make_user
from tests.properties.conftest import hostile_text


def form_body(fields: list[tuple[str, str]]) -> bytes:
    """application/x-www-form-urlencoded, lone surrogates and all, as raw bytes."""
    return "&".join(
        f"{quote(k)}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in fields
    ).encode("ascii")


@given(email=hostile_text(), password=hostile_text(), next_url=hostile_text(huge=False))
def test_login_form(app_env: str, email: str, password: str, next_url: str) -> None:
    truncate(app_env)
    make_user("ada@example.org", "admin")
    client = TestClient(
        create_app(),
        base_url="https://testserver",
        raise_server_exceptions=False,
        follow_redirects=False,
    )
    token = form_token(client.get("/admin/login").text)
    assert client.cookies.get(LOGIN_CSRF_COOKIE) == token
    fields = [("email", email), ("password", password), ("next", next_url)]
    response = client.post(
        "/admin/login",
        content=form_body([*fields, ("csrf_token", token)]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code in (401, 422), response.text[:500]
    assert "Traceback" not in response.text
    assert f"{SESSION_COOKIE}=" not in response.headers.get("set-cookie", "")
    assert count(StaffSession) == 0 and count(LoginAttempt) <= 1
    # The real password with a hostile `next` still lands inside the console.
    real = [("email", "ada@example.org"), ("password", PASSWORD), ("next", next_url)]
    response = client.post(
        "/admin/login",
        content=form_body([*real, ("csrf_token", token)]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    if response.status_code == 303:
        assert response.headers["location"].startswith("/admin/")
        assert not response.headers["location"].startswith("/admin//")
    else:
        assert response.status_code == 422  # a `next` longer than the form allows


@given(email=hostile_text(huge=False), role=st.sampled_from(["admin", "editor", "x"]))
def test_users_create_with_hostile_addresses(app_env: str, email: str, role: str) -> None:
    from tests.console.test_users_cli import run

    truncate(app_env)
    code, _, err = run("users", "create", email, "--role", role, "--password-stdin", stdin=PASSWORD)
    assert code in (0, 2), err
    assert "Traceback" not in err
    assert count(StaffUser) == (1 if code == 0 else 0)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("/admin/posts", "/admin/posts"),
        ("/admin/audit?before=10", "/admin/audit?before=10"),
        (None, "/admin/"),
        ("https://evil.example/admin/", "/admin/"),
        ("//evil.example/admin/", "/admin/"),
        ("/admin//evil.example", "/admin/"),
        ("/admin/\\evil", "/admin/"),
        ("/admin/\r\nSet-Cookie: x=1", "/admin/"),
        ("/static/site.css", "/admin/"),
    ],
)
def test_after_sign_in_only_console_paths(given: str | None, kept: str) -> None:
    assert safe_next(given) == kept
