"""The send path under faults, against real aiosmtpd servers with scripted behaviour.

One address that cannot be sent, a server that answers 421, a final 250 that comes
late (or never), and a database that cannot take an outcome: each reader is mailed
once or has a recorded failure with its reason, and the rest of the batch goes on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from newsletter.db import session_scope
from newsletter.delivery import planning, sending
from newsletter.delivery.mime import build_message
from newsletter.delivery.pipeline import run_due
from newsletter.models import Delivery, DeliveryStatus
from newsletter.outbox import OutboxHandler, Received, free_port
from subscribers.models import Subscriber, Suppression
from tests.conftest import ScriptedHandler, apply_env
from tests.factories import make_post, make_subscriber

HOUR = dt.timedelta(hours=1)
BIDI = "\u202e\u2066\u200f"


class FaultyHandler(OutboxHandler):
    """A server that answers the end of DATA with a scripted fault.

    `refuse_every=n`: every n-th message gets "421 ... closing connection" and is not
    kept. `late[address]`: seconds the final 250 for that recipient is held back
    (the message is kept first, as a real server that accepted it would).
    """

    def __init__(self, refuse_every: int = 0, late: dict[str, float] | None = None) -> None:
        super().__init__()
        self.refuse_every = refuse_every
        self.late = late or {}
        self.count = 0
        self.tries: Counter[str] = Counter()
        self.mail_options: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        self.tries.update(envelope.rcpt_tos)
        self.mail_options.append(list(envelope.mail_options))
        if self.refuse_every and self.count % self.refuse_every == 0:
            return "421 4.7.0 Too many messages, try again later; closing connection"
        reply = await super().handle_DATA(server, session, envelope)
        delay = max((self.late.get(r, 0.0) for r in envelope.rcpt_tos), default=0.0)
        if delay:
            await asyncio.sleep(delay)
        return reply


@contextmanager
def server(
    monkeypatch: pytest.MonkeyPatch, handler: OutboxHandler, smtputf8: bool = False, query: str = ""
) -> Iterator[OutboxHandler]:
    """A real aiosmtpd server on a free port, wired into NEWSLETTER_SMTP_URL."""
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=smtputf8)
    controller.start()
    try:
        apply_env(monkeypatch, NEWSLETTER_SMTP_URL=f"smtp://127.0.0.1:{port}{query}")
        yield handler
    finally:
        controller.stop()


def deliveries() -> dict[str, Delivery]:
    """Every delivery, by its reader's address (one post each in these tests)."""
    with session_scope() as session:
        rows = session.execute(
            select(Subscriber.email, Delivery).join(Delivery.subscriber).order_by(Delivery.id)
        )
        return {email: delivery for email, delivery in rows}


def readers(*addresses: str, now: dt.datetime) -> None:
    """Immediate readers stored with exactly these addresses, whatever sign-up would make
    of them: the send side must cope with anything that is in the table."""
    for n, address in enumerate(addresses):
        sid = make_subscriber(f"reader{n}@example.org", "politics", now=now)
        with session_scope() as session:
            session.execute(update(Subscriber).where(Subscriber.id == sid).values(email=address))


def received_by(handler: OutboxHandler) -> Counter[str]:
    return Counter(r for message in handler.messages for r in message.recipients)


def retry_when_due() -> None:
    """A pass at the moment the latest deferred delivery is due again."""
    with session_scope() as session:
        due = session.scalar(
            select(func.max(Delivery.next_attempt_at)).where(
                Delivery.status == DeliveryStatus.QUEUED
            )
        )
    assert due is not None
    run_due(due)


def not_sending() -> None:
    statuses = {d.status for d in deliveries().values()}
    assert DeliveryStatus.SENDING not in statuses, statuses


# --- addresses --------------------------------------------------------------------


@pytest.mark.usefixtures("app_env")
def test_non_ascii_local_part_fails_alone_without_smtputf8(
    monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str], t0: dt.datetime
) -> None:
    with server(monkeypatch, FaultyHandler(), smtputf8=False) as handler:
        readers("first@example.org", "tëst@example.org", "last@example.org", now=t0)
        make_post("politics", now=t0 + HOUR)

        assert received_by(handler) == {"first@example.org": 1, "last@example.org": 1}
        rows = deliveries()
        failed = rows["tëst@example.org"]
        assert failed.status is DeliveryStatus.FAILED and failed.attempts == 1
        assert "SMTPUTF8" in (failed.last_error or "")
        not_sending()
        # A failure on our side, not the reader's: no suppression; the next run is clean.
        with session_scope() as session:
            assert session.scalar(select(func.count()).select_from(Suppression)) == 0
        summary = run_due(t0 + 2 * HOUR)
        assert summary.send.sent == 0 and len(handler.messages) == 2


