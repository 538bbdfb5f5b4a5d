"""Reading pieces out of a report message, whatever shape its sender gave it.

Everything here takes `email.message.Message` (the compat32 policy flufl.bounce
reads) and never raises on a malformed message: a part it cannot read is skipped.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from collections.abc import Iterator
from email.message import Message
from email.utils import parseaddr, parsedate_to_datetime

from newsletter.config import Settings
from newsletter.delivery.verp import delivery_id_from

# Diagnostics and raw fields are kept, not whole messages.
MAX_DIAGNOSTIC_CHARS = 2000
_FOLDING = re.compile(r"\s*\r?\n[ \t]+")
_MESSAGE_ID = re.compile(r"^message-id:\s*(<[^<>\s]{3,250}>)", re.IGNORECASE | re.MULTILINE)
# Headers where an MTA puts the address a message was delivered to: the VERP address.
_RECIPIENT_HEADERS = ("X-Original-To", "Delivered-To", "Envelope-To", "X-Envelope-To", "To")


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def header(message: Message, name: str) -> str:
    """A header's value on one line, "" when absent or unreadable."""
    value = message.get(name)
    if value is None:
        return ""
    return unfold(str(value))


def unfold(text: str) -> str:
    return _FOLDING.sub(" ", text).strip()


def clip(text: str) -> str:
    return text[:MAX_DIAGNOSTIC_CHARS]


def address(value: str) -> str | None:
    """The address in a header or a DSN field ("rfc822; ana@x", "<ana@x>", "Ana <ana@x>"),
    None when there is none (a provider may redact it)."""
    value = unfold(value)
    if ";" in value:
        value = value.split(";", 1)[1]
    found = parseaddr(value.strip())[1].strip().strip("<>")
    if "@" not in found or found.startswith("@") or found.endswith("@") or " " in found:
        return None
    return found.lower()


def date(value: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(unfold(value))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def text_of(part: Message) -> str:
    """A part's decoded text ("" for a part that will not decode)."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # a broken transfer encoding: nothing to read
        return ""
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def texts(message: Message) -> Iterator[str]:
    """The decoded text of each non-multipart part, headers of inner messages included."""
    for part in message.walk():
        if part.is_multipart():
            continue
        if part.get_content_maintype() == "text":
            yield text_of(part)


def original(message: Message) -> Message | None:
    """The returned copy of the original message (message/rfc822 or its headers as
    text/rfc822-headers), as the report carries it."""
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        elif kind == "text/rfc822-headers":
            return email.message_from_string(text_of(part), policy=email.policy.compat32)
    return None


def original_message_id(message: Message) -> str | None:
    """The Message-ID of the message the report is about: from the returned copy, or
    any Message-ID line quoted in the text (a plain-text bounce inlines the copy)."""
    returned = original(message)
    if returned is not None:
        found = header(returned, "Message-ID")
        if found:
            return found
    own = header(message, "Message-ID")
    for text in texts(message):
        for match in _MESSAGE_ID.finditer(text):
            if match.group(1) != own:
                return match.group(1)
    return None


def _header_values(message: Message) -> Iterator[str]:
    for name in _RECIPIENT_HEADERS:
        for value in message.get_all(name) or []:
            yield str(value)
    for _name, value in message.items():
        yield str(value)


def delivery_from_verp(message: Message, settings: Settings) -> int | None:
    """The delivery named by a VERP token: in the address the report was delivered
    to, anywhere in its headers, in the returned copy's, or anywhere in its text
    (a mangled DSN still quotes the envelope sender somewhere)."""
    if not settings.bounce_address:
        return None
    returned = original(message)
    sources: list[Iterator[str]] = [_header_values(message)]
    if returned is not None:
        sources.append(_header_values(returned))
    sources.append(texts(message))
    for source in sources:
        for text in source:
            found = delivery_id_from(text, settings)
            if found is not None:
                return found
    return None
