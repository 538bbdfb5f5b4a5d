"""`newsletter deliveries status|retry` against a real SMTP server, on both backends.

The counts are checked against the ledger itself; retries against what the server
received: only failed rows are sent again, never a sent one.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import select, update

from newsletter import dispatch
from newsletter.db import session_scope, utcnow
from newsletter.delivery import pipeline, planning, progress, sending
from newsletter.models import Cadence, Delivery, DeliveryStatus, Digest
from subscribers.models import Subscriber, SubscriberStatus
from tests.cli_runner import run
from tests.conftest import ScriptedHandler, apply_env
from tests.factories import make_post, make_subscriber

pytestmark = pytest.mark.usefixtures("app_env")

QUEUED, SENDING, SENT = DeliveryStatus.QUEUED, DeliveryStatus.SENDING, DeliveryStatus.SENT
FAILED, SKIPPED = DeliveryStatus.FAILED, DeliveryStatus.SKIPPED
BOUNCE = "550 5.1.1 no such user"
LATER = "451 4.3.0 try again later"
SUBPROCESS_TIMEOUT = 120  # a guard against a hang, not a measure of speed


@pytest.fixture(autouse=True)
def slow_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deferred row stays deferred for the whole test, however slow the machine."""
    apply_env(monkeypatch, NEWSLETTER_RETRY_BACKOFF="3600")


def planned(monkeypatch: pytest.MonkeyPatch, tags: str, *emails: str) -> dict[str, int]:
    """Immediate readers of `tags` and a post for them, planned but not sent: their
    delivery ids by address."""
    for email in emails:
        make_subscriber(email, tags)
    with monkeypatch.context() as quiet:
        # The post's task would plan and send at once in process; plan it here instead.
        quiet.setattr(dispatch, "send_task", lambda *args: None)
        post_id = make_post(tags)
    planning.plan_for_post(post_id)
    with session_scope() as session:
        rows = session.execute(
            select(Subscriber.email, Delivery.id)
            .join(Delivery.subscriber)
            .where(Subscriber.email.in_(emails))
        )
        return {email: delivery_id for email, delivery_id in rows}


def send(*ids: int) -> sending.SendReport:
    return sending.send_batch(sorted(ids))


def ledger() -> Counter[str]:
    """The ledger's own count by state, deferred apart from queued."""
    now = utcnow()
    with session_scope() as session:
        rows = session.execute(select(Delivery.status, Delivery.next_attempt_at)).all()
    return Counter(
        "deferred" if status is QUEUED and after is not None and after > now else status.value
        for status, after in rows
    )


def rows_of(email: str) -> list[tuple[DeliveryStatus, int, str | None]]:
    with session_scope() as session:
        return [
            (d.status, d.attempts, d.skip_reason)
            for d in session.scalars(
                select(Delivery).join(Delivery.subscriber).where(Subscriber.email == email)
            )
        ]


def snapshot() -> list[tuple[Any, ...]]:
    with session_scope() as session:
        return [
            tuple(row)
            for row in session.execute(
                select(
                    Delivery.id,
                    Delivery.status,
                    Delivery.attempts,
                    Delivery.last_error,
                    Delivery.next_attempt_at,
                ).order_by(Delivery.id)
            )
        ]


def shown(out: str) -> dict[str, int]:
    """The state table of `deliveries status`."""
    return {state: int(n) for state, n in re.findall(r"│ (\w+)\s+│ (\d+)\s+│", out)}


def received(handler: ScriptedHandler) -> Counter[str]:
    return Counter(r for message in handler.messages for r in message.recipients)


# -- status ---------------------------------------------------------------------------


