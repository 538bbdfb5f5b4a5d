"""HTML that comes in from outside is cleaned once, on the way in."""

from __future__ import annotations

import html
import re
from urllib.parse import urljoin, urlsplit

import nh3

from newsletter.text import clean_text

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "em", "figcaption", "figure", "h1", "h2",
    "h3", "h4", "h5", "h6", "hr", "i", "img", "li", "ol", "p", "pre", "s", "small", "span",
    "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
}
_SCHEMES = {"http", "https", "mailto"}
_TAG_RE = re.compile(r"<[^>]*>")


def clean_html(fragment: str, base_url: str | None = None) -> str:
    """An allow-listed copy: no script, style, iframe, event handler or javascript:/data: URL.

    Relative links and images are made absolute against `base_url` (the post's URL),
    since an email has no base to resolve them against. Characters XML 1.0 forbids
    are dropped before and after: nh3 turns a reference like `&#1;` into the
    character itself, which would stop the digest holding it from rendering.
    """

    def absolute(element: str, attribute: str, value: str) -> str | None:
        if attribute in {"href", "src"}:
            try:
                value = urljoin(base_url, value.strip()) if base_url else value.strip()
                scheme = urlsplit(value).scheme.lower()
            except ValueError:
                # A malformed link (an unclosed IPv6 bracket, say) is dropped, not fatal.
                return None
            if scheme not in _SCHEMES:
                return None
        return value

    cleaned = nh3.clean(
        clean_text(fragment),
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes=_SCHEMES,
        attribute_filter=absolute,
        link_rel="noopener noreferrer",
        strip_comments=True,
    )
    return clean_text(cleaned).strip()


def html_to_text(fragment: str) -> str:
    """Readable text from an HTML fragment (for summaries): tags dropped, entities decoded.

    Cleaned after decoding: `&amp;#1;` only becomes U+0001 once unescaped.
    """
    cleaned = nh3.clean(clean_text(fragment), tags=set(), strip_comments=True)
    return " ".join(clean_text(html.unescape(_TAG_RE.sub(" ", cleaned))).split())
