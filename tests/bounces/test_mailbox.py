"""The bounce mailbox poller against a real IMAP server (dovecot, started by
scripts/services.sh), on SQLite and PostgreSQL, with mail really sent over SMTP.

Each test works in its own folders, so parallel runs never see each other's mail.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import os
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from imap_tools import MailBoxUnencrypted
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from newsletter.bounces import intake, mailbox
from newsletter.bounces.models import BounceRecord
from newsletter.db import session_scope
from newsletter.errors import InvalidInput
from newsletter.models import Delivery, DeliveryStatus
from subscribers import suppression
from subscribers.models import Subscriber, SubscriberStatus, SuppressionReason
from tests.bounces.conftest import BOUNCE_ADDRESS
from tests.cli_runner import run
from tests.conftest import ScriptedHandler, apply_env
from tests.factories import make_post, make_subscriber

# The test-only login scripts/services.sh gives its dovecot.
IMAP_URL = os.environ.get("NEWSLETTER_TEST_IMAP", "imap://newsletter:newsletter-test@127.0.0.1:143")
IMAPS_PORT = int(os.environ.get("NEWSLETTER_TEST_IMAPS_PORT", "993"))
IMAP_CA = os.environ.get("NEWSLETTER_TEST_IMAP_CA", "/etc/dovecot/newsletter-tests/cert.pem")
DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Sent:
    """One message as the SMTP server received it, and the delivery it belongs to."""

    delivery_id: int
    envelope_sender: str
    data: bytes

    @property
    def headers(self) -> bytes:
        return self.data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"\n")


def send_to(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch, *emails: str
) -> dict[str, Sent]:
    """Readers who each got one post over SMTP, with VERP envelope senders."""
    apply_env(monkeypatch, NEWSLETTER_BOUNCE_ADDRESS=BOUNCE_ADDRESS)
    for address in emails:
        make_subscriber(address, "politics")
    make_post("politics")
    sent = {}
    with session_scope() as session:
        for message in smtp.messages:
            [recipient] = message.recipients
            reader = session.scalar(select(Subscriber).where(Subscriber.email == recipient))
            assert reader is not None
            delivery_id = session.scalar(
                select(Delivery.id).where(Delivery.subscriber_id == reader.id)
            )
            assert delivery_id is not None
            sent[recipient] = Sent(delivery_id, message.sender, message.data)
    assert sorted(sent) == sorted(emails)
    return sent


@dataclass
class Folder:
    url: str
    name: str
    done: str


@pytest.fixture
def folder() -> Iterator[Folder]:
    """A fresh folder (and a name for its processed folder) on the test IMAP server."""
    name = f"bounces-{uuid.uuid4().hex[:12]}"
    box = Folder(f"{IMAP_URL}/{name}", name, f"{name}-done")
    with login() as client:
        client.folder.create(name)
    yield box
    with login() as client:
        for each in (box.done, box.name):
            if client.folder.exists(each):
                client.folder.delete(each)


def login() -> MailBoxUnencrypted:
    parts = urlsplit(IMAP_URL)
    client = MailBoxUnencrypted(parts.hostname or "", parts.port or 143)
    return client.login(parts.username or "", parts.password or "", initial_folder=None)


def append(folder: str, *messages: bytes) -> None:
    with login() as client:
        for raw in messages:
            client.append(raw, folder, flag_set=())


def subjects(folder: str) -> list[str]:
    with login() as client:
        client.folder.set(folder)
        return sorted(m.subject for m in client.fetch("ALL", mark_seen=False))


def unseen(folder: str) -> int:
    with login() as client:
        client.folder.set(folder)
        return len(client.uids("UNSEEN"))


# -- the messages a bounce address receives --------------------------------------------


def postfix_dsn(sent: Sent, recipient: str, arrived: dt.datetime, when: dt.datetime) -> bytes:
    """Postfix's bounce for `recipient`: the relay took the message at `arrived` and
    gave up on it at `when`."""
    date = email.utils.format_datetime(when)
    return (
        (
            f"Return-Path: <>\n"
            f"Date: {date}\n"
            f"From: MAILER-DAEMON@mx.mail.example.net (Mail Delivery System)\n"
            f"Subject: Undelivered Mail Returned to Sender\n"
            f"To: {sent.envelope_sender}\n"
            f"Auto-Submitted: auto-replied\n"
            f"MIME-Version: 1.0\n"
            f'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="B1"\n'
            f"Message-Id: <20260303.4F3A21C0123@mx.mail.example.net>\n"
            f"\n--B1\nContent-Description: Notification\nContent-Type: text/plain; charset=us-ascii\n\n"
            f"This is the mail system at host mx.mail.example.net.\n\n"
            f"I'm sorry to have to inform you that your message could not\n"
            f"be delivered to one or more recipients.\n\n"
            f"<{recipient}>: host mx.example.org[192.0.2.7] said: 550 5.1.1\n"
            f"    <{recipient}>: Recipient address rejected: User unknown in virtual\n"
            f"    mailbox table (in reply to RCPT TO command)\n"
            f"\n--B1\nContent-Description: Delivery report\nContent-Type: message/delivery-status\n\n"
            f"Reporting-MTA: dns; mx.mail.example.net\n"
            f"X-Postfix-Queue-ID: 4F3A21C0123\n"
            f"X-Postfix-Sender: rfc822; {sent.envelope_sender}\n"
            f"Arrival-Date: {email.utils.format_datetime(arrived)}\n\n"
            f"Final-Recipient: rfc822; {recipient}\n"
            f"Original-Recipient: rfc822;{recipient}\n"
            f"Action: failed\n"
            f"Status: 5.1.1\n"
            f"Remote-MTA: dns; mx.example.org\n"
            f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected:\n"
            f"    User unknown in virtual mailbox table\n"
            f"\n--B1\nContent-Description: Undelivered Message Headers\n"
            f"Content-Type: text/rfc822-headers\n\n"
        ).encode()
        + sent.headers
        + b"\n\n--B1--\n"
    )


def yahoo_arf(sent: Sent, recipient: str, when: dt.datetime) -> bytes:
    """A feedback-loop complaint: the reader pressed "this is spam"."""
    date = email.utils.format_datetime(when)
    original = sent.data.replace(b"\r\n", b"\n")
    return (
        (
            f"Date: {date}\n"
            f"From: feedback@arf.mail.yahoo.com\n"
            f"Subject: FW: email abuse report\n"
            f"To: {BOUNCE_ADDRESS}\n"
            f"Message-ID: <arf-{uuid.uuid4().hex}@arf.mail.yahoo.com>\n"
            f"MIME-Version: 1.0\n"
            f'Content-Type: multipart/report; report-type=feedback-report; boundary="A1"\n'
            f"\n--A1\nContent-Type: text/plain\n\n"
            f"This is an email abuse report for an email message received from IP\n"
            f"192.0.2.25 on {date}.\n"
            f"\n--A1\nContent-Type: message/feedback-report\n\n"
            f"Feedback-Type: abuse\n"
            f"User-Agent: Yahoo!-Mail-Feedback/2.0\n"
            f"Version: 1\n"
            f"Original-Mail-From: <{sent.envelope_sender}>\n"
            f"Original-Rcpt-To: <{recipient}>\n"
            f"Arrival-Date: {date}\n"
            f"Reported-Domain: news.example.org\n"
            f"Authentication-Results: mta.yahoo.com; spf=pass smtp.mailfrom=news.example.org\n"
            f"\n--A1\nContent-Type: message/rfc822\nContent-Disposition: inline\n\n"
        ).encode()
        + original
        + b"\n--A1--\n"
    )


def out_of_office(sent: Sent, sender: str) -> bytes:
    return (
        f"From: {sender}\nTo: {sent.envelope_sender}\n"
        f"Subject: Automatic reply: this week's posts\n"
        f"Auto-Submitted: auto-replied\nMessage-ID: <ooo-{uuid.uuid4().hex}@example.org>\n"
        f"Date: {email.utils.format_datetime(dt.datetime.now(dt.UTC))}\n\n"
        f"I am away until Monday and will read your message then.\n"
    ).encode()


def question() -> bytes:
    return (
        f"From: dora@example.org\nTo: {BOUNCE_ADDRESS}\n"
        f"Subject: A question about the newsletter\n"
        f"Message-ID: <q-{uuid.uuid4().hex}@example.org>\n"
        f"Date: {email.utils.format_datetime(dt.datetime.now(dt.UTC))}\n\n"
        f"Hello, how do I change the day my digest arrives?\n"
    ).encode()


def status_of(address: str) -> tuple[SubscriberStatus, SuppressionReason | None]:
    with session_scope() as session:
        reader = session.scalar(select(Subscriber).where(Subscriber.email == address))
        assert reader is not None
        found = suppression.find(session, address)
        return reader.status, found.reason if found else None


def records() -> list[BounceRecord]:
    with session_scope() as session:
        rows = list(session.scalars(select(BounceRecord).order_by(BounceRecord.kind)))
        session.expunge_all()
        return rows


def fill_mailbox(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch, box: Folder
) -> dict[str, Sent]:
    """ana's mail, sent yesterday, bounced today; bob complained, carla is away, dora asks."""
    sent = send_to(smtp, monkeypatch, "ana@example.org", "bob@example.org", "carla@example.org")
    now = dt.datetime.now(dt.UTC)
    with session_scope() as session:
        delivery = session.get(Delivery, sent["ana@example.org"].delivery_id)
        assert delivery is not None and delivery.status == DeliveryStatus.SENT
        delivery.sent_at = now - DAY
    append(
        box.name,
        postfix_dsn(sent["ana@example.org"], "ana@example.org", now - DAY, now),
        yahoo_arf(sent["bob@example.org"], "bob@example.org", now),
        out_of_office(sent["carla@example.org"], "carla@example.org"),
        question(),
    )
    return sent


