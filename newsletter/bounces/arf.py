"""Complaint reports (RFC 5965 ARF): a reader marked a message as spam.

Mailbox providers' feedback loops (Yahoo's, Microsoft's JMRP, ...) send a
multipart/report whose message/feedback-report part names the complaint and whose
last part returns the message complained about (whole or its headers). Providers
often redact the reader's address in it, so the delivery is found first by the VERP
envelope sender (Original-Mail-From, or the returned copy's Return-Path) or the
returned Message-ID, and only then by an address.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from dataclasses import dataclass
from email.message import Message

from newsletter.bounces import message as msg

# Feedback types that are a reader's complaint. "not-spam" is the opposite, and
# authentication-failure ("auth-failure") and "virus" reports are about the mail
# stream, not about a reader's wish.
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "other"})
_FIELDS = (
    "Feedback-Type",
    "User-Agent",
    "Version",
    "Original-Mail-From",
    "Original-Rcpt-To",
    "Arrival-Date",
    "Received-Date",
    "Reported-Domain",
    "Source-IP",
)


@dataclass(frozen=True)
class Complaint:
    feedback_type: str
    # The complaining reader's addresses, as far as the report tells them.
    emails: list[str]
    # The report's fields, as the provider wrote them.
    fields: str
    occurred_at: dt.datetime | None


def is_feedback_report(message: Message) -> bool:
    report_type = str(message.get_param("report-type") or "").lower()
    if message.get_content_type() == "multipart/report" and report_type == "feedback-report":
        return True
    return any(p.get_content_type() == "message/feedback-report" for p in message.walk())


def _fields(message: Message) -> Message | None:
    for part in message.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
        text = msg.text_of(part) if part.get("Content-Transfer-Encoding") else str(payload)
        return email.message_from_string(text.strip() + "\n", policy=email.policy.compat32)
    return None


def read(message: Message) -> Complaint | None:
    """The complaint a feedback report makes, None when it holds no readable fields."""
    fields = _fields(message)
    if fields is None:
        return None
    emails = [
        a
        for a in (msg.address(str(v)) for v in fields.get_all("Original-Rcpt-To") or [])
        if a is not None
    ]
    returned = msg.original(message)
    if not emails and returned is not None:
        found = msg.address(msg.header(returned, "To"))
        emails = [found] if found else []
    raw = "\n".join(f"{n}: {msg.header(fields, n)}" for n in _FIELDS if fields.get(n))
    when = msg.date(msg.header(fields, "Arrival-Date") or msg.header(fields, "Received-Date"))
    return Complaint(
        feedback_type=msg.header(fields, "Feedback-Type").lower(),
        emails=emails,
        fields=msg.clip(raw),
        occurred_at=when,
    )
