"""The console's suppression list over real HTTP against real databases: keyset pages,
prefix search and reason filter, suppress and lift from the page with the address's
history, and who may do it."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from html import unescape

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from newsletter.db import session_scope
from subscribers import suppression
from subscribers.models import Suppression, SuppressionEvent, SuppressionReason
from tests.cli_runner import count
from tests.console.conftest import ADMIN, EDITOR, actions, form_token, signed_in
from tests.factories import make_subscriber

pytestmark = pytest.mark.usefixtures("staff")

ROW = re.compile(r'<a href="(/admin/suppressions/history\?email=[^"]+)">([^<]+)</a>')
NEXT = re.compile(r'<a href="([^"]+)" rel="next">')


@pytest.fixture(autouse=True)
def no_history_left(app_env: str) -> Iterator[None]:
    """suppression_events is not among the tables emptied between tests (yet)."""
    yield
    with session_scope() as session:
        session.execute(delete(SuppressionEvent))


def suppress(*rows: tuple[str, SuppressionReason]) -> None:
    with session_scope() as session:
        for email, reason in rows:
            suppression.suppress(session, email, reason, actor="tests")


def listed(html: str) -> list[str]:
    return [email for _, email in ROW.findall(html)]


def next_link(html: str) -> str | None:
    match = NEXT.search(html)
    return unescape(match.group(1)) if match else None


def reason_of(email: str) -> SuppressionReason | None:
    with session_scope() as session:
        row = suppression.find(session, email)
        return row.reason if row else None


def token_of(c: TestClient) -> str:
    return form_token(c.get("/admin/suppressions").text)


def test_keyset_pages_give_every_address_once_in_order() -> None:
    emails = [f"gone{n:03d}@example.org" for n in range(120)]
    suppress(*((e, SuppressionReason.HARD_BOUNCE) for e in random.Random(6).sample(emails, 120)))
    c = signed_in(ADMIN)
    seen: list[str] = []
    url: str | None = "/admin/suppressions"
    pages = 0
    while url is not None:
        response = c.get(url)
        assert response.status_code == 200
        seen += listed(response.text)
        url = next_link(response.text)
        pages += 1
    assert pages == 3 and seen == sorted(emails)


def test_prefix_search_and_reason_filter_keep_across_pages() -> None:
    suppress(
        ("ana@example.org", SuppressionReason.HARD_BOUNCE),
        ("anabel@example.org", SuppressionReason.UNSUBSCRIBED),
        ("bob@example.org", SuppressionReason.COMPLAINT),
    )
    suppress(*((f"ann{n:02d}@example.org", SuppressionReason.MANUAL) for n in range(55)))
    c = signed_in(ADMIN)

    def find(query: str) -> list[str]:
        response = c.get("/admin/suppressions?" + query)
        assert response.status_code == 200
        return listed(response.text)

    assert find("q=ANAB") == ["anabel@example.org"]
    assert find("q=an&reason=hard_bounce") == ["ana@example.org"]
    assert find("reason=complaint") == ["bob@example.org"]
    assert find("q=nobody") == []
    # A NUL (which PostgreSQL refuses outright) is a clear 400, never a 500.
    for query in ("q=ann%00", "after=ann%00@example.org"):
        refused = c.get(f"/admin/suppressions?{query}")
        assert refused.status_code == 400, query
        assert "no address or name holds" in refused.text
    html = c.get("/admin/suppressions?q=ann&reason=manual").text
    link = next_link(html)
    assert link is not None and "q=ann" in link and "reason=manual" in link
    assert len(listed(html)) == 50 and len(listed(c.get(link).text)) == 5
    bad = c.get("/admin/suppressions?reason=bored")
    assert bad.status_code == 400 and "unknown reason" in bad.text


def test_suppress_and_lift_from_the_page_with_history() -> None:
    reader = make_subscriber("ana@example.org", "news", "weekly")
    c = signed_in(ADMIN)
    response = c.post(
        "/admin/suppressions",
        data={"email": "  Ana@EXAMPLE.org ", "note": "asked by phone", "csrf_token": token_of(c)},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert reason_of("ana@example.org") is SuppressionReason.MANUAL
    page = c.get(response.headers["location"]).text
    assert "<h1>ana@example.org</h1>" in page and "The address is suppressed" in page
    assert f'href="/admin/subscribers/{reader}"' in page
    history = page[page.index('id="history"') :].split("</tbody>")[0]
    assert "added" in history and "manual" in history and ADMIN in history
    assert "asked by phone" in history

    # The list's row leads to the same history.
    [(href, email)] = ROW.findall(c.get("/admin/suppressions").text)
    assert email == "ana@example.org" and "asked by phone" in c.get(unescape(href)).text

    response = c.post(
        "/admin/suppressions/lift",
        data={"email": "ana@example.org", "csrf_token": token_of(c)},
    )
    assert response.status_code == 200 and "The suppression is lifted" in response.text
    assert "Not suppressed." in response.text
    assert reason_of("ana@example.org") is None
    with session_scope() as session:
        events = [(e.action, e.actor) for e in suppression.history(session, "ana@example.org")]
    assert events == [("lifted", ADMIN), ("added", ADMIN)]
    assert actions()[1:] == [
        ("address_suppressed", "ana@example.org"),
        ("suppression_lifted", "ana@example.org"),
    ]


def test_a_manual_suppression_outranks_an_unsubscribe() -> None:
    suppress(("ana@example.org", SuppressionReason.UNSUBSCRIBED))
    c = signed_in(ADMIN)
    c.post("/admin/suppressions", data={"email": "ana@example.org", "csrf_token": token_of(c)})
    assert reason_of("ana@example.org") is SuppressionReason.MANUAL
    with session_scope() as session:
        events = [e.action for e in suppression.history(session, "ana@example.org")]
    assert events == ["changed", "added"]


def test_bad_input_is_refused_and_changes_nothing() -> None:
    c = signed_in(ADMIN)
    token = token_of(c)
    for bad in ("", "not an address", "ana@example.org\r\nBcc: x@example.org"):
        response = c.post("/admin/suppressions", data={"email": bad, "csrf_token": token})
        assert response.status_code == 400 and "invalid email address" in response.text
    response = c.post(
        "/admin/suppressions/lift", data={"email": "bob@example.org", "csrf_token": token}
    )
    assert response.status_code == 400 and "is not suppressed" in response.text
    assert c.get("/admin/suppressions/history").status_code == 400
    assert count(Suppression) == 0 and [a for a, _ in actions()] == ["login"]
    with session_scope() as session:
        assert session.scalars(select(SuppressionEvent)).all() == []


def test_editor_and_a_missing_csrf_token_are_refused_and_change_nothing() -> None:
    suppress(("ana@example.org", SuppressionReason.HARD_BOUNCE))
    editor = signed_in(EDITOR)
    token = form_token(editor.get("/admin/tags").text)
    assert editor.get("/admin/suppressions").status_code == 403
    assert editor.get("/admin/suppressions/history?email=ana@example.org").status_code == 403
    for path, email in [
        ("/admin/suppressions", "bob@example.org"),
        ("/admin/suppressions/lift", "ana@example.org"),
    ]:
        assert editor.post(path, data={"email": email, "csrf_token": token}).status_code == 403
    admin = signed_in(ADMIN)
    for data in ({}, {"csrf_token": "not-the-token"}):
        for path, email in [
            ("/admin/suppressions", "bob@example.org"),
            ("/admin/suppressions/lift", "ana@example.org"),
        ]:
            assert admin.post(path, data={**data, "email": email}).status_code == 403
    assert reason_of("ana@example.org") is SuppressionReason.HARD_BOUNCE
    assert count(Suppression) == 1
    assert [a for a, _ in actions()] == ["login", "login"]