KEPT = ["A question about the newsletter", "Automatic reply: this week's posts"]
HANDLED = ["FW: email abuse report", "Undelivered Mail Returned to Sender"]


# -- against the real server ---------------------------------------------------


@pytest.mark.usefixtures("app_env")
def test_poll_applies_bounce_and_complaint_deletes_them_and_leaves_the_rest(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch, folder: Folder
) -> None:
    sent = fill_mailbox(smtp, monkeypatch, folder)
    # A person deleted this one in their mail client, which has not expunged yet:
    # the poller's delete must expunge its own messages only.
    with login() as client:
        deleted = question().replace(b"A question", b"Deleted")
        client.append(deleted, folder.name, flag_set=["\\Deleted"])

    report = mailbox.poll(folder.url, processed_folder="")

    assert (report.read, report.handled, report.kept, report.failed) == (5, 2, 3, 0)
    assert sorted(report.effects) == [
        "ana@example.org suppressed: hard bounce",
        "bob@example.org suppressed and unsubscribed: complaint",
    ]
    assert subjects(folder.name) == [*KEPT, "Deleted about the newsletter"]
    assert unseen(folder.name) == 3  # read with PEEK: still unread for a person
    assert status_of("ana@example.org") == (SubscriberStatus.ACTIVE, SuppressionReason.HARD_BOUNCE)
    assert status_of("bob@example.org") == (
        SubscriberStatus.UNSUBSCRIBED,
        SuppressionReason.COMPLAINT,
    )
    assert status_of("carla@example.org") == (SubscriberStatus.ACTIVE, None)
    # The DSN that came a day after the delivery was accepted is on that delivery,
    # found by its VERP token, with the remote server's words kept.
    complaint, hard = records()
    assert hard.delivery_id == sent["ana@example.org"].delivery_id
    assert "5.1.1" in hard.diagnostic and "User unknown" in hard.diagnostic
    assert hard.via == "imap"
    assert complaint.delivery_id == sent["bob@example.org"].delivery_id
    with session_scope() as session:
        delivery = session.get(Delivery, hard.delivery_id)
        assert delivery is not None and delivery.status == DeliveryStatus.SENT
        assert delivery.sent_at is not None
        assert hard.received_at - delivery.sent_at >= DAY - dt.timedelta(minutes=5)

    # The next poll reads the two left and changes nothing.
    again = mailbox.poll(folder.url, processed_folder="")
    assert (again.read, again.handled, again.kept) == (3, 0, 3)
    assert len(records()) == 2


