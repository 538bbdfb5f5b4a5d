"""Set-based planning writes the same ledger as the object-by-object planner it
replaced (kept in tests/delivery/reference_planner.py), on SQLite and PostgreSQL.

One fixture holds every cadence, time zones with and without daylight saving (the
run crosses the US change of 8 March 2026, and a weekly slot falls in its skipped
hour), a weekly weekday, and every eligibility case: subscribed after a post, a tag
followed after a post, held, failed and backlog posts, a suppressed and a paused
reader, posts already promised, a post in two followed tags, a reader with nothing
new. The same story is played through each planner from an empty database and the
ledgers compared after every run: who was promised what, which readers share which
digest, and everyone's next slot.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select, update

from newsletter import dispatch
from newsletter.db import session_scope
from newsletter.delivery import pipeline, planning
from newsletter.models import Delivery, DeliveryPost, Digest, Post
from newsletter.posts import SOURCE_BACKLOG, PostInput, add_post, hold_post
from newsletter.tags import find_tag
from subscribers.cadence import next_slot
from subscribers.models import Subscriber, SuppressionReason, subscriber_tags
from subscribers.signup import set_paused
from subscribers.suppression import suppress
from tests.conftest import apply_env, truncate
from tests.delivery import reference_planner
from tests.factories import make_post, make_subscriber

pytestmark = pytest.mark.usefixtures("app_env")

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)

Planner = Callable[[dt.datetime], Any]


@dataclass(frozen=True)
class Ledger:
    # reader -> titles promised (the guard rows)
    promised: dict[str, frozenset[str]]
    # (readers sharing one digest, its titles, cadence, delivery status)
    digests: frozenset[tuple[frozenset[str], tuple[str, ...], str, str]]
    next_digest_at: dict[str, dt.datetime | None]
    report: tuple[Any, ...]


def ledger(report: Any) -> Ledger:
    with session_scope() as session:
        titles = {pid: title for pid, title in session.execute(select(Post.id, Post.title))}
        emails = {
            sid: email for sid, email in session.execute(select(Subscriber.id, Subscriber.email))
        }
        promised: dict[str, set[str]] = defaultdict(set)
        for sid, pid in session.execute(select(DeliveryPost.subscriber_id, DeliveryPost.post_id)):
            promised[emails[sid]].add(titles[pid])
        readers: dict[tuple[int, str], set[str]] = defaultdict(set)
        for digest_id, sid, status in session.execute(
            select(Delivery.digest_id, Delivery.subscriber_id, Delivery.status)
        ):
            readers[(digest_id, status.value)].add(emails[sid])
        digests = {d.id: d for d in session.scalars(select(Digest))}
        shared = frozenset(
            (
                frozenset(members),
                tuple(sorted(titles[p] for p in digests[digest_id].post_ids)),
                digests[digest_id].cadence.value,
                status,
            )
            for (digest_id, status), members in readers.items()
        )
        slots = {
            email: slot
            for email, slot in session.execute(select(Subscriber.email, Subscriber.next_digest_at))
        }
    figures = (
        report.subscribers,
        len(report.deliveries),
        sorted(report.skipped.items()),
        report.digests_rendered,
        report.digests_reused,
        report.posts_swept,
        report.failed_deliveries,
        report.planning_errors,
    )
    return Ledger({k: frozenset(v) for k, v in promised.items()}, shared, slots, figures)


def follow_since(subscriber_id: int, slug: str, when: dt.datetime) -> None:
    with session_scope() as session:
        tag_id = find_tag(session, slug).id
        session.execute(
            update(subscriber_tags)
            .where(
                subscriber_tags.c.subscriber_id == subscriber_id, subscriber_tags.c.tag_id == tag_id
            )
            .values(created_at=when)
        )


def special_post(title: str, tags: str, now: dt.datetime, kind: str) -> None:
    with session_scope() as session:
        data = PostInput(title=title, url=f"https://blog.example.org/{kind}/", tags=tags)
        if kind == "backlog":
            add_post(session, data, now=now, source=SOURCE_BACKLOG, announce=False)
            return
        post = add_post(session, data, now=now)
        if kind == "held":
            hold_post(post, "editor@example.org", now)
        else:
            post.failed_at, post.failed_reason = now, "could not be rendered"


def build_story(t0: dt.datetime) -> list[tuple[dt.datetime, Callable[[], None]]]:
    """The readers and first posts now; the runs, each with what arrives before it."""
    before = t0 - DAY  # Sunday 1 March, 10:00 UTC
    make_subscriber("imm@example.org", "politics", now=before)
    make_subscriber("imm-sci@example.org", "science, health", now=before)
    make_subscriber("day-utc@example.org", "politics", "daily", before)
    make_subscriber(
        "day-ny@example.org", "politics, science", "daily", before, "America/New_York", 7
    )
    make_subscriber("day-lis@example.org", "health", "daily", before, "Europe/Lisbon", 9)
    make_subscriber("week-tyo@example.org", "politics", "weekly", before, "Asia/Tokyo", 6, "tue")
    # 02:00 on Sunday 8 March does not exist in Los Angeles: the clocks skip it.
    make_subscriber(
        "week-la@example.org", "science", "weekly", before, "America/Los_Angeles", 2, "sun"
    )
    make_subscriber("late-sub@example.org", "politics", "daily", t0 + 2 * HOUR)
    late_follow = make_subscriber("late-follow@example.org", "politics, science", "daily", before)
    follow_since(late_follow, "science", t0 + 3 * HOUR)
    make_subscriber("supp@example.org", "politics", "daily", before)
    paused = make_subscriber("paused@example.org", "politics", "daily", before)
    make_subscriber("both@example.org", "politics, science", "daily", before, send_hour=20)
    make_subscriber("nothing@example.org", "gardening", "daily", before)
    with session_scope() as session:
        suppress(session, "supp@example.org", SuppressionReason.HARD_BOUNCE)
        reader = session.get(Subscriber, paused)
        assert reader is not None
        set_paused(session, reader, True, before)

    make_post("politics", t0 + HOUR, "Post number 1 politics")
    make_post("science", t0 + 2 * HOUR, "Post number 2 science")
    make_post("politics, science", t0 + 4 * HOUR, "Post number 3 politics+science")
    special_post("Held politics", "politics", t0 + 5 * HOUR, "held")
    special_post("Failed health", "health", t0 + 6 * HOUR, "failed")
    special_post("Backlog politics", "politics", t0 + 7 * HOUR, "backlog")
    make_post("health", t0 + 8 * HOUR, "Post number 4 health")

    def second_wave() -> None:
        make_post("politics", t0 + DAY + 2 * HOUR, "Post number 5 politics")
        make_post("science", t0 + 6 * DAY, "Post number 6 science")

    def third_wave() -> None:
        make_post("health, science", t0 + 7 * DAY + 2 * HOUR, "Post number 7 health+science")

    return [
        (t0 + DAY, lambda: None),
        (t0 + 7 * DAY, second_wave),  # Monday 9 March: after the US change
        (t0 + 8 * DAY + 12 * HOUR, third_wave),
    ]


def play(t0: dt.datetime, plan: Planner) -> list[Ledger]:
    runs = build_story(t0)
    seen = []
    for now, arrive in runs:
        arrive()
        seen.append(ledger(plan(now)))
    return seen


@pytest.fixture
def no_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Posts wait for the planner under test (its sweeper), not for their own task."""
    # Imported first, so the tasks module keeps the real send_task once this is undone.
    import worker.tasks  # noqa: F401

    monkeypatch.setattr(dispatch, "send_task", lambda *args: None)


