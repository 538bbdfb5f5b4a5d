"""The REST API for posts and tags, with real bearer tokens, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from newsletter.apitokens import create_token, revoke_token
from newsletter.db import session_scope
from newsletter.models import DeliveryPost, Post, Tag
from newsletter.web.app import create_app
from tests.conftest import ScriptedHandler
from tests.factories import make_post, make_subscriber

pytestmark = pytest.mark.usefixtures("app_env")


@pytest.fixture
def token() -> str:
    with session_scope() as session:
        plain, _ = create_token(session, "tests")
    return plain


@pytest.fixture
def client(token: str) -> Iterator[TestClient]:
    with TestClient(create_app(), headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


def new_post(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "title": "Budget day",
        "url": "https://blog.example.org/budget/",
        "tags": ["Politics"],
        "summary": "What changes.",
        "body": '<p onclick="x()">Hi <img src="/a.png"></p>',
    }
    data.update(changes)
    return data


def count(model: type) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_tokens_are_required(token: str) -> None:
    with TestClient(create_app()) as anonymous:
        for method, path in [("GET", "/api/posts"), ("POST", "/api/posts"),
                             ("GET", "/api/tags"), ("DELETE", "/api/tags/x")]:  # fmt: skip
            response = anonymous.request(method, path)
            assert response.status_code == 401, path
            assert response.json() == {"detail": "missing bearer token"}
        wrong = anonymous.get("/api/posts", headers={"Authorization": "Bearer nl_wrong"})
        assert wrong.status_code == 401
        with session_scope() as session:
            revoke_token(session, 1)
        revoked = anonymous.get("/api/posts", headers={"Authorization": f"Bearer {token}"})
        assert revoked.status_code == 401 and revoked.json()["detail"] == "invalid or revoked token"


def test_create_post_mails_followers_and_edits_do_not(
    client: TestClient, smtp: ScriptedHandler
) -> None:
    make_subscriber("ana@example.org", "politics")
    response = client.post("/api/posts", json=new_post())
    assert response.status_code == 201, response.text
    post = response.json()
    assert post["source"] == "api" and post["guid"] == "https://blog.example.org/budget/"
    assert post["body"] == '<p>Hi <img src="https://blog.example.org/a.png"></p>'
    assert post["tags"] == [{"slug": "politics", "name": "politics"}]  # made by make_subscriber
    assert [m.recipients for m in smtp.messages] == [["ana@example.org"]]

    patched = client.patch(
        f"/api/posts/{post['id']}",
        json={"title": "Budget day, revised", "tags": ["Politics", "Health"]},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["title"] == "Budget day, revised"
    assert [t["slug"] for t in patched.json()["tags"]] == ["health", "politics"]
    assert patched.json()["summary"] == "What changes."
    assert patched.json()["received_at"] == post["received_at"]
    assert len(smtp.messages) == 1

    got = client.get(f"/api/posts/{post['id']}")
    assert got.status_code == 200 and got.json()["title"] == "Budget day, revised"
    assert client.patch(f"/api/posts/{post['id']}", json={"author": None}).status_code == 200

    assert count(DeliveryPost) == 1  # the promise to Ana
    assert client.delete(f"/api/posts/{post['id']}").status_code == 204
    assert client.get(f"/api/posts/{post['id']}").status_code == 404
    assert client.delete(f"/api/posts/{post['id']}").status_code == 404
    assert count(Post) == 0
    assert count(DeliveryPost) == 0  # no foreign key: deleted with the post


def test_list_posts_paginates_and_filters(client: TestClient) -> None:
    for n in range(5):
        make_post("politics" if n % 2 else "health", title=f"Post {n}")
    page = client.get("/api/posts", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and page["limit"] == 2 and page["offset"] == 1
    assert [p["title"] for p in page["items"]] == ["Post 3", "Post 2"]
    politics = client.get("/api/posts", params={"tag": "Politics"}).json()
    assert politics["total"] == 2 and {p["title"] for p in politics["items"]} == {
        "Post 1",
        "Post 3",
    }
    assert client.get("/api/posts", params={"limit": 0}).status_code == 422
    assert client.get("/api/posts", params={"limit": 1000}).status_code == 422
    assert client.get("/api/posts", params={"offset": -1}).status_code == 422


def test_duplicate_guid_is_a_conflict(client: TestClient) -> None:
    assert client.post("/api/posts", json=new_post(guid="g-1")).status_code == 201
    response = client.post("/api/posts", json=new_post(guid="g-1", title="Other"))
    assert response.status_code == 409 and "already exists" in response.json()["detail"]
    assert count(Post) == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": "/relative"}, "http(s) URL"),
        ({"title": "  "}, "needs a title"),
        ({"tags": ["***"]}, "no letters or digits"),
        ({"unknown": 1}, "Extra inputs are not permitted"),
        ({"published_at": "soon"}, "datetime"),
    ],
)
def test_invalid_post_is_422_and_stores_nothing(
    client: TestClient, changes: dict[str, Any], message: str
) -> None:
    response = client.post("/api/posts", json=new_post(**changes))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, list) and any(message in item["msg"] for item in detail), detail
    assert count(Post) == 0 and count(Tag) == 0


def test_invalid_patch_changes_nothing(client: TestClient) -> None:
    post_id = client.post("/api/posts", json=new_post()).json()["id"]
    response = client.patch(f"/api/posts/{post_id}", json={"url": "ftp://x", "title": "New"})
    assert response.status_code == 422
    assert client.get(f"/api/posts/{post_id}").json()["title"] == "Budget day"
    assert client.patch("/api/posts/999", json={"title": "x"}).status_code == 404


def test_tags_crud(client: TestClient) -> None:
    created = client.post("/api/tags", json={"name": "Public Services"})
    assert created.status_code == 201
    assert created.json() | {"id": 0, "created_at": ""} == {
        "id": 0, "slug": "public-services", "name": "Public Services", "created_at": "",
        "posts": 0, "followers": 0,
    }  # fmt: skip
    # One tag whatever the spelling.
    assert client.post("/api/tags", json={"name": "public services"}).status_code == 409
    assert client.post("/api/tags", json={"name": "?!"}).status_code == 422

    make_subscriber("ana@example.org", "public services")
    make_post("Public-Services")
    listed = client.get("/api/tags").json()
    assert listed["total"] == 1
    assert (listed["items"][0]["posts"], listed["items"][0]["followers"]) == (1, 1)
    assert client.get("/api/tags/Public Services").json()["slug"] == "public-services"
    assert client.get("/api/tags/nope").status_code == 404

    renamed = client.patch("/api/tags/public-services", json={"name": "Services Públicos"})
    assert renamed.status_code == 200
    assert renamed.json()["slug"] == "services-publicos" and renamed.json()["followers"] == 1
    client.post("/api/tags", json={"name": "Health"})
    assert client.patch("/api/tags/health", json={"name": "Services publicos"}).status_code == 409

    refused = client.delete("/api/tags/services-publicos")
    assert refused.status_code == 409 and "force=true" in refused.json()["detail"]
    assert client.delete("/api/tags/services-publicos", params={"force": True}).status_code == 204
    assert client.delete("/api/tags/health").status_code == 204
    assert count(Tag) == 0 and count(Post) == 1


def test_openapi_documents_every_endpoint_parameter_and_error(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    operations = {
        (method.upper(), path): op
        for path, item in schema["paths"].items()
        if path.startswith(("/api/", "/hooks/"))
        for method, op in item.items()
    }
    assert set(operations) == {
        ("POST", "/api/posts"), ("GET", "/api/posts"), ("GET", "/api/posts/{post_id}"),
        ("PATCH", "/api/posts/{post_id}"), ("DELETE", "/api/posts/{post_id}"),
        ("POST", "/api/posts/{post_id}/hold"), ("POST", "/api/posts/{post_id}/release"),
        ("POST", "/api/tags"), ("GET", "/api/tags"), ("GET", "/api/tags/{slug}"),
        ("PATCH", "/api/tags/{slug}"), ("DELETE", "/api/tags/{slug}"),
        ("GET", "/api/subscribers"), ("GET", "/api/subscribers/{subscriber_id}"),
        ("PATCH", "/api/subscribers/{subscriber_id}"),
        ("DELETE", "/api/subscribers/{subscriber_id}"),
        ("GET", "/api/subscribers/{subscriber_id}/deliveries"),
        ("POST", "/api/subscribers/import"), ("GET", "/api/subscribers/export"),
        ("GET", "/api/suppressions"), ("POST", "/api/suppressions"),
        ("DELETE", "/api/suppressions/{email}"),
        ("GET", "/api/digests"), ("GET", "/api/digests/{digest_id}"), ("GET", "/api/stats"),
        ("POST", "/hooks/posts"), ("POST", "/hooks/bounces"), ("POST", "/hooks/bounces/mailgun"),
    }  # fmt: skip
    for (method, path), op in operations.items():
        where = f"{method} {path}"
        assert op.get("summary") and op.get("description"), where
        assert op.get("tags"), where
        for parameter in op.get("parameters", []):
            assert parameter.get("description"), f"{where}: {parameter['name']}"
        responses = op["responses"]
        errors = {code for code in responses if code.startswith("4") or code.startswith("5")}
        for code in errors:
            assert responses[code].get("description"), f"{where} {code}"
            assert "application/json" in responses[code].get("content", {}), f"{where} {code}"
        if path.startswith("/api/"):
            assert {"401", "422"} <= errors, where
            assert op.get("security") == [{"HTTPBearer": []}], where
        if "{" in path:
            assert "404" in errors, where
        # Every POST creates something, but an import (which answers with its report)
        # and the actions on a post (hold, release), which answer with the post.
        actions = (
            "/api/subscribers/import",
            "/api/posts/{post_id}/hold",
            "/api/posts/{post_id}/release",
        )
        if method == "POST" and path.startswith("/api/") and path not in actions:
            assert "409" in errors and "201" in responses, where
    hook = operations[("POST", "/hooks/posts")]
    assert {"400", "401", "413", "415", "422", "503"} <= set(hook["responses"])
    assert hook["requestBody"]["content"]["application/json"]["schema"]["properties"]["guid"]
    assert [p["name"] for p in hook["parameters"]] == ["X-Newsletter-Signature"]
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_every_reference_in_the_openapi_document_resolves(client: TestClient) -> None:
    """ReDoc and code generators stop at a dangling $ref."""
    schema = client.get("/openapi.json").json()

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    found = set(refs(schema))
    assert found
    for ref in found:
        target: Any = schema
        for part in ref.removeprefix("#/").split("/"):
            assert part in target, f"{ref} points nowhere"
            target = target[part]
