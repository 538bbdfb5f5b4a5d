"""VERP: each message's envelope sender names its delivery, so a bounce finds its row.

With `NEWSLETTER_BOUNCE_ADDRESS=bounces@news.example.org`, delivery 1234 is sent as
`bounces+ya-3f9c2a71e0d4@news.example.org`: the delivery id in base 36, a hyphen and
48 bits of an HMAC of it under the secret key. The token holds no address in clear
and cannot be forged to blame another delivery; it is lower case and hyphen-free
apart from the separator, so an MTA that lower-cases local parts or a DSN that wraps
the address still gives it back intact.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from newsletter.config import Settings

# 12 hex digits: 48 bits, so guessing a valid token for a given id takes 2**47 tries.
_MAC_CHARS = 12
_TOKEN = re.compile(rf"([0-9a-z]{{1,13}})-([0-9a-f]{{{_MAC_CHARS}}})")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int) -> str:
    if number < 0:
        raise ValueError("a delivery id is never negative")
    out = ""
    while True:
        number, digit = divmod(number, 36)
        out = _DIGITS[digit] + out
        if not number:
            return out


def _mac(secret_key: str, delivery_id: int) -> str:
    digest = hmac.new(
        secret_key.encode("utf-8"), f"verp:{delivery_id}".encode("ascii"), hashlib.sha256
    )
    return digest.hexdigest()[:_MAC_CHARS]


def token(delivery_id: int, settings: Settings) -> str:
    """The token naming `delivery_id`, as it goes after the `+`."""
    return f"{_base36(delivery_id)}-{_mac(settings.secret_key, delivery_id)}"


def envelope_sender(settings: Settings, delivery_id: int | None = None) -> str | None:
    """The envelope sender (MAIL FROM) for a message, or None to keep the From address.

    None while NEWSLETTER_BOUNCE_ADDRESS is unset. Mail that is not a delivery (a
    confirmation, a test copy) goes to the bare bounce address: its bounce is still
    read, and matched by the recipient the report names.
    """
    address = settings.bounce_address
    if not address:
        return None
    if delivery_id is None:
        return address
    local, _, domain = address.rpartition("@")
    return f"{local}+{token(delivery_id, settings)}@{domain}"


def delivery_id_from(address: str, settings: Settings) -> int | None:
    """The delivery a bounce was addressed to, from its recipient address (or any text
    holding one), or None when no genuine token is in it."""
    configured = settings.bounce_address
    if not configured:
        return None
    local = configured.rpartition("@")[0].lower()
    text = address.lower()
    start = 0
    while True:
        at = text.find(local + "+", start)
        if at < 0:
            return None
        start = at + 1
        found = _TOKEN.match(text, at + len(local) + 1)
        if found is None:
            continue
        delivery_id = int(found.group(1), 36)
        if hmac.compare_digest(found.group(2), _mac(settings.secret_key, delivery_id)):
            return delivery_id
