"""The end of every fault case: the ledger and the SMTP server must tell one story."""

from __future__ import annotations

import email.policy
from collections import Counter
from dataclasses import dataclass
from email.parser import BytesParser

from sqlalchemy import select

from newsletter import db
from newsletter.models import Delivery, DeliveryStatus
from newsletter.outbox import Received
from subscribers.models import Subscriber, Suppression, SuppressionReason
from tests.faults.smtp import FaultyHandler

_HEADERS = BytesParser(policy=email.policy.default)


@dataclass(frozen=True)
class Outcome:
    sent: int
    failed: int
    duplicates: int
    copies: Counter[str]


def message_id(message: Received) -> str:
    return str(_HEADERS.parsebytes(message.data, headersonly=True)["Message-ID"])


def agree(
    smtp: FaultyHandler,
    emails: list[str],
    fail: dict[str, str],
    extra_allowed: int,
    cut_connections: int = 0,
) -> Outcome:
    """Every reader: one delivery row; sent and received, or failed with its reason.

    `fail` maps the readers who must end failed to a text their reason holds (the
    SMTP code). At most `extra_allowed` second copies in all (a SIGKILL's window).
    A message under way when the fault cut its connection was tried even if the
    server never saw its recipient: `cut_connections` such attempts are allowed.
    """
    with db.session_scope() as session:
        rows = session.execute(
            select(
                Subscriber.email,
                Delivery.status,
                Delivery.message_id,
                Delivery.attempts,
                Delivery.last_error,
            ).join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        ).all()
        suppressed = dict(session.execute(select(Suppression.email, Suppression.reason)).all())

    per_reader = Counter(row.email for row in rows)
    assert set(per_reader) == set(emails), "a due reader has no delivery, or a stranger has one"
    assert max(per_reader.values()) == 1, "a reader has two deliveries of one post"
    ledger = {row.email: row for row in rows}

    copies: Counter[str] = Counter()
    for message in smtp.accepted():
        assert len(message.recipients) == 1, message.recipients
        (recipient,) = message.recipients
        assert recipient in ledger, f"mail to a stranger: {recipient}"
        assert message_id(message) == ledger[recipient].message_id, (
            "a message the ledger never planned"
        )
        copies[recipient] += 1

    problems: list[str] = []
    # Only a message that was really tried may be charged an attempt.
    overcharged = {
        address: (row.attempts, smtp.tries[address])
        for address, row in ledger.items()
        if row.attempts > smtp.tries[address]
    }
    if sum(charged - tried for charged, tried in overcharged.values()) > cut_connections:
        problems += [
            f"{address}: charged {charged} attempts, tried {tried} times"
            for address, (charged, tried) in sorted(overcharged.items())
        ]
    for address, row in sorted(ledger.items()):
        if address in fail:
            if row.status != DeliveryStatus.FAILED or fail[address] not in (row.last_error or ""):
                problems.append(
                    f"{address}: {row.status} ({row.last_error}), want failed: {fail[address]}"
                )
            if copies[address]:
                problems.append(f"{address}: failed in the ledger, but the server has it")
            if (
                fail[address].startswith("5")
                and suppressed.get(address) != SuppressionReason.HARD_BOUNCE
            ):
                problems.append(f"{address}: a 5xx, yet not suppressed as a hard bounce")
        elif row.status != DeliveryStatus.SENT:
            problems.append(f"{address}: {row.status}, attempts {row.attempts}: {row.last_error}")
        elif not copies[address]:
            problems.append(f"{address}: sent in the ledger, never received")
    assert not problems, f"{len(problems)} readers wrong:\n" + "\n".join(problems[:20])

    duplicates = sum(n - 1 for n in copies.values() if n > 1)
    twice = sorted(a for a, n in copies.items() if n > 1)
    assert duplicates <= extra_allowed, (
        f"{duplicates} extra copies (allowed {extra_allowed}): {twice}"
    )
    sent = sum(1 for row in rows if row.status == DeliveryStatus.SENT)
    return Outcome(sent=sent, failed=len(rows) - sent, duplicates=duplicates, copies=copies)
