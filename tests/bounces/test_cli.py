"""`newsletter bounces ingest` as an MTA runs it, after a real send: a digest goes out
through the pipeline to a real SMTP server, and its DSN (or a complaint about it)
arrives later on standard input."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from newsletter.bounces import records
from newsletter.bounces.models import BounceRecord
from newsletter.cli import app
from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.delivery import verp
from newsletter.models import Delivery, DeliveryStatus
from subscribers import suppression
from subscribers.models import Subscriber, SubscriberStatus, SuppressionReason
from tests.bounces.conftest import fixture
from tests.cli_runner import count, run
from tests.conftest import ScriptedHandler
from tests.factories import make_post, make_subscriber

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
# What the fixtures were written for: replaced by a real delivery's.
FIXTURE_VERP = {
    "postfix-hard.eml": "bounces+ya-6ac09543a112@news.example.org",
    "postfix-soft-delayed.eml": "bounces+yb-3cc9c147190c@news.example.org",
    "arf-microsoft.eml": "bounces+yf-87e523b8792f@news.example.org",
}
FIXTURE_MESSAGE_ID = {
    "postfix-hard.eml": "<5b1f0c9e2a7d4e3f8c6b0a1d2e3f4a5b@news.example.org>",
    "postfix-soft-delayed.eml": "<0c6e9d1b3f2a4c5d8e7f6a5b4c3d2e1f@news.example.org>",
    "arf-microsoft.eml": "<5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a@news.example.org>",
}

runner = CliRunner()


def ingest(raw: bytes, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["bounces", "ingest", *args], input=raw)
    return result.exit_code, result.stdout, result.stderr


def sent_digest(smtp: ScriptedHandler, email: str, t0: dt.datetime) -> Delivery:
    """One reader, one post, one digest sent through the pipeline and the SMTP server."""
    make_subscriber(email, "politics", now=t0)
    make_post("politics", now=t0 + HOUR)
    assert [m.recipients for m in smtp.messages][-1] == [email]
    with session_scope() as session:
        delivery = session.scalars(select(Delivery).order_by(Delivery.id.desc())).first()
        assert delivery is not None and delivery.status is DeliveryStatus.SENT
        return delivery


def report_about(
    name: str, delivery: Delivery, *, token: bool = True, original_to: str | None = None
) -> bytes:
    """The fixture report, about this delivery: its VERP address and Message-ID."""
    text = fixture(name).decode("utf-8")
    address = verp.envelope_sender(get_settings(), delivery.id) if token else "bounces@x.invalid"
    assert address is not None
    text = text.replace(FIXTURE_VERP[name], address)
    text = text.replace(FIXTURE_MESSAGE_ID[name], delivery.message_id)
    if original_to is not None:
        text = text.replace("ana@example.net", original_to)
    return text.encode("utf-8")


@pytest.fixture(autouse=True)
def env(app_env: str, bounce_env: None) -> None:
    """A database and a bounce address."""


def test_a_dsn_a_day_later_suppresses_the_reader_and_lands_on_the_delivery(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    delivery = sent_digest(smtp, "ana@example.net", t0)
    code, out, err = ingest(report_about("postfix-hard.eml", delivery), "--now", str(t0 + DAY))
    assert code == 0, err
    assert f"bounce: 1 event\n  hard ana@example.net, delivery {delivery.id}: 5.1.1" in out
    assert "-> ana@example.net suppressed: hard bounce" in out
    with session_scope() as session:
        row = suppression.find(session, "ana@example.net")
        assert row is not None and row.reason is SuppressionReason.HARD_BOUNCE
        assert row.detail is not None and "User unknown in virtual" in row.detail
        [record] = records.for_delivery(session, delivery.id)
        assert record.subscriber_id == delivery.subscriber_id and record.via == "cli"
        sent = session.get(Delivery, delivery.id)
        assert sent is not None and sent.status is DeliveryStatus.SENT
        assert sent.last_error is not None
        assert sent.last_error.startswith("hard bounce after sending: ")
        assert "Diagnostic-Code: smtp; 550 5.1.1 <ana@example.net>" in record.diagnostic
    # Piped again (the MTA retried): exit 0, counted once.
    code, out, _ = ingest(report_about("postfix-hard.eml", delivery))
    assert code == 0 and "already recorded, counted once" in out
    assert count(BounceRecord) == 1


def test_a_dsn_with_no_token_is_matched_by_the_returned_message_id(
    smtp: ScriptedHandler, t0: dt.datetime, tmp_path: Path
) -> None:
    """Sent to another reader's address: the Message-ID names the delivery, whose reader
    is the one suppressed, whatever address the report quotes."""
    delivery = sent_digest(smtp, "ana.forwarded@example.net", t0)
    path = tmp_path / "dsn.eml"
    path.write_bytes(report_about("postfix-hard.eml", delivery, token=False))
    code, out, err = ingest(b"", str(path))
    assert code == 0, err
    assert "-> ana.forwarded@example.net suppressed: hard bounce" in out
    with session_scope() as session:
        [record] = records.recent(session)
        assert record.delivery_id == delivery.id


def test_a_complaint_suppresses_and_unsubscribes_the_reader(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    """Microsoft's feedback loop redacts the reader's address: the VERP envelope
    sender it returns names the delivery."""
    delivery = sent_digest(smtp, "kim@example.org", t0)
    code, out, err = ingest(report_about("arf-microsoft.eml", delivery), "--now", str(t0 + DAY))
    assert code == 0, err
    assert "-> kim@example.org suppressed and unsubscribed: complaint" in out
    with session_scope() as session:
        reader = session.get(Subscriber, delivery.subscriber_id)
        assert reader is not None and reader.status is SubscriberStatus.UNSUBSCRIBED
        row = suppression.find(session, "kim@example.org")
        assert row is not None and row.reason is SuppressionReason.COMPLAINT
        [record] = records.for_delivery(session, delivery.id)
        assert record.kind == "complaint" and "Feedback-Type: abuse" in record.diagnostic
    # No more mail for them: the next post reaches nobody.
    sent_before = len(smtp.messages)
    make_post("politics", now=t0 + 2 * DAY)
    assert len(smtp.messages) == sent_before


def test_a_warning_and_the_final_failure_of_one_message_count_once(
    smtp: ScriptedHandler, t0: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import apply_env

    apply_env(monkeypatch, NEWSLETTER_SOFT_BOUNCE_LIMIT="2")
    delivery = sent_digest(smtp, "ben@example.net", t0)
    warning = report_about("postfix-soft-delayed.eml", delivery)
    final = warning.replace(b"Action: delayed", b"Action: failed").replace(
        b"Message-Id: <20260303141031", b"Message-Id: <20260308100005"
    )
    assert b"Action: failed" in final
    for raw in (warning, final):
        code, out, _ = ingest(raw, "--now", str(t0 + 6 * DAY))
        assert code == 0 and "ben@example.net: soft bounce 1 of 2 in 14 days" in out
    assert count(BounceRecord) == 2
    assert run("bounces", "list")[1].count("counted: 1 of 2") == 2


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("auto-reply.eml", "auto_reply: an auto-reply (Auto-Submitted: auto-replied)"),
        ("unrelated.eml", "unrelated: not a bounce or complaint report"),
    ],
)
def test_what_is_no_bounce_exits_0_and_changes_nothing(name: str, said: str) -> None:
    code, out, _ = ingest(fixture(name))
    assert code == 0
    assert out == f"{said}; nothing changed\n"
    assert count(BounceRecord) == 0


def test_unreadable_input_exits_2_with_a_message(tmp_path: Path) -> None:
    code, out, err = ingest(b"")
    assert (code, out) == (2, "") and "no message to read" in err
    code, out, err = ingest(b"", str(tmp_path / "missing.eml"))
    assert (code, out) == (2, "") and "cannot read" in err
    code, out, _ = ingest(b"\x00\xff garbage with no headers")
    assert code == 0 and out.startswith("unrelated: not an email message")


def test_a_database_out_of_reach_asks_the_mta_to_try_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exit 75 (EX_TEMPFAIL): the MTA keeps the bounce and pipes it again later."""
    from newsletter.outbox import free_port
    from tests.conftest import apply_env

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    apply_env(monkeypatch, NEWSLETTER_DATABASE_URL=url)
    code, out, err = ingest(fixture("postfix-hard.eml"))
    assert (code, out) == (75, "") and "try again later" in err
