"""Hypothesis profiles and the hostile alphabet shared by the property suites.

The default profile is derandomised so CI is repeatable; `HYPOTHESIS_PROFILE=deep`
runs many more random examples by hand (see docs/RELIABILITY.md).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

_COMMON = {
    "deadline": None,
    # Each test resets its own rows per example; the fixtures only provide services.
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
}
settings.register_profile("ci", max_examples=12, derandomize=True, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("deep", max_examples=300, **_COMMON)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# What attackers and broken systems actually send: controls, characters XML and
# HTML forbid, lone surrogates, bidi overrides, combining marks, full-width and
# look-alike letters, line breaks, template and placeholder syntax, formula
# prefixes, markup.
NASTY = [
    "\x00", "\x01", "\x08", "\x0b", "\x1b", "\x7f", "\x85", "\x9f", "\r", "\n", "\r\n", "\t",
    "\ufffe", "\uffff", "\ud800", "\udfff", "\U0010fffe", "\ufdd0", "\u2028", "\u00a0",
    "\u202e", "\u2066", "\u200f", "\u061c", "\u0301", "e\u0301", "\uff54\uff45\uff53\uff54", "\u0435\u0445\u0430mple", "\u0430",
    "@@", "@@NL_UNSUBSCRIBE_URL@@", "@@NL_GREETING@@", "{{ 7*7 }}", "{% if x %}", "${x}", "%s",
    "<mj-text>", "</mjml>", "<script>alert(1)</script>", "&#1;", "&amp;#1;", "&#xFFFE;",
    "]]>", '=HYPERLINK("x")', "+1", "-2", "@SUM(A1)", "'", '"', ";", ",", "\\", "\U0001f4a5",
]  # fmt: skip
HUGE = ["x" * 200_000, "a," * 5_000, "\u00e9" * 70_000, "9" * 5_000]


def hostile_text(max_pieces: int = 6, huge: bool = True) -> st.SearchStrategy[str]:
    """Short strings stitched from hostile pieces and random text, now and then huge."""
    pieces = st.one_of(st.sampled_from(NASTY), st.text(max_size=6))
    stitched = st.lists(pieces, max_size=max_pieces).map("".join)
    if not huge:
        return stitched
    return st.one_of(stitched, st.sampled_from(HUGE))
