"""The console's rules over real HTTP against a real database: sessions, CSRF, roles,
lockout, cookie flags and the audit log."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import func, select

from newsletter.console.models import LoginAttempt, StaffSession, StaffUser
from newsletter.console.security import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from newsletter.db import session_scope
from tests.cli_runner import count
from tests.conftest import apply_env
from tests.console.conftest import (
    ADMIN,
    EDITOR,
    PASSWORD,
    actions,
    client,
    form_token,
    log_in,
    make_user,
    signed_in,
)

pytestmark = pytest.mark.usefixtures("staff")

ADMIN_PAGES = ["/admin/staff", "/admin/audit"]
EDITOR_PAGES = ["/admin/", "/admin/posts"]


def sessions() -> int:
    return count(StaffSession)


def test_anonymous_visitor_is_sent_to_the_login_form() -> None:
    c = client()
    response = c.get("/admin/", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/admin/login"
    response = c.get("/admin/staff", follow_redirects=False)
    assert response.headers["location"] == "/admin/login?next=/admin/staff"
    form = c.get("/admin/login").text
    assert 'name="email"' in form and 'name="password"' in form and 'name="csrf_token"' in form


def test_wrong_password_refused_right_one_signs_in() -> None:
    c = client()
    assert log_in(c, ADMIN, "wrong password!!") == 401
    assert log_in(c, "nobody@example.org", "wrong password!!") == 401
    assert c.cookies.get(SESSION_COOKIE) is None
    assert log_in(c, ADMIN) == 303
    assert "Console" in c.get("/admin/").text
    with session_scope() as session:
        user = session.scalars(select(StaffUser).where(StaffUser.email == ADMIN)).one()
        assert user.last_login_at is not None
    assert actions() == [
        ("login_failed", ADMIN),
        ("login_failed", "nobody@example.org"),
        ("login", ADMIN),
    ]


def test_unknown_address_and_wrong_password_get_the_same_answer() -> None:
    c = client()
    page = c.get("/admin/login")
    token = form_token(page.text)
    answers = []
    for email in (ADMIN, "nobody@example.org"):
        data = {"email": email, "password": "wrong password!!", "csrf_token": token}
        response = c.post("/admin/login", data=data)
        answers.append((response.status_code, response.text.replace(email, "EMAIL")))
    assert answers[0] == answers[1]


def test_session_id_changes_at_login_and_the_old_one_dies() -> None:
    c = signed_in(ADMIN)
    first = c.cookies[SESSION_COOKIE]
    # Signed in, the form redirects to the console: post it again as a script would.
    data = {"email": ADMIN, "password": PASSWORD, "csrf_token": c.cookies[LOGIN_CSRF_COOKIE]}
    assert c.post("/admin/login", data=data, follow_redirects=False).status_code == 303
    second = c.cookies[SESSION_COOKIE]
    assert second != first
    assert sessions() == 1
    stale = client()
    stale.cookies.set(SESSION_COOKIE, first, domain="testserver.local", path="/admin")
    assert stale.get("/admin/", follow_redirects=False).status_code == 303
    # A planted id that the server never issued is replaced too.
    planted = client()
    planted.cookies.set(
        SESSION_COOKIE, "planted-by-someone", domain="testserver.local", path="/admin"
    )
    assert log_in(planted, EDITOR) == 303
    assert planted.cookies[SESSION_COOKIE] != "planted-by-someone"


def test_logout_ends_the_session_on_the_server() -> None:
    c = signed_in(ADMIN)
    token = c.cookies[SESSION_COOKIE]
    csrf = form_token(c.get("/admin/").text)
    response = c.post("/admin/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/admin/login"
    assert sessions() == 0
    replay = client()
    replay.cookies.set(SESSION_COOKIE, token, domain="testserver.local", path="/admin")
    assert replay.get("/admin/", follow_redirects=False).status_code == 303
    assert ("logout", "") in actions()


def test_cookie_flags_under_https() -> None:
    c = client()
    c.get("/admin/login")
    page = c.get("/admin/login")
    data = {"email": ADMIN, "password": PASSWORD, "csrf_token": form_token(page.text)}
    response = c.post("/admin/login", data=data, follow_redirects=False)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=lax", "secure", "path=/admin"} <= flags


def test_cookie_not_secure_under_plain_http(monkeypatch: pytest.MonkeyPatch) -> None:
    apply_env(monkeypatch, NEWSLETTER_BASE_URL="http://localhost:8000")
    c = client()
    cookie = c.get("/admin/login").headers["set-cookie"]
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert "httponly" in flags and "samesite=lax" in flags and "secure" not in flags


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_post_without_or_with_a_wrong_csrf_token_changes_nothing(token: str | None) -> None:
    c = signed_in(ADMIN)
    data = {"email": "new@example.org", "role": "editor", "password": PASSWORD}
    if token is not None:
        data["csrf_token"] = token
    before = actions()
    assert c.post("/admin/staff", data=data).status_code == 403
    with session_scope() as session:
        editor = session.scalars(select(StaffUser).where(StaffUser.email == EDITOR)).one()
    remove = {"csrf_token": token} if token is not None else {}
    assert c.post(f"/admin/staff/{editor.id}/remove", data=remove).status_code == 403
    headers = {"x-csrf-token": token or "x"}
    assert c.post("/admin/logout", headers=headers).status_code == 403
    assert count(StaffUser) == 2 and sessions() == 1 and actions() == before


def test_login_post_without_its_csrf_token_is_refused() -> None:
    c = client()
    c.get("/admin/login")
    data = {"email": ADMIN, "password": PASSWORD, "csrf_token": "forged"}
    assert c.post("/admin/login", data=data).status_code == 403
    fresh = client()  # no login-form cookie at all
    data = {"email": ADMIN, "password": PASSWORD}
    assert fresh.post("/admin/login", data=data).status_code == 403
    assert sessions() == 0 and count(LoginAttempt) == 0


def test_csrf_token_in_a_header_is_accepted() -> None:
    c = signed_in(ADMIN)
    csrf = form_token(c.get("/admin/staff").text)
    response = c.post(
        "/admin/staff",
        data={"email": "new@example.org", "role": "editor", "password": PASSWORD},
        headers={"x-csrf-token": csrf},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert count(StaffUser) == 3


def test_editor_is_refused_admin_pages_and_their_posts() -> None:
    c = signed_in(EDITOR)
    for path in EDITOR_PAGES:
        assert c.get(path).status_code == 200, path
    for path in ADMIN_PAGES:
        response = c.get(path)
        assert response.status_code == 403, path
        assert "admins only" in response.text and "Traceback" not in response.text
    csrf = form_token(c.get("/admin/").text)
    data = {"email": "x@example.org", "role": "admin", "password": PASSWORD, "csrf_token": csrf}
    assert c.post("/admin/staff", data=data).status_code == 403
    with session_scope() as session:
        admin_id = session.scalars(select(StaffUser.id).where(StaffUser.email == ADMIN)).one()
    response = c.post(f"/admin/staff/{admin_id}/remove", data={"csrf_token": csrf})
    assert response.status_code == 403
    assert count(StaffUser) == 2
    nav = c.get("/admin/").text
    assert "/admin/staff" not in nav and "/admin/audit" not in nav


def test_admin_creates_and_removes_staff_and_it_is_audited() -> None:
    c = signed_in(ADMIN)
    csrf = form_token(c.get("/admin/staff").text)
    data = {"email": "Lin@Example.org", "role": "editor", "password": PASSWORD, "csrf_token": csrf}
    page = c.post("/admin/staff", data=data)
    assert page.status_code == 200 and "Account created." in page.text
    assert "lin@example.org" in page.text
    bad = {**data, "email": "x@example.org", "password": "short"}
    page = c.post("/admin/staff", data=bad)
    assert page.status_code == 400 and "at least 12 characters" in page.text
    with session_scope() as session:
        lin = session.scalars(select(StaffUser).where(StaffUser.email == "lin@example.org")).one()
        me = session.scalars(select(StaffUser).where(StaffUser.email == ADMIN)).one()
    assert signed_in("lin@example.org").get("/admin/").status_code == 200
    page = c.post(f"/admin/staff/{lin.id}/remove", data={"csrf_token": csrf})
    assert page.status_code == 200 and "Account removed." in page.text
    with session_scope() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(StaffSession).where(StaffSession.user_id == lin.id)
            )
            == 0
        )
    refused = c.post(f"/admin/staff/{me.id}/remove", data={"csrf_token": csrf})
    assert refused.status_code == 400 and "your own account" in refused.text
    assert count(StaffUser) == 2
    logged = actions()
    assert ("staff_created", "lin@example.org") in logged
    assert ("staff_removed", "lin@example.org") in logged
    audit = c.get("/admin/audit").text
    assert audit.index("staff_removed") < audit.index("staff_created")  # newest first


def test_account_lockout_after_repeated_failures() -> None:
    c = client()
    for _ in range(4):
        assert log_in(c, ADMIN, "wrong password!!") == 401
    assert log_in(c, ADMIN, "wrong password!!") == 429
    # Locked: even the right password is refused, and so is an unknown address alike.
    assert log_in(c, ADMIN) == 429
    for _ in range(5):
        status = log_in(c, "ghost@example.org", "wrong password!!")
    assert status == 429
    # Another account from the same address is not locked by it.
    assert log_in(client(), EDITOR) == 303
    logged = actions()
    assert ("lockout", ADMIN) in logged and ("lockout", "ghost@example.org") in logged
    assert ("login", ADMIN) not in logged


def test_lock_ends_when_its_time_is_over() -> None:
    c = client()
    for _ in range(5):
        log_in(c, ADMIN, "wrong password!!")
    assert log_in(c, ADMIN) == 429
    with session_scope() as session:  # move the failures 16 minutes into the past
        for row in session.scalars(select(LoginAttempt)):
            row.created_at -= dt.timedelta(minutes=16)
    assert log_in(c, ADMIN) == 303


def test_ip_lockout_after_failures_across_accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    apply_env(monkeypatch, NEWSLETTER_TRUSTED_PROXIES="1")
    attacker = client(ip="203.0.113.9")
    for n in range(19):
        assert log_in(attacker, f"guess{n}@example.org", "wrong password!!") == 401
    assert log_in(attacker, "guess-last@example.org", "wrong password!!") == 429
    # The right password for a real account is refused from that IP ...
    assert log_in(client(ip="203.0.113.9"), EDITOR) == 429
    # ... and accepted from another.
    assert log_in(client(ip="198.51.100.4"), EDITOR) == 303
    make_user("late@example.org", "editor")
    assert log_in(client(ip="203.0.113.9"), "late@example.org") == 429


def test_audit_log_is_paged_by_keyset_newest_first() -> None:
    from newsletter.console import services

    with session_scope() as session:
        for n in range(120):
            services.audit(session, "test_action", actor_email="x@example.org", target=f"t{n:03}")
    c = signed_in(ADMIN)
    first = c.get("/admin/audit").text  # the login is the newest entry
    assert "ada@example.org" in first and "t119" in first and "t070" not in first
    seen = re.findall(r"<td>(t\d{3})</td>", first)
    before = re.search(r'href="/admin/audit\?before=(\d+)" rel="next"', first)
    while before:
        page = c.get(f"/admin/audit?before={before.group(1)}").text
        seen += re.findall(r"<td>(t\d{3})</td>", page)
        before = re.search(r'href="/admin/audit\?before=(\d+)" rel="next"', page)
    assert seen == [f"t{n:03}" for n in reversed(range(120))]
    assert c.get("/admin/audit?before=abc").status_code == 422


def test_an_unexpected_error_shows_a_page_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from newsletter.console import posts

    def broken(*_: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(posts, "recent_posts", broken)
    response = signed_in(EDITOR).get("/admin/posts")
    assert response.status_code == 500
    assert "Something went wrong" in response.text
    assert "secret internals" not in response.text and "Traceback" not in response.text