@pytest.mark.usefixtures("no_tasks")
@pytest.mark.parametrize("chunk", ["1", "3", "500"])
def test_bulk_planning_writes_the_ledger_the_reference_planner_writes(
    app_env: str, t0: dt.datetime, monkeypatch: pytest.MonkeyPatch, chunk: str
) -> None:
    apply_env(monkeypatch, NEWSLETTER_PLAN_CHUNK_SIZE=chunk)
    expected = play(t0, reference_planner.plan_due)
    truncate(app_env)
    got = play(t0, planning.plan_due)
    assert got == expected

    # The story reaches every case it is meant to.
    first, second, third = expected
    assert first.promised["both@example.org"] == {
        "Post number 1 politics",
        "Post number 2 science",
        "Post number 3 politics+science",
    }
    assert first.promised["late-sub@example.org"] == {"Post number 3 politics+science"}
    assert first.promised["late-follow@example.org"] == {
        "Post number 1 politics",
        "Post number 3 politics+science",
    }
    assert "supp@example.org" not in third.promised
    assert "paused@example.org" not in third.promised
    assert "nothing@example.org" not in third.promised
    assert not any(
        "Held" in t or "Failed" in t or "Backlog" in t for t in third.promised["imm@example.org"]
    )
    skipped = dict(first.report[2])
    assert skipped["suppressed"] == 1 and skipped["nothing_new"] > 0
    assert third.promised["week-la@example.org"] >= {
        "Post number 2 science",
        "Post number 6 science",
    }
    la_slot = second.next_digest_at["week-la@example.org"]
    assert la_slot == dt.datetime(2026, 3, 15, 9, tzinfo=dt.UTC)  # 02:00 PDT a week on
    # 07:00 in New York: 11:00 UTC once the clocks went forward (12:00 the week before).
    assert second.next_digest_at["day-ny@example.org"] == dt.datetime(2026, 3, 9, 11, tzinfo=dt.UTC)


