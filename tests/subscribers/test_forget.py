"""Deleting a reader with their personal data (`forget_subscriber`): the ledger keeps
anonymous rows so every digest's counts stay true, no table keeps the address or the
name, and nothing planned for the reader is ever sent, by the real sender to a real
SMTP server, on both backends."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import pytest
from sqlalchemy import delete, select, update

from newsletter.db import Base, session_scope
from newsletter.delivery import planning, sending
from newsletter.models import Delivery, DeliveryPost, DeliveryStatus
from subscribers import suppression
from subscribers.models import (
    SignupAttempt,
    Subscriber,
    SuppressionEvent,
    SuppressionReason,
    subscriber_tags,
)
from subscribers.services import forget_subscriber, remove_subscriber
from tests.cli_runner import count, run
from tests.conftest import ScriptedHandler
from tests.factories import make_post, make_subscriber

HOUR = dt.timedelta(hours=1)
ANA, NAME = "ana@example.org", "Ana Quintela"


@pytest.fixture(autouse=True)
def no_old_history(app_env: str) -> None:
    """suppression_events is not among the tables emptied between tests (yet)."""
    with session_scope() as session:
        session.execute(delete(SuppressionEvent))


def rows_mentioning(*needles: str) -> list[str]:
    """Every row of every table that holds one of these strings, in any column and any
    case: where personal data would be left behind."""
    wanted = [n.lower() for n in needles]
    found: list[str] = []
    with session_scope() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)):
                text = json.dumps([str(v) for v in row], ensure_ascii=False).lower()
                if any(n in text for n in wanted):
                    found.append(f"{table.name}: {tuple(row)}")
    return found


def statuses() -> Counter[str]:
    with session_scope() as session:
        return Counter(s.value for s in session.scalars(select(Delivery.status)))


def forget(email: str) -> None:
    with session_scope() as session:
        reader = session.scalars(select(Subscriber).where(Subscriber.email == email)).one()
        forget_subscriber(session, reader)


def test_forget_keeps_the_counts_and_leaves_no_personal_data(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    # One digest sent, one refused for good (which suppresses the address, lifted
    # later by an admin), one waiting for a retry after a temporary refusal.
    smtp.replies[ANA] = [
        "250 OK",
        f"550 5.1.1 <{ANA}>: no such user",
        f"451 4.2.1 <{ANA}>: mailbox busy, try later",
    ]
    ana = make_subscriber(ANA, "climate", now=t0, name=NAME)
    make_subscriber("bob@example.org", "climate", now=t0, name="Bob Stone")
    make_post("climate", now=t0 + HOUR)
    make_post("climate", now=t0 + 2 * HOUR)
    with session_scope() as session:
        suppression.lift(session, ANA, by="ada@example.org")
        session.add(SignupAttempt(ip="203.0.113.9", email=ANA))
    make_post("climate", now=t0 + 3 * HOUR)
    assert statuses() == {"sent": 4, "failed": 1, "queued": 1}
    with session_scope() as session:
        assert session.scalar(
            select(Delivery.last_error).where(Delivery.status == DeliveryStatus.QUEUED)
        )
    assert rows_mentioning(ANA, NAME)  # the address is in several tables until now

    forget(ANA)

    assert count(Subscriber) == 1 and count(Delivery) == 6
    # Sent and failed stay counted; what was waiting is skipped, never sent.
    assert statuses() == {"sent": 4, "failed": 1, "skipped": 1}
    with session_scope() as session:
        orphans = list(session.scalars(select(Delivery).where(Delivery.subscriber_id.is_(None))))
        assert len(orphans) == 3
        assert all(d.last_error is None for d in orphans)
        assert [d.skip_reason for d in orphans if d.status is DeliveryStatus.SKIPPED] == [
            "subscriber_deleted"
        ]
        assert session.scalar(select(DeliveryPost).where(DeliveryPost.subscriber_id == ana)) is None
        follows = session.execute(
            select(subscriber_tags).where(subscriber_tags.c.subscriber_id == ana)
        ).all()
        assert follows == []
    assert rows_mentioning(ANA, NAME) == []
    # Bob's ledger is untouched, SMTP replies and all.
    assert rows_mentioning("bob@example.org")

    # The retry that was due is never made.
    sent_before = len(smtp.messages)
    report = sending.send_batch([d.id for d in orphans], t0 + 30 * 24 * HOUR)
    assert report.sent == 0 and len(smtp.messages) == sent_before


def test_a_queued_or_claimed_delivery_of_a_deleted_reader_is_never_sent(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    for email in (ANA, "bob@example.org", "cy@example.org"):
        make_subscriber(email, "climate", "daily", now=t0)
    make_post("climate", now=t0 + HOUR)
    slot = t0 + 24 * HOUR
    planned = planning.plan_due(slot)
    assert len(planned.deliveries) == 3 and statuses() == {"queued": 3}
    with session_scope() as session:
        ids = {
            email: delivery_id
            for email, delivery_id in session.execute(
                select(Subscriber.email, Delivery.id).join(
                    Delivery, Delivery.subscriber_id == Subscriber.id
                )
            )
        }
        # Cy's row was claimed by a sender that died: its lease ran out long ago.
        session.execute(
            update(Delivery)
            .where(Delivery.id == ids["cy@example.org"])
            .values(status=DeliveryStatus.SENDING, claimed_at=t0)
        )
    forget(ANA)
    forget("cy@example.org")
    assert statuses() == {"queued": 1, "skipped": 2}

    report = sending.send_batch(sorted(ids.values()), slot + HOUR)
    assert report.sent == 1
    assert [m.recipients for m in smtp.messages] == [["bob@example.org"]]
    assert statuses() == {"sent": 1, "skipped": 2}


def test_a_suppressed_address_stays_suppressed_with_its_history(t0: dt.datetime) -> None:
    make_subscriber(ANA, "climate", now=t0, name=NAME)
    with session_scope() as session:
        suppression.suppress(session, ANA, SuppressionReason.COMPLAINT, "a complaint", actor="fbl")
    forget(ANA)
    # Only what keeps them from being mailed again is left: the entry and its history.
    assert {row.split(":")[0] for row in rows_mentioning(ANA, NAME)} == {
        "suppressions",
        "suppression_events",
    }
    code, _, err = run("subscribers", "add", ANA, "--tags", "climate")
    assert code != 0 and "suppression list" in err


def test_the_cli_remove_forgets_the_reader_and_keeps_the_ledger(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    make_subscriber(ANA, "climate", now=t0, name=NAME)
    make_post("climate", now=t0 + HOUR)
    code, _, err = run("subscribers", "remove", ANA, "--yes")
    assert code == 0, err
    assert count(Subscriber) == 0 and count(Delivery) == 1
    assert rows_mentioning(ANA, NAME) == []
    with session_scope() as session, pytest.raises(LookupError):
        remove_subscriber(session, ANA)
