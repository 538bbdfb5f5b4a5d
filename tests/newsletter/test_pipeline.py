"""The pipeline's invariants, on SQLite and PostgreSQL, with a real SMTP server."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from sqlalchemy import func, select, update

from newsletter import tokens
from newsletter.db import session_scope
from newsletter.delivery import planning, sending
from newsletter.delivery.pipeline import run_due
from newsletter.models import Delivery, DeliveryPost, DeliveryStatus, Digest, Post
from subscribers.models import Subscriber
from subscribers.services import by_uid, unsubscribe
from tests.conftest import ScriptedHandler
from tests.factories import make_post, make_subscriber

pytestmark = pytest.mark.usefixtures("app_env")

HOUR = dt.timedelta(hours=1)


def titles_by_recipient(smtp: ScriptedHandler) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for message in smtp.messages:
        text = message.parsed().get_body(("plain",))
        assert text is not None
        body = text.get_content()
        titles = [line for line in body.splitlines() if line.startswith("Post number ")]
        result.setdefault(message.recipients[0], []).extend(titles)
    return result


def deliveries() -> list[Delivery]:
    with session_scope() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def test_immediate_reader_gets_matching_post_once(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    make_subscriber("ana@example.org", "Politics, Health", now=t0)
    make_subscriber("ben@example.org", "Climate", now=t0)
    make_post("public services, politics", now=t0 + HOUR, title="Post number 1")

    assert titles_by_recipient(smtp) == {"ana@example.org": ["Post number 1"]}
    # A second pass, a retried task and a re-plan of the post all add nothing.
    run_due(t0 + 2 * HOUR)
    with session_scope() as session:
        post_id = session.scalars(select(Post.id)).one()
    planning.plan_for_post(post_id)
    assert len(smtp.messages) == 1
    assert [d.status for d in deliveries()] == [DeliveryStatus.SENT]


def test_post_before_subscription_is_not_sent(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    make_subscriber("early@example.org", "politics", now=t0)
    make_post("politics", now=t0 + HOUR)
    make_subscriber("late@example.org", "politics", now=t0 + 2 * HOUR)
    make_post("politics", now=t0 + 3 * HOUR)
    got = titles_by_recipient(smtp)
    assert len(got["early@example.org"]) == 2
    assert len(got["late@example.org"]) == 1


def test_daily_reader_gets_one_digest_at_local_hour(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    # 08:00 in Lisbon (UTC+0 in March) and 08:00 in New York (UTC-5 until DST).
    make_subscriber("lisbon@example.org", "health", "daily", t0, "Europe/Lisbon", 8)
    make_subscriber("nyc@example.org", "health", "daily", t0, "America/New_York", 8)
    make_post("Health", now=t0 + HOUR)
    make_post("health, climate", now=t0 + 2 * HOUR)
    make_post("climate", now=t0 + 2 * HOUR)
    assert smtp.messages == []

    # Subscribed at 05:00 in New York: their first 08:00 is today, 13:00 UTC.
    run_due(t0 + 2.5 * HOUR)
    assert smtp.messages == []
    summary = run_due(t0 + 3 * HOUR)
    assert [m.recipients for m in smtp.messages] == [["nyc@example.org"]]
    assert summary.plan.digests_rendered == 1
    # Lisbon subscribed at 10:00 local: their first 08:00 is tomorrow.
    next_day = dt.datetime(2026, 3, 3, tzinfo=dt.UTC)
    run_due(next_day + 7 * HOUR)
    assert len(smtp.messages) == 1
    summary = run_due(next_day + 8 * HOUR)
    assert summary.plan.digests_rendered == 0 and summary.plan.digests_reused == 1
    got = titles_by_recipient(smtp)
    assert sorted(got["lisbon@example.org"]) == sorted(got["nyc@example.org"])
    assert len(got["nyc@example.org"]) == 2
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Digest)) == 1

    # Nothing new the day after: nothing is sent, and the slot still moves on.
    run_due(next_day + 33 * HOUR)
    assert len(smtp.messages) == 2


def test_weekly_reader_waits_for_their_weekday(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    make_subscriber("tokyo@example.org", "climate", "weekly", t0, "Asia/Tokyo", 9, "friday")
    make_post("climate", now=t0 + HOUR)
    run_due(dt.datetime(2026, 3, 5, 23, tzinfo=dt.UTC))  # Fri 08:00 in Tokyo: not yet
    assert smtp.messages == []
    run_due(dt.datetime(2026, 3, 6, 0, 30, tzinfo=dt.UTC))  # Fri 09:30 in Tokyo
    assert len(smtp.messages) == 1


def test_render_once_per_distinct_digest(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    for n in range(30):
        make_subscriber(
            f"reader{n}@example.org", "politics" if n % 3 else "politics, health", now=t0
        )
    for n in range(5):
        make_subscriber(f"daily{n}@example.org", "politics", "daily", t0, "UTC", 9)
    make_post("politics", now=t0 + HOUR)
    make_post("health", now=t0 + HOUR)
    summary = run_due(t0 + 24 * HOUR)
    # Immediate readers: two distinct contents (post 1; post 2) across 30 readers.
    # Daily readers: one content.
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Digest)) == 3
    assert summary.plan.digests_rendered == 1
    assert len(smtp.messages) == 30 + 10 + 5
    # Each copy is personalised: its own unsubscribe link and Message-ID.
    owners = {
        m.recipients[0]: tokens.read_token(
            "unsubscribe", m.parsed()["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]
        )
        for m in smtp.messages
    }
    ids = {m.parsed()["Message-ID"] for m in smtp.messages}
    assert len(owners) == len(set(owners.values())) == 35 and len(ids) == 45


def test_unsubscribed_before_send_gets_nothing(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    sid = make_subscriber("gone@example.org", "politics", "daily", t0)
    make_post("politics", now=t0 + HOUR)
    report = planning.plan_due(t0 + 24 * HOUR)
    assert len(report.deliveries) == 1
    with session_scope() as session:
        subscriber = session.get(Subscriber, sid)
        assert subscriber is not None
        unsubscribe(session, by_uid(session, subscriber.uid))
    result = sending.send_batch(report.deliveries, t0 + 24 * HOUR)
    assert result.sent == 0 and result.skipped["subscriber_unsubscribed"] == 1
    assert smtp.messages == []
    assert deliveries()[0].status is DeliveryStatus.SKIPPED


def test_temporary_failure_is_retried_with_backoff(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    smtp.replies["slow@example.org"] = ["451 4.7.1 Greylisted, try again later", "250 OK"]
    make_subscriber("slow@example.org", "politics", now=t0)
    make_subscriber("fine@example.org", "politics", now=t0)
    make_post("politics", now=t0 + HOUR)
    assert [m.recipients for m in smtp.messages] == [["fine@example.org"]]
    slow = next(d for d in deliveries() if d.status is DeliveryStatus.QUEUED)
    assert slow.attempts == 1 and "451" in (slow.last_error or "")
    assert slow.next_attempt_at is not None

    # Not before its backoff has passed...
    summary = run_due(slow.next_attempt_at - dt.timedelta(seconds=1))
    assert summary.send.sent == 0
    # ... then it goes, once.
    run_due(slow.next_attempt_at)
    assert Counter(m.recipients[0] for m in smtp.messages) == {
        "fine@example.org": 1,
        "slow@example.org": 1,
    }
    assert {d.status for d in deliveries()} == {DeliveryStatus.SENT}


def test_permanent_failure_is_recorded(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    smtp.replies["nobody@example.org"] = ["550 5.1.1 <nobody@example.org>: no such user"]
    make_subscriber("nobody@example.org", "politics", now=t0)
    make_post("politics", now=t0 + HOUR)
    [delivery] = deliveries()
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.last_error is not None and "550 5.1.1" in delivery.last_error
    run_due(t0 + 48 * HOUR)
    assert smtp.attempts["nobody@example.org"] == 1


def test_unreachable_server_defers_the_whole_batch(
    smtp: ScriptedHandler, t0: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from newsletter.outbox import free_port
    from tests.conftest import apply_env

    make_subscriber("a@example.org", "politics", "daily", t0)
    make_subscriber("b@example.org", "politics", "daily", t0)
    make_post("politics", now=t0 + HOUR)
    real = sending.get_settings().smtp_url
    apply_env(monkeypatch, NEWSLETTER_SMTP_URL=f"smtp://127.0.0.1:{free_port()}?timeout=2")
    day = t0 + 24 * HOUR
    summary = run_due(day)
    assert summary.send.sent == 0 and len(summary.send.deferred) == 2
    assert {d.status for d in deliveries()} == {DeliveryStatus.QUEUED}
    assert real is not None
    apply_env(monkeypatch, NEWSLETTER_SMTP_URL=real)
    later = run_due(day + dt.timedelta(minutes=5))
    assert later.stranded == 2 and later.send.sent == 2
    assert sorted(m.recipients[0] for m in smtp.messages) == ["a@example.org", "b@example.org"]


def test_post_whose_task_was_lost_is_swept_up(
    smtp: ScriptedHandler, t0: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker was down at commit: the post is committed, its task never ran."""
    make_subscriber("ana@example.org", "politics", now=t0)
    monkeypatch.setattr("newsletter.dispatch.send_task", lambda *a, **k: None)
    make_post("politics", now=t0 + HOUR)
    assert smtp.messages == []
    monkeypatch.undo()
    summary = run_due(t0 + 2 * HOUR)
    assert summary.plan.posts_swept == 1
    assert len(smtp.messages) == 1