@pytest.mark.usefixtures("app_env")
def test_non_ascii_local_part_goes_with_smtputf8(
    monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str], t0: dt.datetime
) -> None:
    with server(monkeypatch, FaultyHandler(), smtputf8=True) as handler:
        readers("first@example.org", "tëst@bücher.example.org", "last@example.org", now=t0)
        make_post("politics", now=t0 + HOUR)

    assert received_by(handler) == {
        "first@example.org": 1,
        "tëst@xn--bcher-kva.example.org": 1,
        "last@example.org": 1,
    }
    assert {d.status for d in deliveries().values()} == {DeliveryStatus.SENT}
    utf8 = next(m for m in handler.messages if not m.recipients[0].isascii())
    assert "tëst@xn--bcher-kva.example.org".encode() in utf8.data.split(b"\r\n\r\n")[0]
    assert str(utf8.parsed()["To"]) == "tëst@xn--bcher-kva.example.org"
    assert isinstance(handler, FaultyHandler)
    # SMTPUTF8 is asked for on the one message that needs it, whatever the order.
    needs = [not m.recipients[0].isascii() for m in handler.messages]
    assert [("SMTPUTF8" in o) for o in handler.mail_options] == needs
    assert sorted(needs) == [False, False, True]


@pytest.mark.usefixtures("app_env")
def test_idn_domain_goes_as_a_label(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in "EXAMPLE")
    readers("ana@bücher.example.org", f"ben@{full_width}.org", now=t0)
    make_post("politics", now=t0 + HOUR)
    assert received_by(smtp) == {"ana@xn--bcher-kva.example.org": 1, "ben@example.org": 1}
    to_headers = sorted(str(m.parsed()["To"]) for m in smtp.messages)
    assert to_headers == ["ana@xn--bcher-kva.example.org", "ben@example.org"]


@pytest.mark.usefixtures("app_env")
def test_any_unsendable_address_fails_alone(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    bad = ["no-at-sign", "ana@ex\u2620ample.org", "ben@example.org\r\nBcc: x@evil.example"]
    readers("first@example.org", *bad, "last@example.org", now=t0)
    make_post("politics", now=t0 + HOUR)
    assert received_by(smtp) == {"first@example.org": 1, "last@example.org": 1}
    rows = deliveries()
    for address in bad:
        assert rows[address].status is DeliveryStatus.FAILED, address
        assert rows[address].last_error, address
    not_sending()


def test_bidi_controls_are_stripped_from_subject_and_names(settings_env: dict[str, str]) -> None:
    message = build_message(
        from_name=f"News{BIDI}",
        from_address="digest@news.example.org",
        to_name=f"Ana {BIDI}gnp.exe",
        to_address="ana@example.org",
        subject=f"Budget {BIDI}passes",
        text="text",
        html="<p>html</p>",
        message_id="<1@news.example.org>",
    )
    parsed = Received("", [], message.data).parsed()
    assert str(parsed["Subject"]) == "Budget passes"
    assert parsed["To"].addresses[0].display_name == "Ana gnp.exe"
    assert str(parsed["From"]) == "News <digest@news.example.org>"
    assert not any(c in message.data.decode("utf-8") for c in BIDI)


# --- 421 and reconnects -------------------------------------------------------------


@pytest.mark.usefixtures("app_env")
def test_421_every_third_message_only_charges_what_was_tried(
    monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str], t0: dt.datetime
) -> None:
    apply_env(monkeypatch, NEWSLETTER_SMTP_RECONNECT_PAUSE="0")
    emails = [f"r{n}@example.org" for n in range(10)]
    with server(monkeypatch, FaultyHandler(refuse_every=3)) as handler:
        assert isinstance(handler, FaultyHandler)
        for address in emails:
            make_subscriber(address, "politics", now=t0)
        make_post("politics", now=t0 + HOUR)
        # The whole batch was tried in one go: three 421s, three reconnects.
        assert handler.count == 10 and len(handler.messages) == 7
        first = deliveries()
        assert sorted(d.attempts for d in first.values()) == [1] * 10
        deferred = [e for e, d in first.items() if d.status is DeliveryStatus.QUEUED]
        assert len(deferred) == 3

        while any(d.status is DeliveryStatus.QUEUED for d in deliveries().values()):
            retry_when_due()

    assert received_by(handler) == dict.fromkeys(emails, 1)
    # Every attempt charged is one the server saw.
    for address, delivery in deliveries().items():
        assert delivery.status is DeliveryStatus.SENT
        assert delivery.attempts == handler.tries[address], address


