"""Every console route, found by walking the app rather than listed by hand, keeps the
console's rules: a role checked on the server, a CSRF token on every change, and an
editor refused every admin route. A route added later cannot slip past these."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from newsletter.console.routes import CONSOLE_ROUTERS
from newsletter.console.security import require_admin, require_csrf, require_staff
from tests.console.conftest import EDITOR, client, form_token, signed_in

pytestmark = pytest.mark.usefixtures("staff")

# Reached before anyone signs in (the sign-in form checks its own token), and the
# page a sample link in a test mail opens, which holds no data and may be opened in
# a browser that is not signed in.
PUBLIC = {
    ("GET", "/admin/login"),
    ("POST", "/admin/login"),
    ("GET", "/admin/preview/sample-link"),
}
CHANGES = {"POST", "PUT", "PATCH", "DELETE"}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


def console_routes() -> list[tuple[str, str, set[Callable[..., Any]]]]:
    """Every (method, path, dependencies) the console's routers serve."""
    routes = []
    for router in CONSOLE_ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute) and route.path.startswith("/admin/")
            calls = set(_calls(route.dependant))
            routes.extend((method, route.path, calls) for method in sorted(route.methods))
    return routes


def concrete(path: str) -> str:
    """A path with its parameters filled: a number for ids, a word for anything else."""
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: "1" if m.group(1).endswith("id") else "x", path)


def test_the_walk_finds_the_console() -> None:
    paths = {path for _, path, _ in console_routes()}
    assert {"/admin/", "/admin/login", "/admin/subscribers", "/admin/staff"} <= paths
    assert len(paths) > 20


def test_every_route_checks_a_role_and_every_change_a_csrf_token() -> None:
    for method, path, calls in console_routes():
        if (method, path) in PUBLIC:
            continue
        assert require_staff in calls, f"{method} {path} does not check who is signed in"
        if method in CHANGES:
            assert require_csrf in calls, f"{method} {path} changes state without a CSRF check"


def test_an_anonymous_visitor_reaches_nothing() -> None:
    c = client()
    for method, path, _ in console_routes():
        if (method, path) in PUBLIC:
            continue
        response = c.request(method, concrete(path), follow_redirects=False)
        assert response.status_code in (303, 403), (method, path, response.status_code)
        if response.status_code == 303:
            assert response.headers["location"].startswith("/admin/login")


def test_an_editor_is_refused_every_admin_route() -> None:
    editor = signed_in(EDITOR)
    token = form_token(editor.get("/admin/preview").text)
    admin_routes = [(m, p) for m, p, calls in console_routes() if require_admin in calls]
    assert len(admin_routes) > 10
    for method, path in admin_routes:
        # A valid CSRF token, so the refusal is the role's and not the token's.
        response = editor.request(
            method,
            concrete(path),
            headers={"X-CSRF-Token": token},
            follow_redirects=False,
        )
        assert response.status_code == 403, (method, path, response.status_code)
        assert "Traceback" not in response.text
