"""Building the bytes of one message, cheaply, from a shared digest and one reader.

The email package costs ~3.5 ms per message to build and serialise; this writes the
MIME structure directly (headers by hand, folded by the email package's policy where
that is needed, bodies quoted-printable via binascii) for a fraction of that. Tests
parse the output with the email package to hold it to the same standard.

There is one layout, `layout`: a list of encoded byte chunks with `Hole`s where a
copy's own bytes go. `build_message` fills it at once for a one-off mail; a shared
digest keeps it (see `compose`) and each reader's copy fills only the holes, so the
40 KB of quoted-printable are encoded once per digest, not once per reader.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.utils import format_datetime

import idna

from newsletter.text import has_line_break, strip_bidi

_POLICY = policy.SMTP.clone(max_line_length=78)
# For an address whose local part is not ASCII: such a message can only travel with
# SMTPUTF8 (RFC 6531), and its headers are then plain UTF-8 (RFC 6532).
_UTF8_POLICY = policy.SMTPUTF8.clone(max_line_length=78)
# RFC 5322's recommended line length, and the longest line RFC 2045 allows in a
# quoted-printable body (without its CRLF).
_HEADER_LINE = 78
_QP_LINE = 76


class Unsendable(ValueError):
    """This message can never go as it is: recorded as failed for its reader alone."""


class HeaderInjection(Unsendable):
    """A header value holds CR or LF: refused, never sent."""


@dataclass(frozen=True)
class OutgoingMessage:
    # Envelope addresses as they go on the wire (IDNA domains as A-labels).
    sender: str
    recipient: str
    data: bytes
    message_id: str
    # A local part is not ASCII: only a server offering SMTPUTF8 can take it.
    smtputf8: bool = False
    # The delivery this is a reader's copy of (None for other mail): its bounce
    # address names it (VERP, see `verp`).
    delivery_id: int | None = None
    # `data` with every line that starts with a dot given a second one, as DATA
    # carries it (RFC 5321 section 4.5.2), when the builder could make it cheaply (a
    # compiled digest keeps its literals stuffed); None: the transport scans `data`.
    wire: bytes | None = None


def dot_lines_doubled(data: bytes) -> bytes:
    """`data` with a dot added to each line that starts with one, its first line too:
    what DATA carries (RFC 5321 section 4.5.2), but for the lone dot that ends it."""
    doubled = data.replace(b"\n.", b"\n..")
    return b"." + doubled if doubled.startswith(b".") else doubled


@dataclass(frozen=True, slots=True)
class Hole:
    """A place in a `layout` that each copy fills with bytes it encoded itself."""

    key: str


Chunk = bytes | Hole


def wire_address(address: str) -> tuple[str, bool]:
    """`address` with its domain as IDNA A-labels, and whether its local part needs SMTPUTF8.

    smtplib writes commands in ASCII: a U-label domain would raise mid-batch, and a
    non-ASCII local part is only legal after the server said SMTPUTF8.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise Unsendable(f"not an email address: {address!r}")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise Unsendable(f"the domain of {address!r} is not a valid IDNA name: {exc}") from None
    return f"{local}@{domain}", not local.isascii()


def new_message_id(from_address: str) -> str:
    domain = from_address.rpartition("@")[2] or "localhost"
    return f"<{secrets.token_hex(16)}@{domain}>"


def new_boundary() -> str:
    # "=_" cannot occur in quoted-printable text ("=" always starts an escape or a
    # soft line break there), so the boundary never collides with a body.
    return f"=_nl_{secrets.token_hex(12)}"


def format_address(name: str, address: str) -> str:
    """A display-name address as the wire has it (A-label domain), without bidi controls."""
    return _address(name, address)[0]


# A display name of atext and spaces, and a dot-atom local part, are written as they
# are; anything else goes through the email package, which quotes what needs it.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]*")
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+")


def _address(name: str, address: str) -> tuple[str, str, bool, str, str]:
    """The address as a header value, the envelope address, whether that needs
    SMTPUTF8, the display name shown (without bidi controls) and the addr-spec."""
    if has_line_break(name) or has_line_break(address):
        raise HeaderInjection("line break in an address")
    wire, utf8 = wire_address(address)
    shown = strip_bidi(name)
    username, _, domain = wire.rpartition("@")
    if _PLAIN_NAME.fullmatch(shown) and _PLAIN_LOCAL.fullmatch(username):
        return (f"{shown} <{wire}>" if shown else wire), wire, utf8, shown, wire
    value = Address(display_name=shown, username=username, domain=domain)
    return str(value), wire, utf8, shown, value.addr_spec


