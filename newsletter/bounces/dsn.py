"""Delivery status notifications: who failed, hard or soft, and the remote server's words.

flufl.bounce decides which recipients failed, permanently or for now: its RFC 3464
reader first, then its detectors for the non-standard shapes (Exim's plain text,
qmail, old Yahoo and Microsoft). The RFC 3464 fields it does not return are read
here: each recipient's Status, which decides hard (5.x.x) or soft (4.x.x) when
present, and the Diagnostic-Code, kept as the server wrote it.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import logging
import re
from dataclasses import dataclass
from email.message import Message

from flufl.bounce import all_failures

from newsletter.bounces import message as msg
from newsletter.bounces.events import EventKind

log = logging.getLogger(__name__)

_STATUS = re.compile(r"\b([245])\.\d{1,3}\.\d{1,3}\b")
_REPLY = re.compile(r"^\s*([245])\d\d[ -].+$", re.MULTILINE)
# A reply with an enhanced status code, wherever a bounce quotes it ("Remote host
# said: 550 5.1.1 ...", "<<< 554 5.7.1 ...").
_QUOTED_REPLY = re.compile(r"^.*?\b([245])\d\d[ -]\1\.\d{1,3}\.\d{1,3}\b.*$", re.MULTILINE)
_FAILED_ACTIONS = ("fail", "error")
_SUCCESS_ACTIONS = ("delivered", "relayed", "expanded")
_BOUNCE_SENDER = re.compile(r"mailer-daemon|postmaster|mail delivery (?:system|subsystem)", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery status notification|returned mail|mail delivery failed|failure notice"
    r"|delivery failure|could not be delivered|non-?delivery|delivery has failed"
    r"|delayed mail|delivery delayed|warning: could not send",
    re.I,
)


@dataclass(frozen=True)
class Failure:
    """One recipient a report says the mail did not reach."""

    kind: EventKind
    email: str | None
    diagnostic: str
    occurred_at: dt.datetime | None


@dataclass(frozen=True)
class Report:
    failures: list[Failure]
    # Delivery status blocks that all say "delivered" or "relayed": a success report.
    only_successes: bool


def is_dsn(message: Message) -> bool:
    return any(p.get_content_type() == "message/delivery-status" for p in message.walk())


def looks_like_bounce(message: Message) -> bool:
    """Sent by a mail system about a failure, by the marks every MTA leaves: a null or
    daemon sender, X-Failed-Recipients, or a failure subject."""
    if is_dsn(message) or message.get("X-Failed-Recipients"):
        return True
    if msg.header(message, "Return-Path") == "<>":
        return True
    if _BOUNCE_SENDER.search(msg.header(message, "From")):
        return True
    return bool(_BOUNCE_SUBJECT.search(msg.header(message, "Subject")))


def _blocks(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status part, the per-message one first."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload if isinstance(b, Message)]
    # Sent base64 or quoted-printable (or built as a string): split it ourselves.
    text = msg.text_of(part) if part.get("Content-Transfer-Encoding") else str(payload)
    chunks = re.split(r"\r?\n\s*\r?\n", text.strip())
    return [email.message_from_string(c + "\n", policy=email.policy.compat32) for c in chunks]


def _kind_of(status: str, action: str) -> EventKind | None:
    found = _STATUS.search(status)
    if found and found.group(1) == "5":
        return "hard"
    if found and found.group(1) == "4":
        return "soft"
    if action.startswith(_FAILED_ACTIONS):
        return "hard"
    if action.startswith("delayed"):
        return "soft"
    return None


def _field_lines(block: Message, names: tuple[str, ...]) -> str:
    return "\n".join(f"{n}: {msg.header(block, n)}" for n in names if block.get(n))


def _status_failures(message: Message) -> tuple[list[Failure], bool]:
    failures: list[Failure] = []
    seen_success = False
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = _blocks(part)
        if not blocks:
            continue
        arrival = msg.date(msg.header(blocks[0], "Arrival-Date"))
        # When the report was made is when the failure was decided.
        reported = msg.date(msg.header(message, "Date")) or arrival
        for block in blocks[1:] if len(blocks) > 1 else blocks:
            action = msg.header(block, "Action").lower()
            if action.startswith(_SUCCESS_ACTIONS):
                seen_success = True
                continue
            kind = _kind_of(msg.header(block, "Status"), action)
            if kind is None:
                continue
            email_address = msg.address(msg.header(block, "Original-Recipient")) or msg.address(
                msg.header(block, "Final-Recipient")
            )
            diagnostic = _field_lines(block, ("Status", "Diagnostic-Code", "Action", "Remote-MTA"))
            occurred = msg.date(msg.header(block, "Last-Attempt-Date")) or reported
            failures.append(Failure(kind, email_address, msg.clip(diagnostic), occurred))
    return failures, seen_success and not failures


def _library_failures(message: Message) -> tuple[set[str], set[str]]:
    """flufl.bounce's (temporary, permanent) recipients; none when a detector trips."""
    try:
        temporary, permanent = all_failures(message)
    except Exception as exc:  # a heuristic detector on a shape it never saw
        log.info("flufl.bounce could not read a report: %s", exc)
        return set(), set()

    def decoded(found: frozenset[bytes]) -> set[str]:
        return {a for a in (msg.address(r.decode("ascii", "replace")) for r in found) if a}

    return decoded(temporary), decoded(permanent)


def text_diagnostic(message: Message) -> str:
    """The remote server's reply quoted in a plain-text bounce: the first line with an
    SMTP reply code, else the subject."""
    for text in msg.texts(message):
        found = _QUOTED_REPLY.search(text) or _REPLY.search(text)
        if found:
            start = found.start()
            # The reply and the lines folded under it.
            end = text.find("\n\n", start)
            return msg.clip(" ".join(text[start : end if end > 0 else None].split()))
    return msg.clip(msg.header(message, "Subject"))


def text_kind(diagnostic: str, permanent: bool = False) -> EventKind:
    """Hard or soft by the reply code quoted, else by what the detector said (soft
    when unsure: a soft bounce counts, a hard one suppresses at once)."""
    found = _STATUS.search(diagnostic) or _REPLY.search(diagnostic)
    if found:
        return "hard" if found.group(1) == "5" else "soft"
    return "hard" if permanent else "soft"


def read(message: Message) -> Report:
    """The failed recipients a bounce reports (none when it names nobody)."""
    failures, only_successes = _status_failures(message)
    temporary, permanent = _library_failures(message)
    known = {f.email for f in failures}
    extra = [(a, True) for a in sorted(permanent - known)]
    extra += [(a, False) for a in sorted(temporary - permanent - known)]
    if not failures and not extra:
        for value in message.get_all("X-Failed-Recipients") or []:
            extra += [(a, True) for a in map(msg.address, str(value).split(",")) if a]
    if extra:
        diagnostic = text_diagnostic(message)
        when = msg.date(msg.header(message, "Date"))
        for email_address, is_permanent in extra:
            kind = text_kind(diagnostic, is_permanent)
            failures.append(Failure(kind, email_address, diagnostic, when))
    return Report(failures, only_successes and not failures)
