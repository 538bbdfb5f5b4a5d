"""Each reader's copy of a shared digest, by substitution of `@@NL_FIELD@@` placeholders."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

from markupsafe import Markup

_PLACEHOLDER = re.compile(r"@@NL_([A-Z_]+)@@")

FIELDS = frozenset({"GREETING", "TAGS", "REASON", "PREFERENCES_URL", "UNSUBSCRIBE_URL"})


def placeholder(field: str) -> str:
    if field not in FIELDS:
        raise KeyError(f"unknown placeholder field {field}")
    return f"@@NL_{field}@@"


def defuse(value: object) -> object:
    """Break `@@` in content so a post cannot smuggle in a placeholder and, with it,
    the reader's address or unsubscribe link. Placeholders themselves are Markup."""
    if isinstance(value, str) and not isinstance(value, Markup) and "@@" in value:
        return value.replace("@@", "@\u2060@")
    return value


def fill(template: str, values: Mapping[str, str], *, escape: bool) -> str:
    """Replace every placeholder in one pass; HTML bodies get escaped values."""
    if escape:
        values = {k: html.escape(v, quote=True) for k, v in values.items()}
    # An unknown name is left as it is: text from a feed must never break a send.
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def split(template: str) -> tuple[list[str], list[str]]:
    """`template` cut at its placeholders: the literal texts around them and the field
    names in order, so that `fill` equals the literals joined with each field's value
    (or the placeholder itself, for a name without one) between them."""
    literals: list[str] = []
    fields: list[str] = []
    start = 0
    for match in _PLACEHOLDER.finditer(template):
        literals.append(template[start : match.start()])
        fields.append(match.group(1))
        start = match.end()
    literals.append(template[start:])
    return literals, fields
