"""The REST API over readers, suppressions and digests, with an admin token, on SQLite
and PostgreSQL: the console's search, a reader's page, edits that are all or nothing,
delete with the ledger's anonymous counts kept, deliveries with the SMTP reply,
suppressions and the archive's counts of digests built by the real pipeline."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, update

from newsletter.apitokens import create_token
from newsletter.console.models import AuditEntry
from newsletter.db import session_scope
from newsletter.models import Delivery, DeliveryStatus, Digest
from newsletter.tags import get_or_create_tags, parse_tag_names
from newsletter.web.app import create_app
from subscribers import suppression
from subscribers.models import Subscriber, SubscriberStatus, SuppressionEvent, SuppressionReason
from subscribers.search import search_subscribers
from subscribers.services import SubscriberInput, add_subscriber
from tests.conftest import ScriptedHandler
from tests.console.conftest import ADMIN, make_user, signed_in
from tests.console.test_subscribers import ROW
from tests.factories import make_post, make_subscriber

pytestmark = pytest.mark.usefixtures("app_env")


@pytest.fixture(autouse=True)
def clean_history() -> Iterator[None]:
    """The suppression history is not among the tables the shared fixtures empty."""
    yield
    with session_scope() as session:
        session.execute(delete(SuppressionEvent))


@pytest.fixture
def admin() -> Iterator[TestClient]:
    with session_scope() as session:
        plain, row = create_token(session, "admin tests", role="admin")
        token_prefix = row.prefix
    with TestClient(create_app(), headers={"Authorization": f"Bearer {plain}"}) as client:
        client.token_prefix = token_prefix  # type: ignore[attr-defined]
        yield client


def by(client: TestClient) -> str:
    return f"api token {client.token_prefix}"  # type: ignore[attr-defined]


def add_readers(readers: list[tuple[str, str, str, str]]) -> dict[str, int]:
    """(email, name, tags, cadence) rows in one transaction; their ids by address."""
    with session_scope() as session:
        get_or_create_tags(session, parse_tag_names(",".join(r[2] for r in readers)))
        return {
            email: add_subscriber(session, SubscriberInput(email, tags, cadence, name)).id
            for email, name, tags, cadence in readers
        }


def audit() -> list[tuple[str, str, str]]:
    with session_scope() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        return [(r.action, r.actor_email, r.target) for r in rows]


def reader(subscriber_id: int) -> Subscriber | None:
    with session_scope() as session:
        found = session.get(Subscriber, subscriber_id)
        if found is not None:
            session.expunge(found)
        return found


def every_page(client: TestClient, limit: int, **filters: str) -> list[str]:
    """Follow `next_after` to the end; the addresses in the order given."""
    emails: list[str] = []
    after = ""
    for _ in range(100):
        response = client.get(
            "/api/subscribers", params={**filters, "after": after, "limit": limit}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        emails += [item["email"] for item in page["items"]]
        if page["next_after"] is None:
            return emails
        after = page["next_after"]
    raise AssertionError("the pages never end")


# -- the list -------------------------------------------------------------------------


def test_search_filters_and_pages_answer_as_the_console_does(admin: TestClient) -> None:
    rng = random.Random(8)
    readers = [
        (
            f"{rng.choice(['ana', 'ben', 'anabel', 'carla'])}{n:02d}@example.org",
            rng.choice(["Ana Reis", "Bento", "anabela", ""]),
            rng.choice(["politics", "health", "politics, health"]),
            rng.choice(["immediate", "daily", "weekly"]),
        )
        for n in range(60)
    ]
    add_readers(readers)
    with session_scope() as session:
        for email, *_ in readers[::7]:
            session.execute(
                update(Subscriber)
                .where(Subscriber.email == email)
                .values(status=SubscriberStatus.PAUSED)
            )
        suppression.suppress(session, readers[0][0], SuppressionReason.HARD_BOUNCE)
    searches: list[dict[str, str]] = [
        {},
        {"q": "ana"},
        {"q": "ANA"},  # any case, address or name
        {"q": "bento"},
        {"tag": "health"},
        {"tag": "politics", "status": "active"},
        {"status": "paused"},
        {"cadence": "weekly", "q": "an"},
        {"tag": "health", "status": "active", "cadence": "daily"},
        {"tag": "nothing-follows-this"},
    ]
    for filters in searches:
        with session_scope() as session:
            found = search_subscribers(
                session, *(filters.get(k) for k in ("q", "tag", "status", "cadence")), limit=1000
            )
            console = [row.subscriber.email for row in found.rows]
        assert every_page(admin, 7, **filters) == console, filters
        assert every_page(admin, 1000, **filters) == console, filters
    assert every_page(admin, 1000, tag="nothing-follows-this") == []

    # And the console's own page shows the same readers.
    make_user(ADMIN, "admin")
    console = signed_in(ADMIN)
    for filters in ({"q": "an", "status": "active"}, {}):
        page = console.get("/admin/subscribers", params=filters).text
        shown = [email for _, email in ROW.findall(page)]
        assert len(shown) > 30
        assert every_page(admin, 1000, **filters)[:50] == shown

    first = admin.get("/api/subscribers", params={"limit": 5}).json()
    assert first["limit"] == 5 and len(first["items"]) == 5
    item = first["items"][0]
    suppressed = admin.get("/api/subscribers", params={"q": readers[0][0]}).json()["items"]
    assert [s["suppressed"] for s in suppressed] == ["hard_bounce"]
    assert set(item) >= {"id", "name", "status", "cadence", "tags", "timezone", "send_hour"}


@pytest.mark.parametrize(
    "params",
    [
        {"status": "gone"},
        {"cadence": "hourly"},
        {"limit": 0},
        {"limit": 1001},
        {"q": "x" * 321},
        {"after": "x" * 321},
    ],
)
def test_bad_search_parameters_are_422(admin: TestClient, params: dict[str, Any]) -> None:
    response = admin.get("/api/subscribers", params=params)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


# -- one reader -----------------------------------------------------------------------


def test_a_reader_with_follows_and_suppression_history(admin: TestClient) -> None:
    ana = make_subscriber("ana@example.org", "politics, health", "weekly", name="Ana")
    with session_scope() as session:
        suppression.suppress(session, "ana@example.org", SuppressionReason.MANUAL, "asked", "ada")
    got = admin.get(f"/api/subscribers/{ana}")
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["email"], body["name"], body["cadence"]) == ("ana@example.org", "Ana", "weekly")
    assert [f["slug"] for f in body["follows"]] == ["health", "politics"]
    assert all(f["since"] for f in body["follows"])
    assert body["suppressed"] == "manual"
    assert body["suppression"]["detail"] == "asked"
    assert [(e["action"], e["actor"]) for e in body["suppression_history"]] == [("added", "ada")]
    missing = admin.get("/api/subscribers/99999")
    assert missing.status_code == 404 and missing.json() == {"detail": "no reader #99999"}
    assert admin.get("/api/subscribers/0").status_code == 422
    assert admin.get(f"/api/subscribers/{2**31}").status_code == 422


def test_patch_changes_every_field_and_is_audited(admin: TestClient) -> None:
    ana = make_subscriber("ana@example.org", "politics", "immediate", name="Ana")
    add_readers([("x@example.org", "", "health, climate", "daily")])
    response = admin.patch(
        f"/api/subscribers/{ana}",
        json={
            "name": "Ana Reis",
            "email": "Ana.Reis@Example.org",
            "cadence": "weekly",
            "timezone": "Europe/Lisbon",
            "send_hour": 7,
            "send_weekday": "friday",
            "tags": ["Health", "climate"],
            "status": "paused",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["email"] == "ana.reis@example.org" and body["name"] == "Ana Reis"
    assert (body["cadence"], body["timezone"], body["send_hour"], body["send_weekday"]) == (
        "weekly", "Europe/Lisbon", 7, 4,
    )  # fmt: skip
    assert [t["slug"] for t in body["tags"]] == ["climate", "health"]
    assert body["status"] == "paused"
    stored = reader(ana)
    assert stored is not None and stored.email == "ana.reis@example.org"
    # The audit names the reader by number, never their address.
    assert audit()[-1] == ("subscriber_edited", by(admin), f"subscriber #{ana}")

    unsubscribed = admin.patch(f"/api/subscribers/{ana}", json={"status": "unsubscribed"})
    assert unsubscribed.status_code == 200
    assert unsubscribed.json()["suppressed"] == "unsubscribed"
    assert unsubscribed.json()["suppression_history"][0]["actor"] == by(admin)


@pytest.mark.parametrize(
    ("patch", "fields"),
    [
        ({"timezone": "Mars/Base", "name": "New"}, ["timezone"]),
        ({"email": "not an address", "cadence": "weekly"}, ["email"]),
        ({"email": "ben@example.org"}, ["email"]),  # someone else's
        ({"tags": ["no-such-tag"]}, ["tags"]),
        ({"status": "pending"}, ["status"]),
        ({"send_weekday": "someday", "timezone": "Nowhere/Land"}, ["send_weekday", "timezone"]),
    ],
)
def test_a_bad_patch_changes_nothing(
    admin: TestClient, patch: dict[str, Any], fields: list[str]
) -> None:
    ana = make_subscriber("ana@example.org", "politics", name="Ana")
    make_subscriber("ben@example.org", "politics")
    before = reader(ana)
    response = admin.patch(f"/api/subscribers/{ana}", json=patch)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert sorted(item["loc"][-1] for item in detail) == sorted(fields), detail
    after = reader(ana)
    assert before is not None and after is not None
    assert (after.name, after.email, after.cadence, after.timezone, after.updated_at) == (
        before.name, before.email, before.cadence, before.timezone, before.updated_at,
    )  # fmt: skip
    assert audit() == []


@pytest.mark.parametrize(
    "patch",
    [
        {"send_hour": 24},
        {"name": "x" * 201},
        {"tags": []},
        {"tags": ["t"] * 51},
        {"cadence": "hourly"},
        {"uid": "stolen"},
        {"email": "a" * 321},
    ],
)
def test_a_patch_outside_the_schema_is_422(admin: TestClient, patch: dict[str, Any]) -> None:
    ana = make_subscriber("ana@example.org", "politics", name="Ana")
    response = admin.patch(f"/api/subscribers/{ana}", json=patch)
    assert response.status_code == 422
    stored = reader(ana)
    assert stored is not None and stored.name == "Ana" and stored.send_hour == 8


def test_patch_of_a_missing_reader_is_404(admin: TestClient) -> None:
    assert admin.patch("/api/subscribers/4242", json={"name": "x"}).status_code == 404


# -- the pipeline's digests, deliveries and delete --------------------------------------


def test_deliveries_digests_and_delete_keeping_anonymous_counts(
    admin: TestClient, smtp: ScriptedHandler
) -> None:
    ids = {
        email: make_subscriber(email, "politics")
        for email in ("ana@example.org", "ben@example.org", "cy@example.org")
    }
    smtp.replies["ben@example.org"] = ["550 5.1.1 <ben@example.org>: no such user"]
    smtp.replies["cy@example.org"] = ["451 4.3.0 try again later"]
    make_post("politics", title="Budget day")
    with session_scope() as session:
        digest_id = session.scalars(select(Digest.id)).one()

    sent = admin.get(f"/api/subscribers/{ids['ana@example.org']}/deliveries").json()
    assert [(d["status"], d["digest_id"], d["smtp_reply"]) for d in sent["items"]] == [
        ("sent", digest_id, None)
    ]
    assert sent["items"][0]["sent_at"] and sent["next_before"] is None
    failed = admin.get(f"/api/subscribers/{ids['ben@example.org']}/deliveries").json()["items"]
    assert failed[0]["status"] == "failed" and "550 5.1.1" in failed[0]["smtp_reply"]
    waiting = admin.get(f"/api/subscribers/{ids['cy@example.org']}/deliveries").json()["items"]
    assert waiting[0]["status"] == "queued" and "451" in waiting[0]["smtp_reply"]
    assert waiting[0]["subject"] and waiting[0]["next_attempt_at"]

    counts = {"readers": 3, "sent": 1, "failed": 1, "skipped": 0, "pending": 1}
    listed = admin.get("/api/digests").json()["items"]
    assert [(d["id"], d["counts"]) for d in listed] == [(digest_id, counts)]
    assert [p["title"] for p in listed[0]["posts"]] == ["Budget day"]

    # Deleting a reader keeps their ledger row, anonymous: the counts stay true, and
    # the copy still waiting for them is never sent.
    cy = ids["cy@example.org"]
    assert admin.delete(f"/api/subscribers/{cy}").status_code == 204
    assert reader(cy) is None
    assert admin.get(f"/api/subscribers/{cy}").status_code == 404
    assert admin.get(f"/api/subscribers/{cy}/deliveries").status_code == 404
    assert admin.delete(f"/api/subscribers/{cy}").status_code == 404
    with session_scope() as session:
        orphan = session.scalars(select(Delivery).where(Delivery.subscriber_id.is_(None))).one()
        assert orphan.status is DeliveryStatus.SKIPPED and orphan.last_error is None
    detail = admin.get(f"/api/digests/{digest_id}").json()
    assert detail["counts"] == {**counts, "skipped": 1, "pending": 0}
    assert "Budget day" in detail["text"] and "Budget day" in detail["html"]
    assert "@@NL_" not in detail["html"] and "cy@example.org" not in detail["html"]
    assert ("subscriber_deleted", by(admin), f"subscriber #{cy}") in audit()
    assert all("cy@example.org" not in target for _, _, target in audit())
    assert admin.get("/api/digests/99999").status_code == 404


def test_digests_are_paged_newest_first(admin: TestClient, smtp: ScriptedHandler) -> None:
    make_subscriber("ana@example.org", "politics, health")
    for n in range(5):
        make_post("politics" if n % 2 else "health", title=f"Post {n}")
    with session_scope() as session:
        made = sorted(session.scalars(select(Digest.id)), reverse=True)
    assert len(made) == 5
    seen: list[int] = []
    before: int | None = None
    while True:
        params = {"limit": 2, **({"before": before} if before else {})}
        page = admin.get("/api/digests", params=params).json()
        seen += [d["id"] for d in page["items"]]
        if page["next_before"] is None:
            break
        before = page["next_before"]
    assert seen == made
    health = admin.get("/api/digests", params={"tag": "Health"}).json()["items"]
    assert len(health) == 3
    assert admin.get("/api/digests", params={"tag": "nope"}).json()["items"] == []
    assert admin.get("/api/digests", params={"limit": 201}).status_code == 422


def test_deliveries_are_paged_newest_first(admin: TestClient, smtp: ScriptedHandler) -> None:
    ana = make_subscriber("ana@example.org", "politics")
    for _ in range(3):
        make_post("politics")
    first = admin.get(f"/api/subscribers/{ana}/deliveries", params={"limit": 2}).json()
    assert len(first["items"]) == 2 and first["next_before"]
    rest = admin.get(
        f"/api/subscribers/{ana}/deliveries", params={"limit": 2, "before": first["next_before"]}
    ).json()
    ids = [d["id"] for d in first["items"] + rest["items"]]
    assert len(ids) == 3 and ids == sorted(ids, reverse=True) and rest["next_before"] is None


# -- suppressions -----------------------------------------------------------------------


def test_suppressions_add_list_and_lift(admin: TestClient) -> None:
    created = admin.post("/api/suppressions", json={"email": "Eve@Example.org", "note": "spam"})
    assert created.status_code == 201, created.text
    assert created.json() | {"created_at": ""} == {
        "email": "eve@example.org", "reason": "manual", "detail": "spam", "created_at": "",
    }  # fmt: skip
    again = admin.post("/api/suppressions", json={"email": "eve@example.org"})
    assert again.status_code == 200 and again.json()["detail"] == "spam"
    with session_scope() as session:
        for n in range(4):
            suppression.suppress(session, f"gone{n}@example.org", SuppressionReason.HARD_BOUNCE)
        suppression.suppress(session, "left@example.org", SuppressionReason.UNSUBSCRIBED)

    everything: list[str] = []
    after = ""
    while True:
        page = admin.get("/api/suppressions", params={"limit": 2, "after": after}).json()
        everything += [s["email"] for s in page["items"]]
        if not page["next_after"]:
            break
        after = page["next_after"]
    assert everything == sorted(everything) and len(everything) == 6
    bounced = admin.get("/api/suppressions", params={"reason": "hard_bounce"}).json()["items"]
    assert [s["email"] for s in bounced] == [f"gone{n}@example.org" for n in range(4)]
    prefixed = admin.get("/api/suppressions", params={"prefix": "Gone1"}).json()["items"]
    assert [s["email"] for s in prefixed] == ["gone1@example.org"]
    assert admin.get("/api/suppressions", params={"reason": "bored"}).status_code == 422

    assert admin.delete("/api/suppressions/Eve@Example.org").status_code == 204
    assert admin.delete("/api/suppressions/eve@example.org").status_code == 404
    with session_scope() as session:
        assert suppression.find(session, "eve@example.org") is None
        history = [(e.action, e.actor) for e in suppression.history(session, "eve@example.org")]
    assert history == [("lifted", by(admin)), ("added", by(admin))]
    assert [a for a in audit() if a[2] == "eve@example.org"] == [
        ("address_suppressed", by(admin), "eve@example.org"),
        ("address_suppressed", by(admin), "eve@example.org"),
        ("suppression_lifted", by(admin), "eve@example.org"),
    ]


@pytest.mark.parametrize(
    "body",
    [{"email": "not an address"}, {"email": ""}, {"email": "a@b.org", "reason": "x"}, {}],
)
def test_a_bad_suppression_is_422_and_adds_nothing(admin: TestClient, body: dict[str, Any]) -> None:
    response = admin.post("/api/suppressions", json=body)
    assert response.status_code == 422
    assert admin.get("/api/suppressions").json()["items"] == []


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/subscribers", {"q": "ana\x00"}),
        ("/api/subscribers", {"tag": "\x00"}),
        ("/api/subscribers", {"after": "a\x1b"}),
        ("/api/suppressions", {"prefix": "\x00"}),
        ("/api/suppressions", {"after": "\x00"}),
        ("/api/digests", {"tag": "\x00"}),
        ("/api/suppressions/ana%00@example.org", {}),
    ],
)
def test_control_characters_in_a_search_are_422_never_a_500(
    admin: TestClient, path: str, params: dict[str, str]
) -> None:
    """PostgreSQL refuses NUL in any text: such a search must never reach a query."""
    method = "DELETE" if path.startswith("/api/suppressions/") else "GET"
    response = admin.request(method, path, params=params)
    assert response.status_code == 422, response.text
    assert "U+00" in response.json()["detail"][0]["msg"]
