"""A reader's copy of a shared digest: their personal values and the message bytes.

Rendering happens once per distinct digest; everything here runs once per reader, so
it is kept to substitution and the few headers that differ between readers. The
digest itself is compiled once per process (`compiled`): its headers and both bodies
already encoded, with holes for the reader's values, so a copy is a join of bytes
plus a few small encoded values.
"""

from __future__ import annotations

import hmac
import html
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from itsdangerous import Signer, URLSafeTimedSerializer
from itsdangerous.signer import HMACAlgorithm

from newsletter import tokens
from newsletter.config import Settings, get_settings
from newsletter.delivery.mime import (
    Hole,
    OutgoingMessage,
    address_line,
    build_message,
    date_line,
    dot_lines_doubled,
    header_line,
    layout,
    new_boundary,
    qp_piece,
)
from newsletter.delivery.personalise import fill, split
from newsletter.models import Cadence
from newsletter.text import one_line, strip_bidi
from subscribers.cadence import schedule_text


class Named(Protocol):
    @property
    def name(self) -> str: ...


class Reader(Protocol):
    """What a copy needs of its reader: a Subscriber row, or the sender's lighter load."""

    @property
    def name(self) -> str: ...
    @property
    def email(self) -> str: ...
    @property
    def uid(self) -> str: ...
    @property
    def cadence(self) -> Cadence: ...
    @property
    def timezone(self) -> str: ...
    @property
    def send_hour(self) -> int: ...
    @property
    def send_weekday(self) -> int | None: ...
    @property
    def tags(self) -> Sequence[Named]: ...


class DigestText(Protocol):
    @property
    def subject(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def html(self) -> str: ...


class Addressed(Protocol):
    @property
    def id(self) -> int | None: ...
    @property
    def message_id(self) -> str: ...


# Compiled digests kept per process, least recently used dropped first. A send batch
# holds one digest and a sender works through a few at a time. Each entry holds its
# rendering (the key) and its encoded bytes: about 0.1 MB for a 40 KB digest (0.2 MB
# if an emoji makes Python store the text 4 bytes a character), so 6-13 MB for 64.
CACHE_SIZE = 64
# Subject lines kept per compiled digest (one per distinct set of tag names).
_SUBJECTS = 256


def tag_list(names: Sequence[str], most: int = 3) -> str:
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])} and {len(names) - most} more"


@lru_cache(maxsize=1024)
def _schedule(cadence: Cadence, send_hour: int, weekday: int, timezone: str) -> str:
    return schedule_text(cadence, send_hour, weekday, timezone)


@dataclass(frozen=True)
class _LinkSigner:
    base_url: str
    serializer: URLSafeTimedSerializer
    preferences: Signer
    unsubscribe: Signer

    def links(self, uid: str) -> tuple[str, str]:
        """The preferences and unsubscribe links, as `tokens.link` makes them.

        The payload is serialised once for both, and the signers are built once per
        process, not twice per reader: about a third of the cost of two `link` calls.
        """
        payload = self.serializer.dump_payload(uid)
        preferences = self.preferences.sign(payload).decode("ascii")
        unsubscribe = self.unsubscribe.sign(payload).decode("ascii")
        return (
            f"{self.base_url}/preferences/{preferences}",
            f"{self.base_url}/unsubscribe/{unsubscribe}",
        )


class _OneShotHMAC(HMACAlgorithm):
    """The same HMAC through `hmac.digest`, OpenSSL's one-shot call: itsdangerous's
    `hmac.new` with a digest function runs Python's slow HMAC set-up per signature."""

    def __init__(self, digest_method: Any) -> None:
        super().__init__(digest_method)
        self.name: str = digest_method().name

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return hmac.digest(key, value, self.name)


def _signer(purpose: tokens.Purpose) -> tuple[URLSafeTimedSerializer, Signer]:
    serializer = tokens.serializer(purpose)
    signer = serializer.make_signer(serializer.salt)
    signer.algorithm = _OneShotHMAC(signer.digest_method)
    return serializer, signer


@lru_cache(maxsize=4)
def _link_signer(secret_key: str, base_url: str) -> _LinkSigner:
    # tokens owns the serializers (secret, salt per purpose); the cache key holds what
    # they are made from, so a changed secret or base URL gets new ones.
    serializer, preferences = _signer("preferences")
    _, unsubscribe = _signer("unsubscribe")
    return _LinkSigner(
        base_url=base_url, serializer=serializer, preferences=preferences, unsubscribe=unsubscribe
    )