def header_line(name: str, value: str, utf8: bool = False) -> bytes:
    """One header, CRLF-terminated; CR or LF in the value is refused."""
    if has_line_break(value):
        raise HeaderInjection(f"line break in the {name} header")
    line = f"{name}: {value}\r\n"
    if value.isascii() and len(line) <= 998:
        # Written as is: folding would RFC 2047-encode a long unbroken value such as
        # List-Unsubscribe's URL, and mail clients do not decode that header.
        return line.encode("ascii")
    if utf8:
        utf8_folded: str = _UTF8_POLICY.header_factory(name, value).fold(policy=_UTF8_POLICY)
        return utf8_folded.encode("utf-8")
    folded: str = _POLICY.header_factory(name, value).fold(policy=_POLICY)
    return folded.encode("ascii")


def address_line(header: str, name: str, address: str) -> tuple[bytes, str, bool]:
    """A From or To header line, the envelope address and whether it needs SMTPUTF8.

    A non-ASCII display name is RFC 2047-encoded here rather than by the email
    package's folding, which parses the whole header again and costs about 1 ms, more
    than the rest of a reader's copy.
    """
    value, wire, utf8, shown, spec = _address(name, address)
    if utf8 or value.isascii():
        return header_line(header, value, utf8), wire, utf8
    # Only the display name is not ASCII: the address is (A-label domain, ASCII
    # local part).
    return _fold([f"{header}:", *_phrase_words(shown), f"<{spec}>"]), wire, utf8


# What an RFC 2047 "Q" encoded-word may hold unencoded inside a phrase (section 5(3)).
_Q_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!*+-/")
_Q_PHRASE = tuple(chr(b) if b in _Q_SAFE else "_" if b == 0x20 else f"={b:02X}" for b in range(256))
# Encoded text per word, "Q" characters or "B" bytes (56 base64 characters): with
# "=?utf-8?q?" and "?=" a word is at most 70 long, within RFC 2047's 75 and on one line
# after "From: ".
_WORD_Q = 58
_WORD_B = 42


def _q(text: str) -> str:
    return "".join([_Q_PHRASE[b] for b in text.encode("utf-8")])


def _phrase_words(text: str) -> list[str]:
    """`text` as encoded-words of whole characters (RFC 2047 section 5).

    One word if "Q" (readable for Latin names) or else "B" fits in one: a reader such
    as Python's email package shows a space where one word ends and the next begins.
    """
    q = _q(text)
    if len(q) <= _WORD_Q:
        return [f"=?utf-8?q?{q}?="]
    data = text.encode("utf-8")
    if len(data) <= _WORD_B or len(q) > (len(data) + 2) // 3 * 4:
        groups = _groups(text, _WORD_B, lambda char: len(char.encode("utf-8")))
        return [f"=?utf-8?b?{base64.b64encode(group.encode()).decode()}?=" for group in groups]
    groups = _groups(text, _WORD_Q, lambda char: len(_q(char)))
    return [f"=?utf-8?q?{_q(group)}?=" for group in groups]


def _groups(text: str, most: int, size: Callable[[str], int]) -> list[str]:
    """`text` cut into runs of whole characters, each of at most `most` in `size`."""
    groups: list[str] = []
    current = ""
    total = 0
    for char in text:
        cost = size(char)
        if current and total + cost > most:
            groups.append(current)
            current, total = "", 0
        current += char
        total += cost
    groups.append(current)
    return groups


def _fold(tokens: list[str]) -> bytes:
    """Header tokens joined by spaces, a new folded line wherever one would pass 78."""
    lines = [tokens[0]]
    for token in tokens[1:]:
        if len(lines[-1]) + 1 + len(token) > _HEADER_LINE:
            lines.append(" " + token)
        else:
            lines[-1] += " " + token
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


_date_cache: tuple[int, bytes] = (-1, b"")


def date_line(date: dt.datetime | None = None) -> bytes:
    """The Date header; for now, formatted once a second and shared by every copy."""
    global _date_cache
    if date is not None:
        return header_line("Date", format_datetime(date))
    second = int(time.time())
    cached = _date_cache
    if cached[0] != second:
        line = header_line("Date", format_datetime(dt.datetime.fromtimestamp(second, dt.UTC)))
        cached = _date_cache = (second, line)
    return cached[1]


def qp(text: str) -> bytes:
    """A whole body, quoted-printable, CRLF line ends, lines within 76 characters.

    A bare CR (old Mac line ends in a feed) is a line break too: binascii would write
    it raw, and SMTP allows CR only before LF.
    """
    body = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n").encode()
    return binascii.b2a_qp(body, istext=True).replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")


