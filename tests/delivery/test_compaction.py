"""Ledger compaction, on SQLite and PostgreSQL with a real SMTP server: the guard rows
of settled posts go, and still nothing is sent twice, a held post released later
still goes, and a reader whose slot has not come yet still gets what waits for them.
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from sqlalchemy import func, select

from newsletter import dispatch
from newsletter.db import session_scope
from newsletter.delivery import ledger, planning
from newsletter.delivery.pipeline import run_due
from newsletter.models import Delivery, DeliveryPost, Post
from newsletter.posts import release_post
from subscribers.models import Subscriber
from tests.conftest import ScriptedHandler
from tests.factories import make_post, make_subscriber
from tests.newsletter.test_held_posts import add_held_post
from tests.newsletter.test_pipeline import titles_by_recipient

pytestmark = pytest.mark.usefixtures("app_env")


@pytest.fixture(autouse=True)
def planned_on_the_test_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Posts are planned by the runs below, on the test's clock, not by their own task
    on the real one: a post planned (by the real clock) months after it arrived would
    look released after every planning here, and hold every watermark back."""
    # Imported first, so the tasks module keeps the real send_task once this is undone.
    import worker.tasks  # noqa: F401

    monkeypatch.setattr(dispatch, "send_task", lambda *args: None)


HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def publish(tags: str, when: dt.datetime, title: str) -> int:
    """A post arriving at `when` and planned for immediate readers at once, as its task
    would (on the test's clock)."""
    post_id = make_post(tags, when, title)
    planning.plan_for_post(post_id, when)
    return post_id


def guard_rows(subscriber_id: int | None = None) -> int:
    with session_scope() as session:
        query = select(func.count()).select_from(DeliveryPost)
        if subscriber_id is not None:
            query = query.where(DeliveryPost.subscriber_id == subscriber_id)
        return session.scalar(query) or 0


def watermarks(subscriber_id: int) -> tuple[dt.datetime | None, dt.datetime | None]:
    with session_scope() as session:
        reader = session.get(Subscriber, subscriber_id)
        assert reader is not None
        return reader.planned_through, reader.settled_through


def received(smtp: ScriptedHandler) -> dict[str, list[str]]:
    return {k: sorted(v) for k, v in titles_by_recipient(smtp).items()}