@pytest.mark.usefixtures("app_env")
@pytest.mark.parametrize("connections", [1, 3])
def test_a_server_that_keeps_refusing_leaves_the_rest_untried_and_uncharged(
    monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str], t0: dt.datetime, connections: int
) -> None:
    apply_env(
        monkeypatch,
        NEWSLETTER_SMTP_RECONNECT_PAUSE="0",
        NEWSLETTER_SMTP_MAX_RECONNECTS="2",
        NEWSLETTER_SMTP_CONNECTIONS=str(connections),
    )
    with server(monkeypatch, FaultyHandler(refuse_every=1)) as handler:
        assert isinstance(handler, FaultyHandler)
        for n in range(8):
            make_subscriber(f"r{n}@example.org", "politics", now=t0)
        make_post("politics", now=t0 + HOUR)
    # One try, then two reconnects: three messages tried, the rest never tried. The
    # budget is the batch's: with several connections, only those already on their
    # way when it ran out are tried as well.
    assert 3 <= handler.count <= 3 + connections - 1
    rows = deliveries()
    assert {d.status for d in rows.values()} == {DeliveryStatus.QUEUED}
    charged = {e for e, d in rows.items() if d.attempts == 1}
    assert charged == set(handler.tries)
    assert sum(d.attempts for d in rows.values()) == handler.count
    assert all(d.attempts in (0, 1) for d in rows.values())
    assert all(d.next_attempt_at is not None and d.last_error for d in rows.values())


@pytest.mark.usefixtures("app_env")
def test_giving_up_says_how_many_attempts_it_made(
    monkeypatch: pytest.MonkeyPatch, smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    apply_env(monkeypatch, NEWSLETTER_MAX_SEND_ATTEMPTS="3")
    smtp.replies["slow@example.org"] = ["451 4.3.0 try later"]
    make_subscriber("slow@example.org", "politics", now=t0)
    make_post("politics", now=t0 + HOUR)
    while deliveries()["slow@example.org"].status is DeliveryStatus.QUEUED:
        retry_when_due()
    delivery = deliveries()["slow@example.org"]
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.attempts == 3 == smtp.attempts["slow@example.org"]
    assert (delivery.last_error or "").startswith("gave up after 3 attempts: 451")


# --- the reply to the end of DATA --------------------------------------------------


@pytest.mark.usefixtures("app_env")
def test_a_late_250_within_the_data_timeout_is_one_copy(
    monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str], t0: dt.datetime
) -> None:
    """The command timeout is 1 s; the final 250 comes after 2 s: still one copy."""
    apply_env(monkeypatch, NEWSLETTER_SMTP_DATA_TIMEOUT="8")
    handler = FaultyHandler(late={"slow@example.org": 2.0})
    with server(monkeypatch, handler, query="?timeout=1"):
        make_subscriber("slow@example.org", "politics", now=t0)
        make_subscriber("next@example.org", "politics", now=t0)
        make_post("politics", now=t0 + HOUR)
        run_due(t0 + 3 * HOUR)
    assert received_by(handler) == {"slow@example.org": 1, "next@example.org": 1}
    for delivery in deliveries().values():
        assert delivery.status is DeliveryStatus.SENT and delivery.last_error is None


@pytest.mark.usefixtures("app_env")
def test_no_reply_to_data_is_an_unknown_outcome_never_sent_again(
    monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str], t0: dt.datetime
) -> None:
    apply_env(monkeypatch, NEWSLETTER_SMTP_DATA_TIMEOUT="1", NEWSLETTER_SMTP_RECONNECT_PAUSE="0")
    handler = FaultyHandler(late={"slow@example.org": 3.0})
    with server(monkeypatch, handler):
        make_subscriber("slow@example.org", "politics", now=t0)
        make_subscriber("next@example.org", "politics", now=t0)
        make_post("politics", now=t0 + HOUR)
        # The batch went on over a new connection; nothing is sent twice later.
        run_due(t0 + 3 * HOUR)
        run_due(t0 + 30 * HOUR)
    assert received_by(handler) == {"slow@example.org": 1, "next@example.org": 1}
    rows = deliveries()
    slow = rows["slow@example.org"]
    assert slow.status is DeliveryStatus.SENT and slow.attempts == 1
    assert (slow.last_error or "").startswith("outcome unknown: no reply to the end of DATA")
    assert rows["next@example.org"].status is DeliveryStatus.SENT


