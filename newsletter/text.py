"""Plain-text hygiene for anything that comes in from outside or may reach a header.

Every way in (feeds, webhook, API, CLI, CSV, forms) passes text through these
functions, so nothing stored can later break a rendering or a header.
"""

from __future__ import annotations

import re
import unicodedata

from newsletter.errors import InvalidInput

_WS = re.compile(r"\s+")
# C0/C1 controls (CR, LF, NUL, ...) never belong in a title, a name or a header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# What XML 1.0 and HTML forbid in a document: C0 controls but tab, CR and LF; DEL
# and the C1 controls; lone surrogates; and the noncharacters (U+FDD0-U+FDEF and
# the last two code points of every plane). MRML refuses a template holding any of
# them, so one such character in one post would stop that digest from rendering.
_FORBIDDEN = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17))
    + "]"
)
# Bidirectional embeddings, overrides and isolates: in a Subject or a display name
# they reorder what the reader sees (an address or a link that reads backwards).
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
_UNSAFE = re.compile(f"{_FORBIDDEN.pattern}|{_CONTROL.pattern}|{_BIDI.pattern}")


def clean_text(value: str) -> str:
    """`value` without the characters XML 1.0 and HTML forbid; line breaks are kept."""
    return _FORBIDDEN.sub("", value)


def strip_bidi(value: str) -> str:
    """`value` without bidirectional control characters (for headers and one-line text)."""
    return _BIDI.sub("", value)


def one_line(value: str, max_length: int | None = None) -> str:
    """Fold every run of white space or control characters into one space.

    Titles and names end up in Subject and To headers: a CR or LF there could
    start a new header, and a bidi override could disguise what the reader sees,
    so they are removed at the door, not just at sending.
    """
    value = strip_bidi(unicodedata.normalize("NFC", clean_text(value)))
    value = _WS.sub(" ", _CONTROL.sub(" ", value)).strip()
    if max_length is not None and len(value) > max_length:
        value = value[: max_length - 1].rstrip() + "\u2026"
    return value


def first_unsafe_char(value: str) -> str | None:
    """The first character of `value` no URL or header may hold, as "U+0001"; else None.

    That is anything `clean_text` or `one_line` would remove or fold: forbidden
    characters, control characters and bidi controls (RFC 3987 bars them from IRIs).
    """
    match = _UNSAFE.search(value)
    return f"U+{ord(match.group()):04X}" if match else None


def has_line_break(value: str) -> bool:
    return "\r" in value or "\n" in value


def searchable(value: str, what: str) -> str:
    """`value` as a search term or cursor, or InvalidInput if it holds a character no
    address or name holds (a NUL, a control character): refused here, in words,
    before PostgreSQL refuses it with an error."""
    bad = first_unsafe_char(value)
    if bad:
        raise InvalidInput(f"the {what} holds {bad}, which no address or name holds")
    return value


def trim_words(value: str, max_chars: int) -> str:
    """`value` cut at a word boundary to at most `max_chars` characters, the ellipsis
    that says so included; a text already that short is returned as it is.

    A single word longer than the limit is cut inside the word: the limit is what keeps
    a digest under the size at which mail clients clip it.
    """
    value = value.strip()
    if len(value) <= max_chars:
        return value
    cut = value[: max_chars - 1]
    mid_word = not (value[max_chars - 1].isspace() or cut[-1].isspace())
    if mid_word and any(c.isspace() for c in cut):
        cut = cut.rsplit(None, 1)[0]
    return (cut.rstrip(_TRAILING) or cut) + "\u2026"


# Punctuation and dashes a cut should not leave before its ellipsis.
_TRAILING = " \t\n,.;:!?\u2026-\u2013\u2014"