def test_compaction_deletes_settled_guard_rows_and_nothing_goes_twice(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    """Daily readers at 08:00 UTC: two days of posts, planned, compacted, planned again."""
    ana = make_subscriber("ana@example.org", "politics, science", "daily", t0)
    ben = make_subscriber("ben@example.org", "politics", "daily", t0)
    one = publish("politics", t0 + HOUR, "Post number 1")
    two = publish("politics, science", t0 + 2 * HOUR, "Post number 2")
    run_due(t0 + DAY)  # Tuesday 10:00: both posts go
    three = publish("science", t0 + DAY + HOUR, "Post number 3")
    run_due(t0 + 2 * DAY)  # Wednesday: ana gets post 3
    assert guard_rows() == 5
    before = received(smtp)
    assert before == {
        "ana@example.org": ["Post number 1", "Post number 2", "Post number 3"],
        "ben@example.org": ["Post number 1", "Post number 2"],
    }

    report = ledger.compact(t0 + 2 * DAY + HOUR)
    # Last planned Wednesday 10:00: settled up to Tuesday 10:00, a day before.
    assert watermarks(ana) == (t0 + 2 * DAY, t0 + DAY)
    assert report.readers == 2 and report.advanced == 2 and report.busy == 0
    # Posts 1 and 2 (Monday) are settled: their rows go; post 3 (Tuesday 11:00) stays.
    assert report.deleted == 4 and guard_rows() == 1 and guard_rows(ben) == 0
    # What each got is still on the ledger, from their digests.
    with session_scope() as session:
        got = {
            tuple(d.post_ids)
            for d in session.scalars(select(Delivery).where(Delivery.subscriber_id == ana))
        }
    assert got == {(one, two), (three,)}
    # Run again at once: nothing more to do.
    again = ledger.compact(t0 + 2 * DAY + HOUR)
    assert again.deleted == 0 and again.advanced == 0

    # Planning again, on any day, sends nothing twice; nor after the rest is compacted.
    for day in (3, 4, 5):
        run_due(t0 + day * DAY)
    assert ledger.compact(t0 + 5 * DAY + HOUR).deleted == 1 and guard_rows() == 0
    assert watermarks(ana)[1] == t0 + 4 * DAY
    run_due(t0 + 6 * DAY)
    assert received(smtp) == before
    with session_scope() as session:
        assert planning.pending_posts(session, [ana, ben], t0 + 7 * DAY) == {}

    # A compaction with an earlier clock never moves a watermark back.
    ledger.compact(t0 + 2 * DAY + HOUR)
    assert watermarks(ana)[1] == t0 + 4 * DAY


def test_a_held_post_released_later_still_goes(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    """Held for days while the reader is planned daily and the ledger compacted; released
    after that; compacted again before and after its own task ran: it still goes."""
    ana = make_subscriber("ana@example.org", "politics", "daily", t0)
    held = add_held_post("Post number 1 (held)", t0 + HOUR)
    publish("politics", t0 + 2 * HOUR, "Post number 2")
    for day in (1, 2, 3):
        run_due(t0 + day * DAY)
        ledger.compact(t0 + day * DAY + HOUR)
    # The held post bounds the watermark: it may still be promised.
    settled = watermarks(ana)[1]
    assert settled is not None and settled < t0 + HOUR
    assert received(smtp) == {"ana@example.org": ["Post number 2"]}

    with session_scope() as session:
        post = session.get(Post, held)
        assert post is not None and release_post(session, post)
    ledger.compact(t0 + 3 * DAY + 2 * HOUR)  # released, not planned yet
    planning.plan_for_post(held, t0 + 3 * DAY + 3 * HOUR)  # its task: no immediate reader
    ledger.compact(t0 + 3 * DAY + 4 * HOUR)  # planned, but not for ana yet
    settled = watermarks(ana)[1]
    assert settled is not None and settled < t0 + HOUR

    run_due(t0 + 4 * DAY)
    assert received(smtp) == {"ana@example.org": ["Post number 1 (held)", "Post number 2"]}
    ledger.compact(t0 + 5 * DAY + HOUR)
    run_due(t0 + 6 * DAY)
    assert received(smtp) == {"ana@example.org": ["Post number 1 (held)", "Post number 2"]}


def test_a_reader_whose_slot_has_not_come_still_gets_older_posts(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    """A daily reader last planned Tuesday; posts arrive after; no run until Thursday
    (beat was down) and a weekly reader's slot is days away: compaction in between
    settles nothing they have not been offered."""
    day = make_subscriber("day@example.org", "politics", "daily", t0)
    week = make_subscriber("week@example.org", "politics", "weekly", t0, send_weekday="monday")
    run_due(t0 + DAY)  # Tuesday 10:00: nothing yet for either
    publish("politics", t0 + DAY + HOUR, "Post number 1")  # Tuesday 11:00
    ledger.compact(t0 + 3 * DAY)  # Thursday 10:00: the post is two days old
    assert watermarks(week) == (None, None)  # never planned yet: nothing settled
    settled = watermarks(day)[1]
    assert settled is not None and settled < t0 + DAY + HOUR
    run_due(t0 + 3 * DAY + HOUR)
    assert received(smtp) == {"day@example.org": ["Post number 1"]}
    ledger.compact(t0 + 6 * DAY)  # Sunday: the weekly reader still waits for Monday
    run_due(t0 + 7 * DAY)
    assert received(smtp) == {
        "day@example.org": ["Post number 1"],
        "week@example.org": ["Post number 1"],
    }


def test_immediate_readers_record_their_planning_and_are_compacted(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    ana = make_subscriber("ana@example.org", "politics", now=t0)
    publish("politics", t0 + HOUR, "Post number 1")
    # Planned again within the hour: the mark is not rewritten for every post.
    second = make_post("politics", t0 + HOUR, "Post number 2")
    planning.plan_for_post(second, t0 + HOUR + 30 * dt.timedelta(minutes=1))
    assert watermarks(ana)[0] == t0 + HOUR
    publish("politics", t0 + 2 * DAY, "Post number 3")
    assert watermarks(ana)[0] == t0 + 2 * DAY
    ledger.compact(t0 + 2 * DAY)
    assert guard_rows(ana) == 1
    run_due(t0 + 3 * DAY)
    assert sorted(received(smtp)["ana@example.org"]) == [
        "Post number 1",
        "Post number 2",
        "Post number 3",
    ]


def test_compaction_skips_a_reader_a_planner_is_writing(
    app_env: str, t0: dt.datetime, smtp: ScriptedHandler
) -> None:
    if not app_env.startswith("postgresql"):
        pytest.skip("row locks: PostgreSQL only (SQLite runs one writer at a time)")
    ana = make_subscriber("ana@example.org", "politics", "daily", t0)
    ben = make_subscriber("ben@example.org", "politics", "daily", t0)
    publish("politics", t0 + HOUR, "Post number 1")
    run_due(t0 + DAY)
    run_due(t0 + 2 * DAY)
    with psycopg.connect(app_env) as planner:
        planner.execute("UPDATE subscribers SET updated_at = now() WHERE id = %s", [ana])
        report = ledger.compact(t0 + 2 * DAY + HOUR)
    assert report.busy == 1 and report.advanced == 1
    assert watermarks(ana)[1] is None and watermarks(ben)[1] == t0 + DAY
    assert guard_rows(ana) == 1 and guard_rows(ben) == 0
