"""What a message at the bounce address is, and the events it reports.

In this order: a complaint report (ARF), a bounce (a DSN, or a plain-text bounce
flufl.bounce recognises, or one that names its delivery only by the VERP token), an
auto-reply, anything else. DSNs carry `Auto-Submitted: auto-replied` themselves,
so the auto-reply marks are only believed of a message that reports no failure.
Nothing here touches the database, and nothing raises on a malformed message: it
is "unrelated", with the reason.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from email.message import Message

from newsletter.bounces import arf, dsn
from newsletter.bounces import message as msg
from newsletter.bounces.events import BounceEvent, MessageKind
from newsletter.config import Settings

log = logging.getLogger(__name__)

_AUTO_REPLY_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoreply-From", "X-Mail-Autoreply")
_AUTO_REPLY_SUBJECT = re.compile(
    r"^\s*(?:out of (?:the )?office|automatic reply|auto(?:matic)?[- ]?(?:reply|response)"
    r"|autoreply|auto:|away from|on vacation|vacation reply|abwesenheit|r[ée]ponse automatique"
    r"|respuesta autom[áa]tica)",
    re.IGNORECASE,
)


@dataclass
class Parsed:
    kind: MessageKind
    events: list[BounceEvent] = field(default_factory=list)
    reason: str = ""
    # The Message-ID of the message reported on, to find the delivery by when no
    # VERP token names it.
    original_message_id: str | None = None


def auto_reply_reason(message: Message) -> str | None:
    submitted = msg.header(message, "Auto-Submitted").lower()
    if submitted.startswith("auto-replied"):
        return "Auto-Submitted: auto-replied"
    for name in _AUTO_REPLY_HEADERS:
        if message.get(name) is not None:
            return f"{name} header"
    if msg.header(message, "Precedence").lower() in ("auto_reply", "auto-reply"):
        return "Precedence: auto_reply"
    subject = msg.header(message, "Subject")
    if _AUTO_REPLY_SUBJECT.search(subject):
        return f"subject {subject[:80]!r}"
    return None


def _ours(address: str | None, settings: Settings) -> bool:
    """Our own sender or bounce address: a heuristic detector reading the returned
    copy can take its From for a failed recipient."""
    if address is None:
        return False
    own = {msg.address(settings.from_), msg.address(settings.bounce_address or "")}
    bounce_local = (settings.bounce_address or "").rpartition("@")[0].lower()
    return address in own or (bool(bounce_local) and address.startswith(bounce_local + "+"))


def report_key(message: Message, raw: bytes) -> str:
    """What names this report: its Message-ID, else a hash of its bytes."""
    return msg.header(message, "Message-ID") or "sha256:" + hashlib.sha256(raw).hexdigest()


def _complaint(message: Message, settings: Settings, key: str) -> Parsed:
    complaint = arf.read(message)
    if complaint is None:
        return Parsed("unrelated", reason="a feedback report with no readable fields")
    if complaint.feedback_type not in arf.COMPLAINT_TYPES:
        return Parsed(
            "unrelated",
            reason=f"a feedback report of type {complaint.feedback_type or 'unknown'!r}, "
            "not a complaint",
        )
    delivery_id = msg.delivery_from_verp(message, settings)
    emails: list[str | None] = list(complaint.emails) or [None]
    events = [
        BounceEvent(
            "complaint", e, delivery_id, complaint.fields, "arf", complaint.occurred_at, key
        )
        for e in emails
    ]
    return Parsed("complaint", events, original_message_id=msg.original_message_id(message))


def _bounce(message: Message, settings: Settings, key: str) -> Parsed | None:
    if not dsn.looks_like_bounce(message):
        return None
    report = dsn.read(message)
    delivery_id = msg.delivery_from_verp(message, settings)
    original_id = msg.original_message_id(message)
    if report.only_successes:
        return Parsed("unrelated", reason="a delivery report with no failure in it")
    failures = report.failures
    if not failures and (delivery_id is not None or original_id is not None):
        # A mangled bounce: no recipient to read, but the token says whose it is.
        diagnostic = dsn.text_diagnostic(message)
        when = msg.date(msg.header(message, "Date"))
        failures = [dsn.Failure(dsn.text_kind(diagnostic), None, diagnostic, when)]
    if not failures:
        if auto_reply_reason(message) is not None and not dsn.is_dsn(message):
            return None
        return Parsed("unrelated", reason="looks like a bounce but names no recipient or delivery")
    source = "dsn" if dsn.is_dsn(message) else "bounce"
    events = [
        BounceEvent(f.kind, f.email, delivery_id, f.diagnostic, source, f.occurred_at, key)
        for f in failures
        if not _ours(f.email, settings)
    ]
    if not events:
        return Parsed("unrelated", reason="a bounce of mail to our own address")
    return Parsed("bounce", events, original_message_id=original_id)


def read(raw: bytes, settings: Settings) -> Parsed:
    """Classify one message and read its events."""
    if not raw.strip():
        return Parsed("unrelated", reason="an empty message")
    try:
        message = msg.parse(raw)
        if not message.keys():
            return Parsed("unrelated", reason="not an email message (no headers)")
        key = report_key(message, raw)
        if arf.is_feedback_report(message):
            return _complaint(message, settings, key)
        bounce = _bounce(message, settings, key)
        if bounce is not None:
            return bounce
        reason = auto_reply_reason(message)
        if reason is not None:
            return Parsed("auto_reply", reason=f"an auto-reply ({reason})")
        return Parsed("unrelated", reason="not a bounce or complaint report")
    except Exception as exc:  # a shape no parser here foresaw: never crash the MTA's pipe
        log.warning("could not read a message at the bounce address", exc_info=True)
        return Parsed("unrelated", reason=f"a malformed message ({type(exc).__name__}: {exc})")
