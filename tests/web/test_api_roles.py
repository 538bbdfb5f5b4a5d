"""The REST API's roles, proven over every route the OpenAPI schema lists: an editor
token is refused every admin route (403, JSON) and changes nothing there, an admin
token reaches them all. A route added later must say which role it needs, or these
tests fail."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select, update

from newsletter import stats
from newsletter.apitokens import create_token
from newsletter.console.models import AuditEntry
from newsletter.db import session_scope
from newsletter.models import ApiToken, Tag
from newsletter.web.app import create_app
from newsletter.web.auth import require_admin_token, require_token
from subscribers import suppression
from subscribers.models import Subscriber, Suppression, SuppressionEvent, SuppressionReason
from tests.browser import artefact, launch_chromium
from tests.conftest import ScriptedHandler
from tests.console.conftest import script_problem, serve
from tests.factories import make_post, make_subscriber

if TYPE_CHECKING:
    from playwright.sync_api import Route

pytestmark = pytest.mark.usefixtures("app_env")

# What an editor's token reaches, as in the console: posts, tags, digests (the
# archive) and statistics. Every other /api/ route is an admin's.
EDITOR_OPERATIONS = {
    ("GET", "/api/posts"), ("POST", "/api/posts"), ("GET", "/api/posts/{post_id}"),
    ("PATCH", "/api/posts/{post_id}"), ("DELETE", "/api/posts/{post_id}"),
    ("POST", "/api/posts/{post_id}/hold"), ("POST", "/api/posts/{post_id}/release"),
    ("GET", "/api/tags"), ("POST", "/api/tags"), ("GET", "/api/tags/{slug}"),
    ("PATCH", "/api/tags/{slug}"), ("DELETE", "/api/tags/{slug}"),
    ("GET", "/api/digests"), ("GET", "/api/digests/{digest_id}"), ("GET", "/api/stats"),
}  # fmt: skip
SUPPRESSED = "blocked@example.org"
CSV = "email,name,tags,cadence,timezone\nnew@example.org,New,politics,daily,UTC\n"


@pytest.fixture(autouse=True)
def clean_history() -> Iterator[None]:
    """The suppression history is not among the tables the shared fixtures empty."""
    yield
    with session_scope() as session:
        session.execute(delete(SuppressionEvent))


def new_token(role: str) -> str:
    with session_scope() as session:
        plain, _ = create_token(session, f"{role} tests", role=role)
    return plain


def api_client(token: str) -> TestClient:
    return TestClient(create_app(), headers={"Authorization": f"Bearer {token}"})


def operations(client: TestClient) -> dict[tuple[str, str], dict[str, Any]]:
    """Every /api/ operation the OpenAPI schema documents."""
    schema = client.get("/openapi.json").json()
    return {
        (method.upper(), path): op
        for path, item in schema["paths"].items()
        if path.startswith("/api/")
        for method, op in item.items()
    }


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


def api_routes() -> dict[tuple[str, str], set[Callable[..., Any]]]:
    """Every /api/ route of the app, with every dependency it runs."""
    found = {}
    # Included routers are walked as FastAPI itself walks them for the schema.
    for route in iter_route_contexts(create_app().routes):
        if isinstance(route.original_route, APIRoute) and route.path_format.startswith("/api/"):
            calls = set(_calls(route.dependant))
            found.update({(method, route.path_format): calls for method in route.methods})
    return found


def rows() -> dict[str, int]:
    """What an admin route could change: readers, suppressions, tags, the audit log."""
    with session_scope() as session:
        return {
            model.__name__: int(session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Subscriber, Suppression, Tag, AuditEntry)
        }


def world() -> dict[str, str]:
    """A reader, a post (so a digest) and a suppressed address; path values for them."""
    reader = make_subscriber("ana@example.org", "politics", name="Ana")
    make_post("politics")
    with session_scope() as session:
        suppression.suppress(session, SUPPRESSED, SuppressionReason.MANUAL, actor="tests")
    return {"subscriber_id": str(reader), "email": SUPPRESSED, "post_id": "1", "slug": "x"}


def concrete(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "1"), path)


# A request each admin route accepts; a new admin route needs one here.
def request_for(method: str, path: str) -> dict[str, Any]:
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/api/subscribers/import"): {
            "content": CSV.encode(),
            "headers": {"content-type": "text/csv"},
        },
        ("PATCH", "/api/subscribers/{subscriber_id}"): {"json": {"name": "Ana Maria"}},
        ("POST", "/api/suppressions"): {"json": {"email": "new-block@example.org"}},
    }
    if method in {"POST", "PATCH", "PUT"}:
        assert (method, path) in bodies, f"add a request body for {method} {path}"
    return bodies.get((method, path), {})


def test_every_route_is_an_editor_route_or_checks_for_an_admin_token() -> None:
    routes = api_routes()
    with api_client(new_token("admin")) as client:
        documented = operations(client)
    assert set(routes) == set(documented), "every /api/ route is in the OpenAPI schema"
    for key, calls in routes.items():
        where = " ".join(key)
        assert require_token in calls, f"{where} checks no token"
        admin = require_admin_token in calls
        assert admin == (key not in EDITOR_OPERATIONS), f"{where}: wrong role"
        responses = documented[key]["responses"]
        assert ("403" in responses) == admin, f"{where}: 403 documented iff enforced"
        if admin:
            content = responses["403"]["content"]["application/json"]["schema"]
            assert content == {"$ref": "#/components/schemas/ErrorOut"}, where
    admin_routes = [key for key, calls in routes.items() if require_admin_token in calls]
    assert len(admin_routes) >= 10


def test_an_editor_token_is_refused_every_admin_route_and_changes_nothing() -> None:
    values = world()
    editor = api_client(new_token("editor"))
    admin_ops = [k for k, op in operations(editor).items() if "403" in op["responses"]]
    assert ("DELETE", "/api/subscribers/{subscriber_id}") in admin_ops
    before = rows()
    for method, path in admin_ops:
        response = editor.request(method, concrete(path, values), **request_for(method, path))
        assert response.status_code == 403, (method, path, response.status_code)
        assert response.headers["content-type"] == "application/json"
        assert "needs an admin token" in response.json()["detail"], (method, path)
    assert rows() == before
    with session_scope() as session:
        assert suppression.find(session, SUPPRESSED) is not None
        assert session.get(Subscriber, int(values["subscriber_id"])).name == "Ana"  # type: ignore[union-attr]


def test_an_admin_token_reaches_every_admin_route() -> None:
    values = world()
    admin = api_client(new_token("admin"))
    admin_ops = [k for k, op in operations(admin).items() if "403" in op["responses"]]
    # Deletes last, so the reads and edits find what they look for.
    for method, path in sorted(admin_ops, key=lambda k: k[0] == "DELETE"):
        response = admin.request(method, concrete(path, values), **request_for(method, path))
        assert 200 <= response.status_code < 300, (method, path, response.text)


@pytest.mark.usefixtures("smtp")
def test_an_editor_token_reaches_every_editor_route() -> None:
    values = world()
    editor = api_client(new_token("editor"))
    for method, path in sorted(EDITOR_OPERATIONS):
        if method == "GET":
            response = editor.get(concrete(path, values))
            assert response.status_code in (200, 404), (path, response.text)
    assert editor.post("/api/tags", json={"name": "Health"}).status_code == 201
    created = editor.post(
        "/api/posts", json={"title": "T", "url": "https://example.org/t", "tags": ["Health"]}
    )
    assert created.status_code == 201, created.text
    assert editor.get("/api/digests").json()["items"], "the post went out as a digest"


def test_statistics_show_an_editor_failures_without_the_reader(smtp: ScriptedHandler) -> None:
    stats.clear_cache()
    make_subscriber("ana@example.org", "politics", "daily")
    make_subscriber("ben@example.org", "politics")
    smtp.replies["ben@example.org"] = ["550 5.1.1 <ben@example.org>: no such user"]
    make_post("politics")
    admin = api_client(new_token("admin")).get("/api/stats")
    assert admin.status_code == 200, admin.text
    figures = admin.json()
    assert figures["readers"]["total"] == 2
    assert figures["readers"]["by_status"]["active"] == {"immediate": 1, "daily": 1, "weekly": 0}
    assert figures["readers"]["tags"] == [{"slug": "politics", "name": "politics", "followers": 2}]
    assert len(figures["days"]["days"]) == 30
    assert figures["days"]["days"][-1] | {"day": ""} == {
        "day": "", "digests": 1, "sent": 0, "failed": 1,
    }  # fmt: skip
    assert figures["send"]["counts"]["failed"] == 1 and figures["send"]["percent"] == 100
    [failure] = figures["failures"]
    assert failure["email"] == "ben@example.org" and "ben@example.org" in failure["smtp_reply"]

    [masked] = api_client(new_token("editor")).get("/api/stats").json()["failures"]
    assert masked["email"] is None and masked["subscriber_id"] is None
    assert "ben@example.org" not in masked["smtp_reply"] and "550 5.1.1" in masked["smtp_reply"]


def test_a_token_of_an_unknown_role_is_no_admin() -> None:
    plain = new_token("admin")
    with session_scope() as session:
        session.execute(update(ApiToken).values(role="superuser"))
    client = api_client(plain)
    assert client.get("/api/subscribers").status_code == 403
    assert client.get("/api/posts").status_code == 200


def test_no_token_is_a_401_everywhere() -> None:
    values = world()
    anonymous = TestClient(create_app())
    for method, path in operations(anonymous):
        response = anonymous.request(method, concrete(path, values))
        assert response.status_code == 401, (method, path)
        assert response.json()["detail"] == "missing bearer token"


def test_the_schema_and_docs_load_without_internet() -> None:
    client = TestClient(create_app())
    schema = client.get("/openapi.json")
    assert schema.status_code == 200 and schema.json()["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200


@pytest.fixture
def api_server(app_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port."""
    yield from serve(monkeypatch)


