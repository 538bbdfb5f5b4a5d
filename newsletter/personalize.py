"""Each reader's copy of a shared digest, by substitution of `@@NL_FIELD@@` placeholders."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

_PLACEHOLDER = re.compile(r"@@NL_([A-Z_]+)@@")

FIELDS = frozenset({"GREETING", "TAGS", "REASON", "PREFERENCES_URL", "UNSUBSCRIBE_URL"})


def placeholder(field: str) -> str:
    if field not in FIELDS:
        raise KeyError(f"unknown placeholder field {field}")
    return f"@@NL_{field}@@"


def fill(template: str, values: Mapping[str, str], *, escape: bool) -> str:
    """Replace every placeholder in one pass; HTML bodies get escaped values."""
    if escape:
        values = {k: html.escape(v, quote=True) for k, v in values.items()}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