@pytest.mark.usefixtures("app_env")
def test_the_poll_command_moves_recognised_messages_to_the_processed_folder(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch, folder: Folder
) -> None:
    fill_mailbox(smtp, monkeypatch, folder)
    apply_env(
        monkeypatch,
        NEWSLETTER_BOUNCE_MAILBOX_URL=folder.url,
        NEWSLETTER_BOUNCE_PROCESSED_FOLDER=folder.done,
    )

    code, out, err = run("bounces", "poll")  # everything from the settings

    assert (code, err) == (0, "")
    assert f"/{folder.name}: 4 read, 2 handled, 2 kept, 0 failed, 0 skipped" in out
    assert "-> ana@example.org suppressed: hard bounce" in out
    assert subjects(folder.name) == KEPT
    assert subjects(folder.done) == HANDLED
    assert status_of("ana@example.org")[1] == SuppressionReason.HARD_BOUNCE


@pytest.mark.usefixtures("app_env")
def test_one_message_failing_stops_neither_the_others_nor_the_next_poll(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch, folder: Folder
) -> None:
    fill_mailbox(smtp, monkeypatch, folder)
    real = intake.ingest_message

    def database_hiccup_on_the_dsn(raw: bytes, *, source: str) -> intake.IngestResult:
        if b"Undelivered Mail Returned" in raw:
            raise RuntimeError("connection to the database lost")
        return real(raw, source=source)

    monkeypatch.setattr(intake, "ingest_message", database_hiccup_on_the_dsn)
    report = mailbox.poll(folder.url, processed_folder="")
    assert (report.read, report.handled, report.kept, report.failed) == (4, 1, 2, 1)
    assert report.errors == [report.errors[0]] and "database lost" in report.errors[0]
    assert "Undelivered Mail Returned to Sender" in subjects(folder.name)
    assert status_of("bob@example.org")[1] == SuppressionReason.COMPLAINT
    assert status_of("ana@example.org")[1] is None

    monkeypatch.setattr(intake, "ingest_message", real)
    report = mailbox.poll(folder.url, processed_folder="")
    assert (report.handled, report.kept, report.failed) == (1, 2, 0)
    assert subjects(folder.name) == KEPT
    assert status_of("ana@example.org")[1] == SuppressionReason.HARD_BOUNCE


