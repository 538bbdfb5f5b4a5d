"""The SMTP server misbehaves: refusals in patterns, outages, cut connections, late replies.

Each case publishes one post to a few hundred immediate readers, sent by a real
worker in batches, while the server does what the case says. Each ends with the
ledger and the server agreeing: one copy per reader, or a failure with its reason.
"""

from __future__ import annotations

import time

import pytest

from newsletter.config import get_settings
from tests.faults.conftest import READERS, SMTP_TIMEOUT, Rig
from tests.faults.smtp import DROP, Pattern

pytestmark = pytest.mark.faults


def send_through(rig: Rig) -> float:
    """Publish the post with a worker and the sweeper running; seconds to settle."""
    with rig.worker(), rig.ticker():
        start = time.monotonic()
        rig.publish()
        recovery = rig.recover(start)
        rig.quiesce()
    return recovery


def send_through_one_pass(rig: Rig) -> float:
    """Publish with the faults on until every reader was tried once, then off.

    Seconds from the end of the faults until every reader is settled.
    """
    with rig.worker(), rig.ticker():
        rig.publish()
        rig.wait_for(lambda: len(rig.smtp.tries) == len(rig.emails), "every reader tried once")
        rig.smtp.stop_faults()
        fault_end = time.monotonic()
        recovery = rig.recover(fault_end)
        rig.quiesce()
    return recovery


def test_permanent_refusals_fail_alone_with_their_reason(rig: Rig) -> None:
    """550 at RCPT, 552 and 554 at the end of DATA: those fail and are suppressed."""
    emails = rig.add_readers()
    fail: dict[str, str] = {}
    for address in emails[5:15]:
        rig.smtp.replies[address] = ["550 5.1.1 no such user"]
        fail[address] = "550"
    for address in emails[60:65]:
        rig.smtp.script.data_replies[address] = "552 5.2.2 mailbox full"
        fail[address] = "552"
    for address in emails[120:125]:
        rig.smtp.script.data_replies[address] = "554 5.7.1 message refused as spam"
        fail[address] = "554"
    recovery = send_through(rig)
    outcome = rig.verdict(recovery, rig.smtp.faults(), fail=fail)
    assert outcome.failed == len(fail)


def test_421_to_every_third_message_only_delays_it(rig: Rig) -> None:
    """A throttling server closes the connection on every third message: the sender
    reconnects and goes on; only the refused messages wait, each charged one attempt."""
    rig.add_readers()
    throttle = Pattern(3, "421 4.7.0 too many messages, closing connection")
    rig.smtp.script.patterns["data"] = [throttle]
    recovery = send_through_one_pass(rig)
    # About a third of the messages are refused; the exact count depends on where
    # batches and reconnections fall, which is not what this test is about.
    assert throttle.hits >= READERS // 4
    rig.verdict(recovery, throttle.hits)


def test_451_and_452_patterns_are_retried_until_delivered(rig: Rig) -> None:
    """Temporary refusals at RCPT and at the end of DATA while everyone is tried once."""
    rig.add_readers()
    over_quota = Pattern(4, "452 4.2.2 mailbox over quota, try again later")
    local_error = Pattern(5, "451 4.3.0 local error in processing, try again later")
    rig.smtp.script.patterns = {"rcpt": [over_quota], "data": [local_error]}
    recovery = send_through_one_pass(rig)
    assert over_quota.hits and local_error.hits
    rig.verdict(recovery, over_quota.hits + local_error.hits)


def test_connection_dropped_mid_data_resends_only_what_never_arrived(rig: Rig) -> None:
    """Every seventh message is cut off after its first line while everyone is tried once."""
    rig.add_readers()
    drop = Pattern(7, DROP)
    rig.smtp.script.patterns["drop"] = [drop]
    recovery = send_through_one_pass(rig)
    assert drop.hits
    rig.verdict(recovery, drop.hits)


def test_server_down_and_back_mid_send(rig: Rig) -> None:
    """The SMTP server goes away for a few seconds in the middle of the batches."""
    rig.add_readers()
    rig.smtp.script.pace = 0.01
    with rig.worker(), rig.ticker():
        rig.publish()
        rig.wait_accepted(READERS // 4)
        rig.server.stop()
        time.sleep(3.0)  # the outage itself
        rig.server.start()
        fault_end = time.monotonic()
        recovery = rig.recover(fault_end)
        rig.quiesce()
    # The one worker's connections (one send task's) were each cut in the middle of
    # a message at most.
    rig.verdict(recovery, faults=1, cut_connections=get_settings().smtp_connections)


def test_late_250_after_the_command_timeout_is_never_sent_twice(rig: Rig) -> None:
    """The server keeps a message but answers after longer than the command timeout."""
    rig.add_readers()
    rig.smtp.script.late_every = 75
    rig.smtp.script.late_by = SMTP_TIMEOUT + 1.0
    recovery = send_through(rig)
    assert rig.smtp.late >= 1
    rig.verdict(recovery, rig.smtp.late)


def test_no_reply_to_the_end_of_data_is_recorded_and_never_resent(rig: Rig) -> None:
    """The reply outlasts even the end-of-DATA timeout: outcome unknown, no second copy."""
    rig.setenv(NEWSLETTER_SMTP_DATA_TIMEOUT="2")
    emails = rig.add_readers()
    rig.smtp.script.late_every = 100
    rig.smtp.script.late_by = 3.0
    recovery = send_through(rig)
    assert rig.smtp.late >= 1
    outcome = rig.verdict(recovery, rig.smtp.late)
    assert all(outcome.copies[address] == 1 for address in emails)
    assert rig.unknown_outcomes() == rig.smtp.late
