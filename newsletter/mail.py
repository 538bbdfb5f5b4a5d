"""Building the bytes of one message, cheaply, from a shared digest and one reader.

The email package costs ~3.5 ms per message to build and serialise; this writes the
MIME structure directly (headers folded by the email package's policy, bodies
quoted-printable via binascii) for a fraction of that. Tests parse the output with
the email package to hold it to the same standard.
"""

from __future__ import annotations

import binascii
import datetime as dt
import secrets
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.utils import format_datetime

from newsletter.text import has_line_break

_POLICY = policy.SMTP.clone(max_line_length=78)


class HeaderInjection(ValueError):
    """A header value holds CR or LF: refused, never sent."""


@dataclass(frozen=True)
class OutgoingMessage:
    sender: str
    recipient: str
    data: bytes
    message_id: str


def new_message_id(from_address: str) -> str:
    domain = from_address.rpartition("@")[2] or "localhost"
    return f"<{secrets.token_hex(16)}@{domain}>"


def format_address(name: str, address: str) -> str:
    """A display-name address, RFC 2047-encoded when the name is not ASCII."""
    if has_line_break(name) or has_line_break(address):
        raise HeaderInjection("line break in an address")
    username, _, domain = address.rpartition("@")
    return str(Address(display_name=name, username=username, domain=domain))


def _header(name: str, value: str) -> bytes:
    if has_line_break(value):
        raise HeaderInjection(f"line break in the {name} header")
    line = f"{name}: {value}\r\n"
    if value.isascii() and len(line) <= 998:
        # Written as is: folding would RFC 2047-encode a long unbroken value such as
        # List-Unsubscribe's URL, and mail clients do not decode that header.
        return line.encode("ascii")
    folded: str = _POLICY.header_factory(name, value).fold(policy=_POLICY)
    return folded.encode("ascii")


def _qp(text: str) -> bytes:
    # CRLF line ends as SMTP wants them; b2a_qp keeps lines under 76 characters.
    body = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
    return binascii.b2a_qp(body, istext=True).replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")


def build_message(
    *,
    from_name: str,
    from_address: str,
    to_name: str,
    to_address: str,
    subject: str,
    text: str,
    html: str,
    message_id: str,
    headers: dict[str, str] | None = None,
    date: dt.datetime | None = None,
) -> OutgoingMessage:
    """A multipart/alternative message (text first, HTML preferred), UTF-8 throughout."""
    boundary = f"=_nl_{secrets.token_hex(12)}"
    all_headers = {
        "From": format_address(from_name, from_address),
        "To": format_address(to_name, to_address),
        "Subject": subject,
        "Date": format_datetime(date or dt.datetime.now(dt.UTC)),
        "Message-ID": message_id,
        "MIME-Version": "1.0",
        **(headers or {}),
        "Content-Type": f'multipart/alternative; boundary="{boundary}"',
    }
    parts = [_header(name, value) for name, value in all_headers.items()]
    sep = f"--{boundary}\r\n".encode()
    part_headers = b"Content-Transfer-Encoding: quoted-printable\r\n"
    chunks = [
        *parts,
        b"\r\n",
        sep,
        b'Content-Type: text/plain; charset="utf-8"\r\n',
        part_headers,
        b"\r\n",
        _qp(text),
        b"\r\n",
        sep,
        b'Content-Type: text/html; charset="utf-8"\r\n',
        part_headers,
        b"\r\n",
        _qp(html),
        b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return OutgoingMessage(
        sender=from_address, recipient=to_address, data=b"".join(chunks), message_id=message_id
    )