def test_docs_try_a_route_with_an_editor_token_offline(api_server: str, tmp_path: Path) -> None:
    """The API reference, served by the app, calls the API with the token given under
    Authorize: an editor's token reads the digests and is refused the readers."""
    make_subscriber("ana@example.org", "politics")
    editor = new_token("editor")
    base, host = api_server, urlsplit(api_server).netloc
    problems: list[str] = []
    elsewhere: list[str] = []
    with launch_chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})

        def only_the_app(route: Route) -> None:
            if urlsplit(route.request.url).netloc == host:
                route.continue_()
            else:
                elsewhere.append(route.request.url)
                route.abort()

        context.route("**/*", only_the_app)
        page = context.new_page()
        page.on("console", script_problem(problems))
        page.goto(f"{base}/docs")
        page.locator("button.authorize").first.click()
        page.locator(".modal-ux input").fill(editor)
        page.locator(".modal-ux button.authorize").click()
        page.locator(".modal-ux button.btn-done").click()

        def execute(operation: str) -> str:
            block = page.locator(f"#operations-{operation}")
            block.locator(".opblock-summary").first.click()
            block.locator("button.try-out__btn").click()
            block.locator("button.execute").click()
            status = block.locator(".live-responses-table tr.response .response-col_status").first
            status.wait_for(timeout=15000)
            return status.inner_text().strip()

        assert execute("digests-list_digests_api_digests_get") == "200"
        assert execute("subscribers-list_subscribers_api_subscribers_get") == "403"
        refusal = page.locator("#operations-subscribers-list_subscribers_api_subscribers_get")
        assert "needs an admin token" in refusal.locator(".live-responses-table").inner_text()
        refusal.screenshot(path=str(artefact("docs-editor-403.png")))
    assert (artefact("docs-editor-403.png")).stat().st_size > 0
    assert elsewhere == [] and problems == []