@pytest.mark.usefixtures("app_env")
def test_unknown_outcome_policy_retry_sends_again(
    monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str], t0: dt.datetime
) -> None:
    apply_env(
        monkeypatch,
        NEWSLETTER_SMTP_DATA_TIMEOUT="1",
        NEWSLETTER_SMTP_RECONNECT_PAUSE="0",
        NEWSLETTER_UNKNOWN_OUTCOME="retry",
    )
    handler = FaultyHandler(late={"slow@example.org": 3.0})
    with server(monkeypatch, handler):
        make_subscriber("slow@example.org", "politics", now=t0)
        make_post("politics", now=t0 + HOUR)
        slow = deliveries()["slow@example.org"]
        assert slow.status is DeliveryStatus.QUEUED and slow.attempts == 1
        assert (slow.last_error or "").startswith("outcome unknown")
        handler.late.clear()
        retry_when_due()
    # The price of this policy, and why it is not the default: a second copy.
    assert received_by(handler) == {"slow@example.org": 2}
    assert deliveries()["slow@example.org"].status is DeliveryStatus.SENT


# --- the database cannot take an outcome -----------------------------------------


def fail_two_writes(monkeypatch: pytest.MonkeyPatch, smtp: ScriptedHandler) -> list[int]:
    """The next two outcome writes fail as a restarting database would; the list
    returned gets the number of messages the server had at each failure."""
    real_write = sending._write_outcomes
    seen_while_down: list[int] = []

    def flaky_write(writer: Session, outcomes: list[sending.Outcome]) -> None:
        if len(seen_while_down) < 2:
            seen_while_down.append(len(smtp.messages))
            writer.rollback()
            cause = psycopg.OperationalError("server closed the connection unexpectedly")
            raise OperationalError("COMMIT", {}, cause)
        real_write(writer, outcomes)

    monkeypatch.setattr(sending, "_write_outcomes", flaky_write)
    return seen_while_down


