"""Plain-text hygiene for anything that may reach a header or a title."""

from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"\s+")
# C0/C1 controls (CR, LF, NUL, ...) never belong in a title, a name or a header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(value: str, max_length: int | None = None) -> str:
    """Fold every run of white space or control characters into one space.

    Titles and names end up in Subject and To headers: a CR or LF there could
    start a new header, so they are removed at the door, not just at sending.
    """
    value = unicodedata.normalize("NFC", value)
    value = _WS.sub(" ", _CONTROL.sub(" ", value)).strip()
    if max_length is not None and len(value) > max_length:
        value = value[: max_length - 1].rstrip() + "\u2026"
    return value


def has_line_break(value: str) -> bool:
    return "\r" in value or "\n" in value