def qp_piece(text: str) -> bytes:
    """Part of a body, quoted-printable, ending where a line starts.

    Unless it ends with a line break, the piece ends with a soft line break, so the
    next piece, encoded on its own, starts on a line of its own: decoded, the pieces
    read as one text. The last line is cut first if the "=" would make it over 76.
    """
    if text.isascii() and text.isprintable() and "=" not in text:
        # Nothing to escape (a link, most names): only soft line breaks to add.
        data = text.encode("ascii")
        step = _QP_LINE - 1
        return b"".join([data[i : i + step] + b"=\r\n" for i in range(0, len(data), step)])
    encoded = qp(text)
    if not encoded or encoded.endswith(b"\r\n"):
        return encoded
    start = encoded.rfind(b"\n") + 1
    if len(encoded) - start >= _QP_LINE:
        cut = start + _QP_LINE - 1
        # Never between "=" and the two hex digits of its escape.
        if encoded[cut - 1] == 0x3D:
            cut -= 1
        elif encoded[cut - 2] == 0x3D:
            cut -= 2
        encoded = encoded[:cut] + b"=\r\n" + encoded[cut:]
    return encoded + b"=\r\n"


_PART_HEADERS = b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"


def layout(
    *,
    sender: bytes,
    to: Chunk,
    subject: Chunk,
    date: Chunk,
    message_id: Chunk,
    headers: Sequence[tuple[str, str | Hole]],
    boundary: str,
    text: Sequence[str | Hole],
    html: Sequence[str | Hole],
) -> list[Chunk]:
    """The one MIME layout of every message: a multipart/alternative, text first and
    HTML preferred, UTF-8 quoted-printable, as chunks with adjacent bytes merged.

    Header arguments are whole lines (`header_line`) or holes for a copy's lines;
    bodies alternate literal text and holes for `qp_piece` bytes. A body may not end
    with a hole (its soft line break would be the body's last line) nor a literal
    piece with a bare CR before a hole (the next piece could make it a line break).
    """
    chunks: list[Chunk] = [
        sender,
        to,
        subject,
        date,
        message_id,
        b"MIME-Version: 1.0\r\n",
        *(
            value if isinstance(value, Hole) else header_line(name, value)
            for name, value in headers
        ),
        header_line("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
        b"\r\n",
    ]
    for subtype, body in (("plain", text), ("html", html)):
        chunks.append(f'--{boundary}\r\nContent-Type: text/{subtype}; charset="utf-8"\r\n'.encode())
        chunks.append(_PART_HEADERS)
        chunks.extend(_body(body))
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return _merged(chunks)


def _body(pieces: Sequence[str | Hole]) -> list[Chunk]:
    pieces = [p for p in pieces if p != ""]
    if pieces and isinstance(pieces[-1], Hole):
        raise ValueError("a body must end with literal text")
    chunks: list[Chunk] = []
    for index, piece in enumerate(pieces):
        if isinstance(piece, Hole):
            chunks.append(piece)
        elif index == len(pieces) - 1:
            chunks.append(qp(piece))
        elif piece.endswith("\r"):
            raise ValueError("a bare CR before a hole")
        else:
            chunks.append(qp_piece(piece))
    return chunks


def _merged(chunks: list[Chunk]) -> list[Chunk]:
    merged: list[Chunk] = []
    run: list[bytes] = []
    for chunk in chunks:
        if isinstance(chunk, Hole):
            if run:
                merged.append(b"".join(run))
                run = []
            merged.append(chunk)
        elif chunk:
            run.append(chunk)
    if run:
        merged.append(b"".join(run))
    return merged


def fill_layout(chunks: Sequence[Chunk], values: Mapping[str, bytes]) -> bytes:
    """The message bytes: `chunks` with every hole replaced by its value."""
    return b"".join([values[c.key] if isinstance(c, Hole) else c for c in chunks])


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
    delivery_id: int | None = None,
) -> OutgoingMessage:
    """A one-off message in the one layout (text first, HTML preferred), UTF-8 throughout.

    Bidi controls are stripped from the Subject and display names: they could make
    what the reader sees differ from what was sent.
    """
    sender_line, sender, sender_utf8 = address_line("From", from_name, from_address)
    to_line, recipient, recipient_utf8 = address_line("To", to_name, to_address)
    chunks = layout(
        sender=sender_line,
        to=to_line,
        subject=header_line("Subject", strip_bidi(subject)),
        date=date_line(date),
        message_id=header_line("Message-ID", message_id),
        headers=list((headers or {}).items()),
        boundary=new_boundary(),
        text=[text],
        html=[html],
    )
    return OutgoingMessage(
        sender=sender,
        recipient=recipient,
        data=fill_layout(chunks, {}),
        message_id=message_id,
        smtputf8=sender_utf8 or recipient_utf8,
        delivery_id=delivery_id,
    )