@pytest.mark.usefixtures("app_env")
def test_outcomes_are_kept_while_the_database_is_down_and_written_once(
    monkeypatch: pytest.MonkeyPatch, smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    """The outcome write fails twice (the database restarting): nothing more is sent
    until it lands, then the batch goes on; every reader gets exactly one copy."""
    seen_while_down = fail_two_writes(monkeypatch, smtp)
    # Each outcome committed before the next message: today's strictest setting.
    apply_env(monkeypatch, NEWSLETTER_UNRECORDED_LIMIT="1")
    emails = [f"r{n}@example.org" for n in range(4)]
    for address in emails:
        make_subscriber(address, "politics", now=t0)
    make_post("politics", now=t0 + HOUR)

    # Both failed writes came after the first message, with no message in between.
    assert seen_while_down == [1, 1]
    assert received_by(smtp) == dict.fromkeys(emails, 1)
    rows = deliveries()
    assert all(d.status is DeliveryStatus.SENT and d.attempts == 1 for d in rows.values())
    assert run_due(t0 + 3 * HOUR).send.sent == 0
    assert len(smtp.messages) == 4


@pytest.mark.usefixtures("app_env")
def test_with_grouped_outcomes_an_outage_stops_new_sends_until_the_write_lands(
    monkeypatch: pytest.MonkeyPatch, smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    """The default: outcomes written in groups over several connections. Once a write
    fails, only the messages already on their way go out until it lands."""
    seen_while_down = fail_two_writes(monkeypatch, smtp)
    apply_env(monkeypatch, NEWSLETTER_SMTP_CONNECTIONS="3")
    emails = [f"r{n}@example.org" for n in range(12)]
    for address in emails:
        make_subscriber(address, "politics", now=t0)
    make_post("politics", now=t0 + HOUR)

    first, second = seen_while_down
    assert second - first <= 3
    assert received_by(smtp) == dict.fromkeys(emails, 1)
    assert all(d.status is DeliveryStatus.SENT for d in deliveries().values())
    assert run_due(t0 + 3 * HOUR).send.sent == 0


@pytest.mark.usefixtures("app_env")
def test_a_database_that_stays_down_ends_the_batch_without_sending_more(
    monkeypatch: pytest.MonkeyPatch, smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    apply_env(monkeypatch, NEWSLETTER_DB_OUTAGE_WAIT="0.2", NEWSLETTER_UNRECORDED_LIMIT="1")

    def down(writer: Session, outcomes: list[sending.Outcome]) -> None:
        raise OperationalError("COMMIT", {}, psycopg.OperationalError("connection refused"))

    for n in range(3):
        make_subscriber(f"r{n}@example.org", "politics", "daily", t0)
    make_post("politics", now=t0 + HOUR)
    day = t0 + 24 * HOUR
    report = planning.plan_due(day)
    monkeypatch.setattr(sending, "_write_outcomes", down)
    with pytest.raises(OperationalError):
        sending.send_batch(report.deliveries, day)
    assert len(smtp.messages) == 1
    # The rows stay claimed: only the lease's expiry hands them on.
    assert {d.status for d in deliveries().values()} == {DeliveryStatus.SENDING}


# --- leases and the sweeper ---------------------------------------------------------


@pytest.mark.usefixtures("app_env", "smtp")
def test_lease_renewal_keeps_our_rows_and_notices_a_takeover(t0: dt.datetime) -> None:
    for n in range(3):
        make_subscriber(f"r{n}@example.org", "politics", "daily", t0)
    make_post("politics", now=t0 + HOUR)
    day = t0 + 24 * HOUR
    ids = planning.plan_due(day).deliveries
    with session_scope() as session:
        assert sending.claim(session, ids, day) == ids
    keeper = sending.LeaseKeeper(ids, day, planning.sending_lease())
    # Another sender took the last row over (our lease had run out).
    with session_scope() as session:
        session.execute(update(Delivery).where(Delivery.id == ids[2]).values(claimed_at=day + HOUR))
    keeper.renew()
    assert [keeper.taken_over(i) for i in ids] == [False, False, True]
    with session_scope() as session:
        rows = session.execute(select(Delivery.id, Delivery.claimed_at))
        stamps = {i: c for i, c in rows if c is not None}
    assert stamps[ids[0]] == stamps[ids[1]] >= day
    assert stamps[ids[2]] == day + HOUR
    # A renewed claim is not stranded; an expired one is.
    just_after = stamps[ids[0]] + dt.timedelta(seconds=1)
    assert planning.stranded_deliveries(just_after) == []
    expired = stamps[ids[0]] + planning.sending_lease() + dt.timedelta(seconds=1)
    assert planning.stranded_deliveries(expired) == ids[:2]


@pytest.mark.usefixtures("app_env")
def test_sweep_task_sends_what_lost_its_task(smtp: ScriptedHandler, t0: dt.datetime) -> None:
    from worker import tasks

    make_subscriber("ana@example.org", "politics", "daily", t0)
    make_post("politics", now=t0 + HOUR)
    # Planned (queued) at a time long past: its send task never ran.
    planning.plan_due(t0 + 24 * HOUR)
    assert smtp.messages == []
    assert tasks.sweep.apply().get() == {"posts": 0, "deliveries": 1, "batches": 1}
    assert received_by(smtp) == {"ana@example.org": 1}
    assert deliveries()["ana@example.org"].status is DeliveryStatus.SENT


class WatchingHandler(FaultyHandler):
    """Before each late reply, looks for rows the sweeper would take over right now."""

    def __init__(self, late: dict[str, float]) -> None:
        super().__init__(late=late)
        self.stranded_seen: list[list[int]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        self.stranded_seen.append(planning.stranded_deliveries())
        return reply


@pytest.mark.usefixtures("app_env")
def test_a_batch_slower_than_its_lease_keeps_its_claim(
    monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str], t0: dt.datetime
) -> None:
    """Three slow replies outlast a 10 s lease; the renewals keep the sweeper off it."""
    apply_env(monkeypatch, NEWSLETTER_SENDING_LEASE="10")
    emails = [f"r{n}@example.org" for n in range(3)]
    handler = WatchingHandler(late=dict.fromkeys(emails, 4.0))
    with server(monkeypatch, handler):
        for address in emails:
            make_subscriber(address, "politics", now=t0)
        make_post("politics", now=t0 + HOUR)
    assert handler.stranded_seen == [[], [], []]
    assert received_by(handler) == dict.fromkeys(emails, 1)