def personal_values(subscriber: Reader, settings: Settings) -> dict[str, str]:
    """The per-reader text a shared digest is filled with."""
    names = [t.name for t in subscriber.tags]
    # A reader not yet stored (a preview's) has no weekday until its default applies.
    weekday = subscriber.send_weekday
    schedule = _schedule(
        subscriber.cadence,
        subscriber.send_hour,
        settings.default_send_weekday if weekday is None else weekday,
        subscriber.timezone,
    )
    current = get_settings()  # what tokens signs with
    preferences, unsubscribe = _link_signer(current.secret_key, current.public_base_url).links(
        subscriber.uid
    )
    return {
        "GREETING": f"Hi {subscriber.name}," if subscriber.name else "Hello,",
        "TAGS": tag_list(names),
        "REASON": (
            f"You get this email because {subscriber.email} subscribed to {settings.site_name} "
            f"for posts tagged {', '.join(names)}, {schedule}."
        ),
        "PREFERENCES_URL": preferences,
        "UNSUBSCRIBE_URL": unsubscribe,
    }


def digest_headers(unsubscribe: str, settings: Settings) -> dict[str, str]:
    """The list headers every copy of a digest carries (a test copy too)."""
    domain = settings.from_.rpartition("@")[2] or "localhost"
    return {
        "List-Unsubscribe": f"<{unsubscribe}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "List-Id": f"{one_line(settings.site_name)} <digest.{domain}>",
        "Precedence": "bulk",
        "Auto-Submitted": "auto-generated",
    }


@dataclass(frozen=True)
class CompiledDigest:
    """A digest's message with holes: every byte that is the same for all readers is
    encoded once, here; a copy encodes only its own values (`copy`).

    Immutable once built, but for a bounded cache of Subject lines, so any number of
    threads may make copies at once.
    """

    # The layout's bytes, with b"" where a hole is, and each hole's place and key.
    literals: tuple[bytes, ...]
    holes: tuple[tuple[int, str], ...]
    sender: str
    sender_utf8: bool
    subject: str
    text_fields: frozenset[str]
    html_fields: frozenset[str]
    # The literals as DATA carries them: every line that starts with a dot given a
    # second one, once per digest rather than a scan of each 24 KB copy.
    wire_literals: tuple[bytes, ...] = ()
    _subjects: dict[str, bytes] = field(default_factory=dict, compare=False)

    def copy(
        self,
        to_name: str,
        to_address: str,
        message_id: str,
        values: Mapping[str, str],
        delivery_id: int | None = None,
    ) -> OutgoingMessage:
        to, recipient, recipient_utf8 = address_line("To", to_name, to_address)
        unsubscribe = values["UNSUBSCRIBE_URL"]
        filled = {
            "To": to,
            "Subject": self._subject_line(values),
            "Date": date_line(),
            "Message-ID": header_line("Message-ID", message_id),
            "List-Unsubscribe": header_line("List-Unsubscribe", f"<{unsubscribe}>"),
        }
        # A value the HTML escaping leaves as it is (a link, most names) is encoded once.
        encoded: dict[str, bytes] = {}
        for name in self.text_fields:
            value = values.get(name)
            text = f"@@NL_{name}@@" if value is None else value
            filled["text:" + name] = encoded[text] = qp_piece(text)
        for name in self.html_fields:
            value = values.get(name)
            shown = f"@@NL_{name}@@" if value is None else html.escape(value, quote=True)
            piece = encoded.get(shown)
            filled["html:" + name] = qp_piece(shown) if piece is None else piece
        parts = list(self.literals)
        for index, key in self.holes:
            parts[index] = filled[key]
        return OutgoingMessage(
            sender=self.sender,
            recipient=recipient,
            data=b"".join(parts),
            message_id=message_id,
            smtputf8=self.sender_utf8 or recipient_utf8,
            delivery_id=delivery_id,
            wire=self._wire(filled),
        )

    def _wire(self, filled: Mapping[str, bytes]) -> bytes | None:
        """The copy dot-stuffed, from the stuffed literals. They were stuffed as if
        each started a line, which holds while every piece ends one (a header line,
        quoted-printable with its line break); a piece that does not, or that holds a
        dot line itself, leaves the stuffing to the transport."""
        if not self.wire_literals or any(
            not p.endswith(b"\n") or p.startswith(b".") or b"\n." in p for p in filled.values()
        ):
            return None
        parts = list(self.wire_literals)
        for index, key in self.holes:
            parts[index] = filled[key]
        return b"".join(parts)

    def _subject_line(self, values: Mapping[str, str]) -> bytes:
        subject = fill(self.subject, values, escape=False)
        line = self._subjects.get(subject)
        if line is None:
            line = header_line("Subject", strip_bidi(one_line(subject, 300)))
            if len(self._subjects) < _SUBJECTS:
                self._subjects[subject] = line
        return line