@pytest.mark.usefixtures("app_env")
def test_beat_polls_the_mailbox_only_when_it_is_configured(
    smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch, folder: Folder
) -> None:
    from worker import tasks
    from worker.celery_app import app

    assert "poll-bounce-mailbox" not in app.conf.beat_schedule
    fill_mailbox(smtp, monkeypatch, folder)
    apply_env(
        monkeypatch, NEWSLETTER_BOUNCE_MAILBOX_URL=folder.url, NEWSLETTER_BOUNCE_POLL_INTERVAL="60"
    )
    entry = app.conf.beat_schedule["poll-bounce-mailbox"]
    assert entry == {"task": "worker.tasks.poll_bounce_mailbox", "schedule": 60.0}

    result = tasks.poll_bounce_mailbox.delay().get()
    assert result == {
        "read": 4,
        "handled": 2,
        "kept": 2,
        "failed": 0,
        "skipped": 0,
        "errors": [],
    }
    assert subjects(folder.name) == KEPT


def test_with_the_database_gone_the_poll_stops_and_leaves_every_message(
    settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, folder: Folder
) -> None:
    def database_down(raw: bytes, *, source: str) -> intake.IngestResult:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(intake, "ingest_message", database_down)
    append(folder.name, question(), question(), question())
    report = mailbox.poll(folder.url)
    assert (report.read, report.failed, report.handled) == (1, 1, 0)
    assert report.errors[0].startswith("the database is out of reach, the rest wait")
    assert len(subjects(folder.name)) == 3


def test_a_message_too_large_to_be_a_report_is_never_read(
    settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, folder: Folder
) -> None:
    monkeypatch.setattr(mailbox, "MAX_MESSAGE_BYTES", 4096)
    huge = question().replace(b"Hello,", b"Hello, " + b"x" * 5000)
    append(folder.name, huge)
    report = mailbox.poll(folder.url)
    assert (report.read, report.skipped) == (0, 1)
    assert subjects(folder.name) == ["A question about the newsletter"]