def test_status_counts_every_state_as_the_ledger_has_it(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers = ["sent1@example.org", "sent2@example.org", "bounce@example.org"]
    readers += ["later@example.org", "gone@example.org", "waiting@example.org"]
    ids = planned(monkeypatch, "politics", *readers, "claimed@example.org")
    smtp.replies = {"bounce@example.org": [BOUNCE], "later@example.org": [LATER]}
    with session_scope() as session:
        session.execute(
            update(Subscriber)
            .where(Subscriber.email == "gone@example.org")
            .values(status=SubscriberStatus.UNSUBSCRIBED)
        )
    send(*(ids[r] for r in readers[:5]))
    with session_scope() as session:
        assert sending.claim(session, [ids["claimed@example.org"]], utcnow())

    code, out, err = run("deliveries", "status")

    assert code == 0, err
    expected = {"queued": 1, "deferred": 1, "sending": 1, "sent": 2, "failed": 1, "skipped": 1}
    assert shown(out) == {**expected, "total": 7}
    assert ledger() == Counter(expected)
    assert "4/7 done (57%)" in out
    assert received(smtp) == Counter({"sent1@example.org": 1, "sent2@example.org": 1})


def test_status_of_one_digest_and_of_nothing(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("deliveries", "status") == (0, "no deliveries yet\n", "")
    ids = planned(monkeypatch, "politics", "ana@example.org", "bea@example.org")
    planned(monkeypatch, "health", "cid@example.org")
    send(ids["ana@example.org"])
    with session_scope() as session:
        digest = session.scalar(select(Delivery.digest_id).where(Delivery.id == min(ids.values())))

    code, out, err = run("deliveries", "status", "--digest", str(digest))

    assert code == 0, err
    assert f"deliveries of digest #{digest}" in out
    assert shown(out) == {
        "queued": 1, "deferred": 0, "sending": 0, "sent": 1, "failed": 0, "skipped": 0, "total": 2
    }  # fmt: skip


def test_watch_of_a_finished_send_ends_at_once(smtp: ScriptedHandler) -> None:
    make_subscriber("ana@example.org", "politics")
    make_post("politics")  # planned and sent in process
    code, out, err = run("deliveries", "status", "--watch", "--interval", "0.1")
    assert code == 0, err
    assert shown(out)["sent"] == 1 and "1/1 done (100%)" in out


@contextmanager
def watching(*args: str) -> Iterator[subprocess.Popen[str]]:
    """`newsletter deliveries status --watch` in a process of its own, once it has begun."""
    command = [sys.executable, "-m", "newsletter.cli", "deliveries", "status", "--watch", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "watching the send" in line, line + process.stderr.read()
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_watch_follows_a_send_until_it_is_done(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = planned(monkeypatch, "politics", "ana@example.org", "bea@example.org")
    with watching("--interval", "0.1") as process:
        send(*ids.values())
        out, err = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode == 0, err
    assert shown(out)["sent"] == 2 and "2/2 done (100%)" in out


def test_ctrl_c_stops_the_watch_cleanly(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    planned(monkeypatch, "politics", "ana@example.org")
    with watching("--interval", "0.1") as process:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert shown(out)["queued"] == 1


# -- retry ----------------------------------------------------------------------------


def test_retry_resends_only_what_failed(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(monkeypatch, NEWSLETTER_MAX_SEND_ATTEMPTS="1")
    smtp.replies = {
        "bounced@example.org": [BOUNCE, "250 OK"],
        "still@example.org": [BOUNCE, "250 OK"],
        "busy@example.org": [LATER, "250 OK"],
    }
    for email in ["ok@example.org", "bounced@example.org", "still@example.org", "busy@example.org"]:
        make_subscriber(email, "politics")
    make_post("politics")  # sent in process: one accepted, three failed
    assert [s for s, _, _ in rows_of("busy@example.org")] == [FAILED]  # gave up: 1 attempt
    # An admin lifts one bounce; the other address stays suppressed.
    assert run("suppressions", "lift", "bounced@example.org")[0] == 0

    code, out, err = run("deliveries", "retry", "--failed", "--yes")

    assert code == 0, err
    assert {"requeued": 3, "sent": 2, "failed": 0, "not sent: suppressed": 1}.items() <= {
        label.strip(): int(n) for label, n in re.findall(r"│ ([\w ,:']+?)\s+│ (\d+)", out)
    }.items()
    assert received(smtp) == Counter(
        {"ok@example.org": 1, "bounced@example.org": 1, "busy@example.org": 1}
    )
    assert rows_of("ok@example.org") == [(SENT, 1, None)]
    assert rows_of("bounced@example.org") == [(SENT, 1, None)]
    assert rows_of("busy@example.org") == [(SENT, 1, None)]
    assert rows_of("still@example.org") == [(SKIPPED, 0, "suppressed")]
    # Nothing failed is left, so a second retry has nothing to do.
    assert run("deliveries", "retry", "--failed", "--yes")[:2] == (
        0,
        "no failed deliveries to retry\n",
    )


def test_retry_of_one_digest_leaves_the_others_and_planning_failures(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(monkeypatch, NEWSLETTER_MAX_SEND_ATTEMPTS="1")
    smtp.replies = {"p@example.org": [LATER, "250 OK"], "h@example.org": [LATER, "250 OK"]}
    politics = planned(monkeypatch, "politics", "p@example.org", "unrendered@example.org")
    health = planned(monkeypatch, "health", "h@example.org")
    send(politics["p@example.org"], health["h@example.org"])
    with session_scope() as session:
        # What planning writes when a digest cannot be rendered: failed, never tried.
        session.execute(
            update(Delivery)
            .where(Delivery.id == politics["unrendered@example.org"])
            .values(status=FAILED, last_error="digest could not be rendered: boom")
        )
        digest = session.scalar(
            select(Delivery.digest_id).where(Delivery.id == politics["p@example.org"])
        )

    code, _, err = run("deliveries", "retry", "--failed", "--digest", str(digest), "--yes")

    assert code == 0, err
    assert received(smtp) == Counter({"p@example.org": 1})
    assert rows_of("p@example.org") == [(SENT, 1, None)]
    assert rows_of("h@example.org") == [(FAILED, 1, None)]
    assert rows_of("unrendered@example.org") == [(FAILED, 0, None)]


def test_retry_with_a_broker_hands_batches_to_the_workers(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = planned(monkeypatch, "politics", "a@example.org", "b@example.org", "c@example.org")
    smtp.replies = {"a@example.org": [BOUNCE], "b@example.org": [BOUNCE]}
    send(*ids.values())
    tasks: list[tuple[str, tuple[Any, ...]]] = []
    monkeypatch.setattr(pipeline, "send_task", lambda task, *args: tasks.append((task, args)))
    redis = os.environ.get("NEWSLETTER_TEST_REDIS", "redis://127.0.0.1:6379/15")
    apply_env(monkeypatch, NEWSLETTER_BROKER_URL=redis, NEWSLETTER_SEND_BATCH_SIZE="1")

    code, out, err = run("deliveries", "retry", "--failed", "--yes")

    assert code == 0, err
    assert "2 deliveries requeued; 2 send batches handed to the workers" in out
    assert tasks == [("send_batch", ([ids["a@example.org"]],)), ("send_batch", ([ids["b@example.org"]],))]  # fmt: skip
    assert ledger() == Counter({"queued": 2, "sent": 1})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["retry", "--failed", "--digest", "999", "--yes"], "no digest #999"),
        (["retry", "--digest", "1", "--yes"], "--failed"),
        (["retry", "--failed"], "pass --yes"),
        (["status", "--digest", "999"], "no digest #999"),
        (["status", "--watch", "--digest", "999"], "no digest #999"),
        (["retry", "--failed", "--digest", "x", "--yes"], "Invalid value for '--digest'"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    ids = planned(monkeypatch, "politics", "a@example.org", "b@example.org")
    smtp.replies = {"a@example.org": [BOUNCE, "250 OK"]}
    send(*ids.values())
    before = snapshot()

    code, _, err = run("deliveries", *args)

    assert code == 2
    assert message in err, err
    assert snapshot() == before
    assert received(smtp) == Counter({"b@example.org": 1})


# -- what "the current send" is -------------------------------------------------------


T = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)


def ledger_rows(*rows: tuple[DeliveryStatus, dt.datetime, dict[str, Any]]) -> None:
    """Deliveries written straight into the ledger, one digest for all."""
    with session_scope() as session:
        digest = Digest(
            content_key=f"k{T.timestamp()}",
            cadence=Cadence.IMMEDIATE,
            post_ids=[],
            subject="s",
            html="h",
            text="t",
        )
        session.add(digest)
        session.flush()
        for n, (status, created, extra) in enumerate(rows):
            session.add(
                Delivery(
                    digest_id=digest.id,
                    status=status,
                    message_id=f"<{n}.{T.timestamp()}@example.org>",
                    created_at=created,
                    **extra,
                )
            )


def status_at(now: dt.datetime) -> progress.SendStatus:
    with session_scope() as session:
        return progress.send_status(session, now=now)


def test_the_current_send_is_each_run_with_rows_in_flight_whole() -> None:
    earlier_run = T - dt.timedelta(hours=2)
    ledger_rows(
        (SENT, earlier_run, {}),
        (FAILED, earlier_run, {}),
        # One run stamped chunk by chunk, seconds apart; its first chunk is all sent.
        (SENT, T - 50 * SECOND, {"sent_at": T - 10 * SECOND}),
        (SENT, T - 20 * SECOND, {"sent_at": T - 2 * SECOND}),
        (SENT, T - 20 * SECOND, {"sent_at": T - SECOND}),
        (QUEUED, T - 20 * SECOND, {}),
        (QUEUED, T, {"next_attempt_at": T + 60 * SECOND}),
        (SENDING, T + 30 * SECOND, {}),
    )
    current = status_at(T + 31 * SECOND)
    assert current.runs == (progress.Run(T - 50 * SECOND, T + 30 * SECOND),)
    assert (current.queued, current.deferred, current.sending, current.sent) == (1, 1, 1, 3)
    assert (current.failed, current.skipped, current.done, current.total) == (0, 0, 3, 6)
    # Two of the sent rows went out in the last RATE_WINDOW before T + 1 s.
    assert status_at(T + SECOND).rate == 2 / progress.RATE_WINDOW.total_seconds()


def test_with_nothing_in_flight_the_current_send_is_the_latest_run() -> None:
    ledger_rows(
        (SENT, T - dt.timedelta(hours=2), {}),
        (SENT, T - 50 * SECOND, {}),
        (SKIPPED, T, {}),
        (FAILED, T + 30 * SECOND, {}),
    )
    latest = status_at(T + dt.timedelta(hours=1))
    assert latest.runs == (progress.Run(T - 50 * SECOND, T + 30 * SECOND),)
    assert (latest.sent, latest.skipped, latest.failed, latest.in_flight) == (1, 1, 1, 0)


def test_a_requeued_old_row_brings_its_own_run_and_no_run_in_between() -> None:
    yesterday, an_hour_ago = T - dt.timedelta(days=1), T - dt.timedelta(hours=1)
    ledger_rows(
        (QUEUED, yesterday, {}),  # a retried failure
        (SENT, yesterday, {}),
        (SENT, an_hour_ago, {}),  # finished: not part of what is being sent
        (SKIPPED, an_hour_ago, {}),
        (SENT, T, {}),
        (SENDING, T, {}),
    )
    current = status_at(T)
    assert current.runs == (progress.Run(yesterday, yesterday), progress.Run(T, T))
    assert (current.queued, current.sending, current.sent, current.skipped) == (1, 1, 2, 0)


def test_past_max_runs_in_flight_only_the_rows_in_flight_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress, "MAX_RUNS", 2)
    hour = dt.timedelta(hours=1)
    runs = [T + n * hour for n in range(4)]
    ledger_rows(*((QUEUED, stamp, {}) for stamp in runs), *((SENT, stamp, {}) for stamp in runs))
    current = status_at(T)
    assert current.runs == (progress.Run(runs[0], runs[0]), progress.Run(runs[1], None))
    # Every row still to do, and the done ones of the runs counted whole.
    assert (current.queued, current.sent) == (4, 1)