def compile_digest(
    subject: str, text: str, html_body: str, settings: Settings
) -> CompiledDigest | None:
    """The compiled form of a digest, or None when it cannot be cut into pieces that
    decode to exactly what `fill` gives (a body ending with a placeholder, or a bare
    CR before one): such a digest is built whole for each reader instead."""
    sender_line, sender, sender_utf8 = address_line("From", settings.from_name, settings.from_)
    headers: list[tuple[str, str | Hole]] = [
        (name, Hole(name) if name == "List-Unsubscribe" else value)
        for name, value in digest_headers("", settings).items()
    ]
    text_pieces, text_fields = _pieces(text, "text:")
    html_pieces, html_fields = _pieces(html_body, "html:")
    try:
        chunks = layout(
            sender=sender_line,
            to=Hole("To"),
            subject=Hole("Subject"),
            date=Hole("Date"),
            message_id=Hole("Message-ID"),
            headers=headers,
            boundary=new_boundary(),
            text=text_pieces,
            html=html_pieces,
        )
    except ValueError:
        return None
    literals = tuple(b"" if isinstance(c, Hole) else c for c in chunks)
    return CompiledDigest(
        literals=literals,
        holes=tuple((i, c.key) for i, c in enumerate(chunks) if isinstance(c, Hole)),
        sender=sender,
        sender_utf8=sender_utf8,
        subject=subject,
        text_fields=frozenset(text_fields),
        html_fields=frozenset(html_fields),
        wire_literals=tuple(dot_lines_doubled(literal) for literal in literals),
    )


def _pieces(body: str, prefix: str) -> tuple[list[str | Hole], list[str]]:
    literals, fields = split(body)
    pieces: list[str | Hole] = [literals[0]]
    for name, literal in zip(fields, literals[1:], strict=True):
        pieces += [Hole(prefix + name), literal]
    return pieces, fields


class _Uncompilable:
    """Cached for a digest `compile_digest` refused, so it is not tried per reader."""


_UNCOMPILABLE = _Uncompilable()
_cache: OrderedDict[tuple[str, ...], CompiledDigest | _Uncompilable] = OrderedDict()
_cache_lock = threading.Lock()


def compiled(digest: DigestText, settings: Settings) -> CompiledDigest | None:
    """The digest's compiled form, from this process's LRU of `CACHE_SIZE` digests.

    The key is the digest's content and the settings it is written with, not its id:
    a digest whose text changed, or a From address that changed, never reuses an old
    compilation. Python caches a string's hash, so a batch's lookups cost a comparison.
    """
    key = (
        digest.subject,
        digest.text,
        digest.html,
        settings.from_name,
        settings.from_,
        settings.site_name,
    )
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
    if found is None:
        # Built outside the lock: two threads may both build a new digest, one wins.
        found = compile_digest(digest.subject, digest.text, digest.html, settings)
        found = _UNCOMPILABLE if found is None else found
        with _cache_lock:
            _cache[key] = found
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return None if isinstance(found, _Uncompilable) else found


def message_for(
    delivery: Addressed,
    digest: DigestText,
    subscriber: Reader,
    settings: Settings,
    values: dict[str, str] | None = None,
) -> OutgoingMessage:
    """A reader's copy: substitution into the shared rendering, never a new rendering.

    `values` replaces the reader's personal values (a preview's sample links).
    """
    values = values or personal_values(subscriber, settings)
    template = compiled(digest, settings)
    # A CR in a value could pair with an LF after it into one line break; whole, the
    # text is normalised as one, so such a copy is built whole.
    if template is not None and not any("\r" in v for v in values.values()):
        return template.copy(
            subscriber.name, subscriber.email, delivery.message_id, values, delivery.id
        )
    return whole_message(delivery, digest, subscriber, settings, values)


def whole_message(
    delivery: Addressed,
    digest: DigestText,
    subscriber: Reader,
    settings: Settings,
    values: dict[str, str],
) -> OutgoingMessage:
    """A copy built whole: substitution into the shared rendering, then the MIME writer
    from scratch. The fallback for a digest that cannot be compiled, and the measure
    the compiled path is held to."""
    return build_message(
        from_name=settings.from_name,
        from_address=settings.from_,
        to_name=subscriber.name,
        to_address=subscriber.email,
        subject=one_line(fill(digest.subject, values, escape=False), 300),
        text=fill(digest.text, values, escape=False),
        html=fill(digest.html, values, escape=True),
        message_id=delivery.message_id,
        headers=digest_headers(values["UNSUBSCRIBE_URL"], settings),
        delivery_id=delivery.id,
    )