@pytest.mark.usefixtures("no_tasks")
def test_streaming_hands_on_every_chunk_and_keeps_no_list(
    t0: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(monkeypatch, NEWSLETTER_PLAN_CHUNK_SIZE="2")
    for n in range(5):
        make_subscriber(f"r{n}@example.org", "politics", "daily", t0)
    make_post("politics", t0 + HOUR)
    chunks: list[list[int]] = []
    report = planning.plan_due(t0 + DAY, on_chunk=chunks.append)
    assert report.deliveries == [] and report.planned == 5
    assert [len(c) for c in chunks] == [2, 2, 1]
    with session_scope() as session:
        assert sorted(session.scalars(select(Delivery.id))) == sorted(i for c in chunks for i in c)
    # Without a callback the ids are collected, as before.
    make_post("politics", t0 + DAY + HOUR)
    again = planning.plan_due(t0 + 2 * DAY)
    assert again.planned == 5 and len(again.deliveries) == 5


@pytest.mark.usefixtures("no_tasks")
def test_run_due_hands_batches_to_workers_as_chunks_come(
    t0: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(monkeypatch, NEWSLETTER_PLAN_CHUNK_SIZE="3", NEWSLETTER_SEND_BATCH_SIZE="2")
    for n in range(7):
        make_subscriber(f"r{n}@example.org", "politics", "daily", t0)
    make_post("politics", t0 + HOUR)
    sent: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(pipeline, "tasks_run_in_process", lambda: False)
    monkeypatch.setattr(pipeline, "send_task", lambda name, batch: sent.append((name, batch)))
    summary = pipeline.run_due(t0 + DAY)
    assert summary.plan.planned == 7 and summary.plan.deliveries == []
    # Chunks of 3, 3 and 1 readers, each cut into batches of at most 2.
    assert [len(batch) for _, batch in sent] == [2, 1, 2, 1, 1]
    assert {name for name, _ in sent} == {"send_batch"} and summary.batches == 5
    assert dict(summary.rows())["deliveries planned"] == 7


@pytest.mark.usefixtures("no_tasks")
def test_every_slot_group_moves_on_and_a_suppressed_reader_keeps_its_bound(
    t0: dt.datetime,
) -> None:
    """Readers in many (cadence, zone, hour, weekday) groups, written by one statement
    on PostgreSQL and one per group on SQLite: each gets its own next slot, and a
    suppressed reader's planned_through stays (nothing was decided for them)."""
    zones = ["UTC", "Asia/Tokyo", "America/New_York"]
    for n in range(12):
        make_subscriber(
            f"w{n}@example.org", "politics", "weekly", t0, zones[n % 3], 6 + n % 4, n % 7
        )
        make_subscriber(f"d{n}@example.org", "politics", "daily", t0, zones[n % 3], 6 + n % 4)
    with session_scope() as session:
        suppress(session, "d0@example.org", SuppressionReason.MANUAL, "test", actor="test")
        session.execute(update(Subscriber).values(next_digest_at=t0 + HOUR))
    make_post("politics", t0 + HOUR)
    when = t0 + DAY
    report = planning.plan_due(when)
    assert report.planned == 23
    with session_scope() as session:
        for reader in session.scalars(select(Subscriber)):
            expected = next_slot(
                reader.cadence, reader.timezone, reader.send_hour, reader.send_weekday, when
            )
            assert reader.next_digest_at == expected, reader.email
            if reader.email == "d0@example.org":
                assert reader.planned_through is None
            else:
                assert reader.planned_through is not None