def test_batch_of_a_dead_worker_is_taken_over_once(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    make_subscriber("ana@example.org", "politics", "daily", t0)
    make_post("politics", now=t0 + HOUR)
    day = t0 + 24 * HOUR
    report = planning.plan_due(day)
    # A worker claimed the batch and died before sending.
    with session_scope() as session:
        assert sending.claim(session, report.deliveries, day) == report.deliveries
    # Another sender handed the same ids while the lease holds sends nothing...
    assert sending.send_batch(report.deliveries, day).sent == 0
    # ... and after the lease, the sweeper takes it over, exactly once.
    after = day + planning.sending_lease() + dt.timedelta(seconds=1)
    assert run_due(after).send.sent == 1
    assert run_due(after + HOUR).send.sent == 0
    assert len(smtp.messages) == 1


def test_ledger_refuses_a_post_twice(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    """Even a planner that ignored the ledger could not promise a post twice."""
    make_subscriber("ana@example.org", "politics", "daily", t0)
    make_post("politics", now=t0 + HOUR)
    planning.plan_due(t0 + 24 * HOUR)
    with session_scope() as session:
        row = session.scalars(select(DeliveryPost)).one()
        subscriber_id, post_id, delivery_id = row.subscriber_id, row.post_id, row.delivery_id
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), session_scope() as session:
        session.add(
            DeliveryPost(subscriber_id=subscriber_id, post_id=post_id, delivery_id=delivery_id)
        )
        session.flush()


def test_paused_reader_is_not_planned(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    sid = make_subscriber("ana@example.org", "politics", now=t0)
    with session_scope() as session:
        session.execute(update(Subscriber).where(Subscriber.id == sid).values(status="paused"))
    make_post("politics", now=t0 + HOUR)
    assert smtp.messages == [] and deliveries() == []


def test_sending_cost_is_substitution_not_rendering(
    smtp: ScriptedHandler, t0: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty readers in two distinct digests: MJML and premailer run twice, not forty times."""
    import newsletter.delivery.rendering as rendering

    calls = Counter[str]()
    real_mjml, real_inline = rendering.mjml2html, rendering.inline_css

    def counting_mjml(source: str, **options: object) -> str:
        calls["mjml"] += 1
        return str(real_mjml(source, **options))

    def counting_inline(html: str) -> str:
        calls["premailer"] += 1
        return real_inline(html)

    monkeypatch.setattr(rendering, "mjml2html", counting_mjml)
    monkeypatch.setattr(rendering, "inline_css", counting_inline)
    for n in range(40):
        make_subscriber(f"r{n}@example.org", "politics" if n % 2 else "health", "daily", t0)
    make_post("politics", now=t0 + HOUR)
    make_post("health", now=t0 + HOUR)
    summary = run_due(t0 + 24 * HOUR)
    assert summary.send.sent == 40
    assert calls == {"mjml": 2, "premailer": 2}
