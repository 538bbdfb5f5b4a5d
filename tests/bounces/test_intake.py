"""Bounces and complaints applied, on both backends: a hard bounce suppresses at once,
soft bounces count within a window, a complaint suppresses and unsubscribes, each is
recorded with its raw diagnostic, and the same report counts once."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from newsletter.bounces import records
from newsletter.bounces.intake import BounceEvent, ingest_events, ingest_message
from newsletter.bounces.models import BounceRecord
from newsletter.db import session_scope
from subscribers import suppression
from subscribers.models import Subscriber, SubscriberStatus, SuppressionReason
from tests.bounces.conftest import fixture
from tests.bounces.test_parsing import EXPECTED
from tests.cli_runner import count
from tests.factories import make_subscriber

DAY = dt.timedelta(days=1)
REASONS = {"hard": SuppressionReason.HARD_BOUNCE, "complaint": SuppressionReason.COMPLAINT}


@pytest.fixture(autouse=True)
def env(app_env: str, bounce_env: None) -> None:
    """A database and a bounce address (the fixtures' tokens are for delivery ids no
    database here has: the reports are matched to readers by address)."""


def reason_of(email: str) -> SuppressionReason | None:
    with session_scope() as session:
        row = suppression.find(session, email)
        return row.reason if row is not None else None


def status_of(email: str) -> SubscriberStatus:
    with session_scope() as session:
        found = session.scalar(select(Subscriber.status).where(Subscriber.email == email))
        assert found is not None
        return found


REPORTS = sorted(n for n, (kind, events, _) in EXPECTED.items() if events and events[0][1])


@pytest.mark.parametrize("name", REPORTS)
def test_each_report_in_the_corpus_is_applied_to_its_reader(name: str, t0: dt.datetime) -> None:
    _, [(kind, email, _)], words = EXPECTED[name]
    assert email is not None
    make_subscriber(email, "politics", now=t0)
    result = ingest_message(fixture(name), source="test", now=t0 + 30 * DAY)
    assert result.recognised and len(result.effects) == 1
    assert reason_of(email) is REASONS.get(kind)
    expected_status = SubscriberStatus.UNSUBSCRIBED if kind == "complaint" else None
    assert status_of(email) is (expected_status or SubscriberStatus.ACTIVE)
    with session_scope() as session:
        [record] = session.scalars(select(BounceRecord)).all()
        reader = session.scalar(select(Subscriber).where(Subscriber.email == email))
        assert reader is not None
        assert (record.kind, record.email, record.subscriber_id) == (kind, email, reader.id)
        assert words in record.diagnostic and record.via == "test"
        assert records.for_reader(session, reader.id) == [record]


def test_the_same_report_counts_once(t0: dt.datetime) -> None:
    make_subscriber("ben@example.net", "politics", now=t0)
    raw = fixture("postfix-soft-delayed.eml")
    first = ingest_message(raw, source="imap", now=t0 + 2 * DAY)
    again = ingest_message(raw, source="cli", now=t0 + 2 * DAY)
    assert first.effects == ["ben@example.net: soft bounce 1 of 3 in 14 days"]
    assert again.effects == ["ben@example.net: soft bounce already recorded, counted once"]
    assert count(BounceRecord) == 1


def test_a_report_about_no_reader_here_changes_nothing(t0: dt.datetime) -> None:
    """Anyone can mail the bounce address: without a token or a reader's address, the
    report is recorded and nothing else happens."""
    result = ingest_message(fixture("postfix-no-verp.eml"), source="test", now=t0)
    assert result.kind == "bounce"
    assert result.effects == ["hard bounce for gus@example.org: not a reader here, nothing changed"]
    assert reason_of("gus@example.org") is None
    with session_scope() as session:
        [record] = records.recent(session)
        assert record.outcome == "nothing: names no reader here"


@pytest.mark.parametrize("name", ["auto-reply.eml", "unrelated.eml", "postfix-delivered.eml"])
def test_auto_replies_and_unrelated_mail_change_nothing(name: str, t0: dt.datetime) -> None:
    for address in ("ivo@example.com", "lia@example.net", "ana@example.net"):
        make_subscriber(address, "politics", now=t0)
    result = ingest_message(fixture(name), source="test", now=t0)
    assert not result.recognised and result.reason and not result.effects
    assert count(BounceRecord) == 0
    with session_scope() as session:
        assert suppression.list_all(session) == []


def test_a_hard_bounce_outranks_an_unsubscribe(t0: dt.datetime) -> None:
    make_subscriber("ana@example.net", "politics", now=t0)
    with session_scope() as session:
        suppression.suppress(session, "ana@example.net", SuppressionReason.UNSUBSCRIBED)
    ingest_message(fixture("postfix-hard.eml"), source="test", now=t0 + DAY)
    assert reason_of("ana@example.net") is SuppressionReason.HARD_BOUNCE
    with session_scope() as session:
        actions = [(e.action, e.reason) for e in suppression.history(session, "ana@example.net")]
    assert actions[0] == ("changed", "hard_bounce")


def soft(email: str, when: dt.datetime, n: int) -> BounceEvent:
    return BounceEvent(
        "soft", email, None, f"452 4.2.2 mailbox full ({n})", "json", when, key=f"evt-{n}"
    )


def test_soft_bounces_suppress_at_the_limit_within_the_window(t0: dt.datetime) -> None:
    make_subscriber("fay@example.com", "politics", now=t0)
    effects = []
    for n, day in enumerate((1, 5, 9)):
        when = t0 + day * DAY
        result = ingest_events([soft("fay@example.com", when, n)], source="webhook", now=when)
        effects += result.effects
        # Below the limit: counted, nothing else.
        assert reason_of("fay@example.com") is (None if n < 2 else SuppressionReason.HARD_BOUNCE)
    assert effects == [
        "fay@example.com: soft bounce 1 of 3 in 14 days",
        "fay@example.com: soft bounce 2 of 3 in 14 days",
        "fay@example.com suppressed: soft bounce 3 of 3 in 14 days",
    ]
    with session_scope() as session:
        row = suppression.find(session, "fay@example.com")
        assert row is not None and row.detail is not None
        assert row.detail.startswith("soft bounce 3 of 3 in 14 days; last: 452 4.2.2")


def test_soft_bounces_outside_the_window_do_not_count(t0: dt.datetime) -> None:
    make_subscriber("fay@example.com", "politics", now=t0)
    for n, day in enumerate((0, 10, 20, 29)):
        when = t0 + day * DAY
        result = ingest_events([soft("fay@example.com", when, n)], source="webhook", now=when)
    # Days 10 and 20 are within 14 days of day 20; day 29 sees only 20 and 29.
    assert result.effects == ["fay@example.com: soft bounce 2 of 3 in 14 days"]
    assert reason_of("fay@example.com") is None


def test_provider_events_that_say_no_more_are_keyed_by_their_fields(t0: dt.datetime) -> None:
    make_subscriber("erin@example.com", "politics", now=t0)
    event = BounceEvent("hard", "Erin@Example.com", None, "550 5.1.1 unknown", "json", t0)
    assert ingest_events([event], source="webhook", now=t0).effects == [
        "erin@example.com suppressed: hard bounce"
    ]
    assert ingest_events([event], source="webhook", now=t0).effects == [
        "Erin@Example.com: hard bounce already recorded, counted once"
    ]
    assert ingest_events([], source="webhook").kind == "unrelated"