# -- reaching the mailbox, and what is said when it cannot be reached ---------------


def test_wrong_password_is_a_clear_error_that_never_shows_the_password(
    settings_env: dict[str, str], folder: Folder
) -> None:
    parts = urlsplit(folder.url)
    url = folder.url.replace(f":{parts.password}@", ":Sw0rdfish-9@")
    with pytest.raises(mailbox.MailboxError) as caught:
        mailbox.poll(url)
    message = str(caught.value)
    assert "cannot open the bounce mailbox imap://newsletter@127.0.0.1:143/" in message
    assert "Sw0rdfish" not in message and "Sw0rdfish" not in repr(caught.value)


def test_the_poll_command_says_what_is_wrong(
    settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, folder: Folder
) -> None:
    code, _, err = run("bounces", "poll")
    assert code == 2 and "set NEWSLETTER_BOUNCE_MAILBOX_URL" in err
    url = folder.url.replace(":newsletter-test@", ":Sw0rdfish-9@")
    apply_env(monkeypatch, NEWSLETTER_BOUNCE_MAILBOX_URL=url)
    code, _, err = run("bounces", "poll")
    assert code == 1 and "cannot open the bounce mailbox" in err and "Sw0rdfish" not in err


def test_a_missing_folder_is_a_clear_error(settings_env: dict[str, str], folder: Folder) -> None:
    with pytest.raises(mailbox.MailboxError, match="cannot open the bounce mailbox"):
        mailbox.poll(f"{folder.url}-nowhere")


def test_the_task_logs_an_unreachable_mailbox_and_waits_for_the_next_beat(
    settings_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    folder: Folder,
) -> None:
    from worker import tasks

    url = folder.url.replace(":newsletter-test@", ":Sw0rdfish-9@")
    apply_env(monkeypatch, NEWSLETTER_BOUNCE_MAILBOX_URL=url)
    result = tasks.poll_bounce_mailbox.delay().get()
    assert "cannot open the bounce mailbox" in result["error"]
    assert "Sw0rdfish" not in caplog.text and "Sw0rdfish" not in result["error"]


def imaps_url(folder: Folder) -> str:
    parts = urlsplit(folder.url)
    return f"imaps://{parts.username}:{parts.password}@127.0.0.1:{IMAPS_PORT}/{folder.name}"


def test_imaps_checks_the_server_certificate(settings_env: dict[str, str], folder: Folder) -> None:
    if not Path(IMAP_CA).is_file():
        pytest.fail(f"{IMAP_CA} is missing: run scripts/services.sh")
    trusting = ssl.create_default_context(cafile=IMAP_CA)
    report = mailbox.poll(imaps_url(folder), ssl_context=trusting)
    assert (report.read, report.handled) == (0, 0)
    # The system's trust store does not know the test server's self-signed certificate.
    with pytest.raises(mailbox.MailboxError, match="certificate verify failed"):
        mailbox.poll(imaps_url(folder))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "imaps://bounce%40news.example.org:p%40ss%2Fw0rd@mail.example.org/Bounces",
            ("bounce@news.example.org", "p@ss/w0rd", "mail.example.org", 993, True, "Bounces"),
        ),
        (
            "imap://box:secret@127.0.0.1:1143",
            ("box", "secret", "127.0.0.1", 1143, False, "INBOX"),
        ),
    ],
)
def test_mailbox_urls(url: str, expected: tuple[object, ...]) -> None:
    a = mailbox.MailboxAddress.parse(url)
    assert (a.user, a.password, a.host, a.port, a.secure, a.folder) == expected
    assert a.password not in str(a) and a.password not in repr(a)


@pytest.mark.parametrize(
    "url",
    [
        "pop3://user:Sw0rdfish@mail.example.org/INBOX",
        "imaps://mail.example.org/INBOX",
        "imaps://user:Sw0rdfish@mail.example.org:99999/INBOX",
    ],
)
def test_bad_mailbox_urls_are_refused_without_showing_the_password(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        mailbox.MailboxAddress.parse(url)
    assert "bounce mailbox URL" in str(caught.value)
    assert "Sw0rdfish" not in str(caught.value)
