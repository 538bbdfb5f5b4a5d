"""The console's API token page over real HTTP against real databases: the secret is
shown once and works on `/api/`, revoking makes it fail, and the secret is nowhere
else (not in a URL, the list, the audit log or the database)."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from newsletter.apitokens import create_token
from newsletter.console.models import AuditEntry
from newsletter.db import session_scope
from newsletter.errors import InvalidInput
from newsletter.models import ApiToken
from newsletter.web.app import create_app
from tests.cli_runner import count
from tests.console.conftest import ADMIN, EDITOR, actions, form_token, signed_in

pytestmark = pytest.mark.usefixtures("staff")

SECRET = re.compile(r'id="secret"[^>]*value="(nl_[^"]+)"')


def token_of(c: TestClient) -> str:
    return form_token(c.get("/admin/tokens").text)


def api_status(secret: str, path: str = "/api/tags") -> int:
    with TestClient(create_app()) as api:
        return int(api.get(path, headers={"Authorization": f"Bearer {secret}"}).status_code)


def create(c: TestClient, name: str, role: str) -> tuple[str, str]:
    """The answer's page and the secret on it."""
    response = c.post(
        "/admin/tokens",
        data={"name": name, "role": role, "csrf_token": token_of(c)},
        follow_redirects=False,
    )
    assert response.status_code == 200  # answered in place: no redirect carries the secret
    assert response.headers["cache-control"] == "no-store"
    match = SECRET.search(response.text)
    assert match, "no secret on the page"
    return response.text, match.group(1)


def test_the_secret_is_shown_once_works_on_the_api_and_revoking_stops_it() -> None:
    c = signed_in(ADMIN)
    page, secret = create(c, "Zapier", "admin")
    assert "not shown again" in page
    assert api_status(secret) == 200
    assert api_status(secret, "/api/subscribers") == 200  # an admin token reaches readers

    # The list names it by prefix, never by secret; reloading the list shows it no more.
    listing = c.get("/admin/tokens").text
    with session_scope() as session:
        row = session.scalars(select(ApiToken)).one()
        assert (row.name, row.role, row.revoked_at) == ("Zapier", "admin", None)
        assert secret not in row.token_hash and row.last_used_at is not None
        token_id, prefix = row.id, row.prefix
    assert secret not in listing and f"{prefix}…" in listing and "never" not in listing

    response = c.post(
        f"/admin/tokens/{token_id}/revoke", data={"csrf_token": token_of(c)}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"].endswith("notice=revoked")
    assert api_status(secret) == 401
    assert "The token is revoked" in c.get(response.headers["location"]).text

    assert actions()[1:] == [
        ("token_created", f"token #{token_id}"),
        ("token_revoked", f"token #{token_id}"),
    ]
    with session_scope() as session:
        audit = [
            json.dumps({"target": e.target, "detail": e.detail})
            for e in session.scalars(select(AuditEntry))
        ]
    assert audit and not any(secret in entry for entry in audit)


def test_an_editor_token_is_refused_admin_routes() -> None:
    c = signed_in(ADMIN)
    _, secret = create(c, "Newsroom bot", "editor")
    with session_scope() as session:
        assert session.scalars(select(ApiToken.role)).one() == "editor"
    assert api_status(secret) == 200
    assert api_status(secret, "/api/subscribers") == 403


def test_bad_input_is_refused_and_creates_nothing() -> None:
    c = signed_in(ADMIN)
    token = token_of(c)
    for data, message in [
        ({"name": "", "role": "admin"}, "a token needs a name"),
        ({"name": "Bot", "role": "owner"}, "unknown role &#39;owner&#39;: choose admin or editor"),
    ]:
        response = c.post("/admin/tokens", data={**data, "csrf_token": token})
        assert response.status_code == 400 and message in response.text
    assert count(ApiToken) == 0
    assert c.post("/admin/tokens/999/revoke", data={"csrf_token": token}).status_code == 404
    assert [a for a, _ in actions()] == ["login"]


def test_create_token_validates_the_role_for_every_caller() -> None:
    with session_scope() as session:
        _, row = create_token(session, "cli", role=" Editor ")
        assert row.role == "editor"
        assert create_token(session, "default")[1].role == "admin"
        with pytest.raises(InvalidInput, match="unknown role"):
            create_token(session, "bad", role="root")


def test_editor_and_a_missing_csrf_token_are_refused_and_change_nothing() -> None:
    with session_scope() as session:
        secret, row = create_token(session, "Zapier")
        token_id = row.id
    editor = signed_in(EDITOR)
    editor_token = form_token(editor.get("/admin/tags").text)
    assert editor.get("/admin/tokens").status_code == 403
    assert (
        editor.post(
            "/admin/tokens", data={"name": "Mine", "role": "admin", "csrf_token": editor_token}
        ).status_code
        == 403
    )
    assert (
        editor.post(
            f"/admin/tokens/{token_id}/revoke", data={"csrf_token": editor_token}
        ).status_code
        == 403
    )
    admin = signed_in(ADMIN)
    assert admin.post("/admin/tokens", data={"name": "Mine", "role": "admin"}).status_code == 403
    for data in ({}, {"csrf_token": "not-the-token"}):
        assert admin.post(f"/admin/tokens/{token_id}/revoke", data=data).status_code == 403
    assert count(ApiToken) == 1 and api_status(secret) == 200
    assert [a for a, _ in actions()] == ["login", "login"]


def test_sending_the_create_form_again_makes_no_second_token() -> None:
    """A reload of the page with the secret re-sends the form; the form's one-time id
    refuses it, so no second token is made and no secret shown."""
    c = signed_in(ADMIN)
    page = c.get("/admin/tokens").text
    form_id = re.search(r'name="form_id" value="([^"]+)"', page)
    assert form_id
    data = {
        "name": "newsroom",
        "role": "editor",
        "csrf_token": form_token(page),
        "form_id": form_id.group(1),
    }
    assert c.post("/admin/tokens", data=data).status_code == 200
    again = c.post("/admin/tokens", data=data)
    assert again.status_code == 409
    assert "already sent" in again.text and not SECRET.search(again.text)
    assert count(ApiToken) == 1
    # A fresh form makes a token as before.
    fresh = c.get("/admin/tokens").text
    other = re.search(r'name="form_id" value="([^"]+)"', fresh)
    assert other and other.group(1) != form_id.group(1)
    assert c.post("/admin/tokens", data={**data, "form_id": other.group(1)}).status_code == 200
    assert count(ApiToken) == 2
