"""The console's tag pages over real HTTP against real databases: editors see the tags,
admins rename, describe, hide and merge them; refusals change nothing."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from newsletter.db import session_scope
from newsletter.models import Tag, post_tags
from newsletter.tags import find_tag
from tests.browser import artefact, launch_chromium
from tests.console.conftest import (
    ADMIN,
    EDITOR,
    actions,
    browser_sign_in,
    form_token,
    script_problem,
    signed_in,
)
from tests.factories import make_post, make_subscriber, make_tags
from tests.newsletter.test_tag_merge import follow_since, follows

pytestmark = pytest.mark.usefixtures("staff")

DAY = dt.timedelta(days=1)


def tag_id(slug: str) -> int:
    with session_scope() as session:
        return find_tag(session, slug).id


def tags() -> dict[str, tuple[str, str, bool]]:
    """slug -> (name, description, listed)."""
    with session_scope() as session:
        return {t.slug: (t.name, t.description, t.listed) for t in session.scalars(select(Tag))}


def token_of(c: TestClient) -> str:
    return form_token(c.get("/admin/tags").text)


def test_editor_sees_the_tags_with_their_counts_but_no_forms(t0: dt.datetime) -> None:
    make_subscriber("ana@example.org", "Climate, Health", "weekly", now=t0)
    make_subscriber("bob@example.org", "Climate", "weekly", now=t0)
    make_post("Climate", now=t0)
    c = signed_in(EDITOR)
    html = c.get("/admin/tags").text
    row = html[html.index(">Climate</a>") :].split("</tr>")[0]
    assert re.findall(r'<td class="num">(\d+)</td>', row) == ["2", "1"]  # followers, posts
    page = c.get(f"/admin/tags/{tag_id('climate')}")
    assert page.status_code == 200 and "<h1>Climate</h1>" in page.text
    assert "/rename" not in page.text and "/merge" not in page.text
    assert 'href="/admin/tags" aria-current="page"' in html  # in the editor's navigation


def test_editor_is_refused_every_change() -> None:
    make_tags("Climate, Health")
    before = tags()
    c = signed_in(EDITOR)
    token = token_of(c)
    climate = tag_id("climate")
    for action, data in [
        ("rename", {"name": "Weather"}),
        ("details", {"description": "Hot", "listed": ""}),
        ("merge", {"into": str(tag_id("health")), "confirm": "yes"}),
    ]:
        response = c.post(f"/admin/tags/{climate}/{action}", data={**data, "csrf_token": token})
        assert response.status_code == 403
    assert tags() == before
    assert [a for a, _ in actions()] == ["login"]


def test_without_the_csrf_token_nothing_changes() -> None:
    make_tags("Climate, Health")
    before = tags()
    c = signed_in(ADMIN)
    climate = tag_id("climate")
    for action, data in [
        ("rename", {"name": "Weather"}),
        ("details", {"description": "Hot"}),
        ("merge", {"into": str(tag_id("health")), "confirm": "yes"}),
    ]:
        url = f"/admin/tags/{climate}/{action}"
        assert c.post(url, data=data).status_code == 403
        assert c.post(url, data={**data, "csrf_token": "not-the-token"}).status_code == 403
    assert tags() == before
    assert [a for a, _ in actions()] == ["login"]


def test_rename_changes_name_and_slug_and_a_clash_is_refused(t0: dt.datetime) -> None:
    reader = make_subscriber("ana@example.org", "Climate, Health", "weekly", now=t0)
    climate = tag_id("climate")
    c = signed_in(ADMIN)
    token = token_of(c)
    url = f"/admin/tags/{climate}/rename"

    response = c.post(url, data={"name": "Health", "csrf_token": token})
    assert response.status_code == 400
    assert "the tag &#39;Health&#39; already has the slug &#39;health&#39;" in response.text
    assert 'value="Health"' in response.text  # the form keeps what was typed
    assert tags()["climate"][0] == "Climate" and [a for a, _ in actions()] == ["login"]
    assert c.post(url, data={"name": " ", "csrf_token": token}).status_code == 400

    response = c.post(url, data={"name": "Climate Crisis", "csrf_token": token})
    assert response.status_code == 200 and "The tag is renamed" in response.text
    assert "climate" not in tags() and tags()["climate-crisis"][0] == "Climate Crisis"
    assert (reader, "climate-crisis") in follows()
    assert actions()[-1] == ("tag_renamed", "climate-crisis")


def test_description_and_the_sign_up_switch() -> None:
    make_tags("Climate")
    climate = tag_id("climate")
    c = signed_in(ADMIN)
    token = token_of(c)
    url = f"/admin/tags/{climate}/details"
    # An unticked box sends nothing: the tag is hidden.
    c.post(url, data={"description": "Heat,\nfloods and policy", "csrf_token": token})
    assert tags()["climate"] == ("Climate", "Heat, floods and policy", False)
    assert "hidden" in c.get("/admin/tags").text
    c.post(url, data={"description": "", "listed": "yes", "csrf_token": token})
    assert tags()["climate"] == ("Climate", "", True)
    assert [a for a, _ in actions()] == ["login", "tag_updated", "tag_updated"]


def test_merge_from_the_page_moves_everything_and_keeps_the_earliest_date(
    t0: dt.datetime,
) -> None:
    both = make_subscriber("ana@example.org", "Climate, Environment", "weekly", now=t0)
    only_a = make_subscriber("bob@example.org", "Climate", "weekly", now=t0)
    follow_since(both, "climate", t0 + DAY)
    follow_since(both, "environment", t0 + 3 * DAY)
    follow_since(only_a, "climate", t0 + 2 * DAY)
    post = make_post("Climate, Environment", now=t0)
    climate, environment = tag_id("climate"), tag_id("environment")
    c = signed_in(ADMIN)
    token = token_of(c)
    url = f"/admin/tags/{climate}/merge"

    # Not confirmed, or into nothing: refused, nothing changes.
    assert c.post(url, data={"into": str(environment), "csrf_token": token}).status_code == 400
    assert c.post(url, data={"csrf_token": token}).status_code == 400
    assert (
        c.post(url, data={"into": "999999", "confirm": "yes", "csrf_token": token}).status_code
        == 404
    )
    assert (
        c.post(url, data={"into": str(climate), "confirm": "yes", "csrf_token": token}).status_code
        == 400
    )
    assert set(tags()) == {"climate", "environment"}

    response = c.post(url, data={"into": str(environment), "confirm": "yes", "csrf_token": token})
    assert response.status_code == 200 and "Merged" in response.text
    assert set(tags()) == {"environment"}
    assert follows() == {
        (both, "environment"): t0 + DAY,
        (only_a, "environment"): t0 + 2 * DAY,
    }
    with session_scope() as session:
        assert session.execute(select(post_tags)).all() == [(post, environment)]
    assert actions()[-1] == ("tag_merged", "environment")
    assert c.get(f"/admin/tags/{climate}").status_code == 404


def test_editor_is_refused_the_admin_pages_of_this_family() -> None:
    c = signed_in(EDITOR)
    for url in ("/admin/feeds", "/admin/tokens", "/admin/suppressions"):
        assert c.get(url).status_code == 403
    nav = c.get("/admin/tags").text
    for admin_only in ("/admin/feeds", "/admin/tokens", "/admin/suppressions"):
        assert f'href="{admin_only}"' not in nav


def test_admin_merges_tags_and_creates_and_revokes_a_token_in_the_browser(
    console_server: str, tmp_path: Path, t0: dt.datetime
) -> None:
    base = console_server
    reader = make_subscriber("ana@example.org", "Climate, Environment", "weekly", now=t0)
    follow_since(reader, "climate", t0)
    follow_since(reader, "environment", t0 + DAY)
    make_post("Climate", now=t0)
    problems: list[str] = []
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("console", script_problem(problems))
        browser_sign_in(page, base, ADMIN)

        page.click("nav >> text=Tags")
        page.wait_for_url(f"{base}/admin/tags")
        page.click("#tags >> text=Climate")
        page.select_option("select[name=into]", label="Environment (environment)")
        page.check("input[name=confirm]")
        page.click("button:has-text('Merge')")
        page.wait_for_url("**?notice=merged")
        assert page.locator("h1").inner_text() == "Environment"
        assert page.locator("#followers").inner_text() == "1"
        assert page.locator("#posts").inner_text() == "1"
        page.screenshot(path=str(artefact("console-tag-merged.png")), full_page=True)

        page.click("nav >> text=API tokens")
        page.fill("input[name=name]", "Zapier")
        page.select_option("select[name=role]", "admin")
        page.click("button:has-text('Create token')")
        secret = page.locator("#secret").input_value()
        assert secret.startswith("nl_") and page.url.removeprefix(base) == "/admin/tokens"
        page.screenshot(path=str(artefact("console-token-created.png")), full_page=True)
        page.click("text=Done: back to the tokens")
        assert secret not in page.content()
        page.click("button[aria-label='Revoke token Zapier']")
        page.wait_for_url("**?notice=revoked")
        assert "revoked" in page.locator(".notice").inner_text()
        page.screenshot(path=str(artefact("console-token-revoked.png")), full_page=True)
    for name in (
        "console-tag-merged.png",
        "console-token-created.png",
        "console-token-revoked.png",
    ):
        assert artefact(name).stat().st_size > 0
    assert problems == []
    assert follows() == {(reader, "environment"): t0}
    assert [a for a, _ in actions()][-3:] == ["tag_merged", "token_created", "token_revoked"]
