"""The suppression list's history: every add, change of reason and lift is recorded
with who or what did it, newest first, and outlives the lift; on both backends."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import delete

from newsletter.db import session_scope
from newsletter.errors import NotFound
from subscribers import suppression
from subscribers.models import Subscriber, SuppressionEvent, SuppressionReason
from subscribers.services import unsubscribe
from tests.cli_runner import run
from tests.conftest import ScriptedHandler
from tests.factories import make_post, make_subscriber

ANA = "ana@example.org"


@pytest.fixture(autouse=True)
def no_old_history(app_env: str) -> None:
    """suppression_events is not among the tables emptied between tests (yet)."""
    with session_scope() as session:
        session.execute(delete(SuppressionEvent))


def history(email: str = ANA) -> list[tuple[str, str, str | None, str]]:
    with session_scope() as session:
        return [
            (e.action, e.reason, e.detail, e.actor) for e in suppression.history(session, email)
        ]


def test_add_change_and_lift_are_recorded_newest_first() -> None:
    with session_scope() as session:
        suppression.suppress(session, ANA, SuppressionReason.UNSUBSCRIBED)
    with session_scope() as session:
        # Kept as it is: nothing new to record.
        suppression.suppress(session, ANA, SuppressionReason.UNSUBSCRIBED, actor="import")
        suppression.suppress(session, "bob@example.org", SuppressionReason.MANUAL, "by letter")
    with session_scope() as session:
        # A complaint outranks an unsubscribe: the reason changes, and that is recorded.
        suppression.suppress(
            session, ANA, SuppressionReason.COMPLAINT, "feedback loop report", actor="fbl"
        )
        # An unsubscribe does not outrank a complaint: nothing changes, nothing recorded.
        suppression.suppress(session, ANA, SuppressionReason.UNSUBSCRIBED, actor="the subscriber")
    with session_scope() as session:
        lifted = suppression.lift(session, ANA, by="ada@example.org")
        assert lifted.reason is SuppressionReason.COMPLAINT
        assert suppression.find(session, ANA) is None

    assert history() == [
        ("lifted", "complaint", None, "ada@example.org"),
        ("changed", "complaint", "feedback loop report", "fbl"),
        ("added", "unsubscribed", None, "system"),
    ]
    assert history("bob@example.org") == [("added", "manual", "by letter", "system")]
    assert history("nobody@example.org") == []


def test_lifting_what_is_not_suppressed_records_nothing() -> None:
    with session_scope() as session, pytest.raises(NotFound):
        suppression.lift(session, ANA)
    assert history() == []


def test_who_did_it_for_each_path(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    """The reader's own unsubscribe, a hard bounce met by the sender, the CLI."""
    smtp.replies["bob@example.org"] = ["550 5.1.1 <bob@example.org>: no such user"]
    reader = make_subscriber(ANA, "climate", now=t0)
    make_subscriber("bob@example.org", "climate", now=t0)
    with session_scope() as session:
        subscriber = session.get(Subscriber, reader)
        assert subscriber is not None
        unsubscribe(session, subscriber)
    make_post("climate", now=t0 + dt.timedelta(hours=1))
    code, _, err = run("suppressions", "lift", ANA)
    assert code == 0, err
    code, _, err = run("suppressions", "add", "CY@example.org", "--reason", "complaint")
    assert code == 0, err

    assert history() == [
        ("lifted", "unsubscribed", None, "an admin (CLI)"),
        ("added", "unsubscribed", None, "the subscriber"),
    ]
    ((action, reason, detail, actor),) = history("bob@example.org")
    assert (action, reason, actor) == ("added", "hard_bounce", "smtp reply")
    assert detail is not None and "550 5.1.1" in detail
    assert history("cy@example.org") == [
        ("added", "complaint", "added by an admin", "an admin (CLI)")
    ]
