"""HTML that comes in from outside is cleaned once, on the way in."""

from __future__ import annotations

import html
import re
from urllib.parse import urljoin, urlsplit

import nh3

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
    since an email has no base to resolve them against.
    """

    def absolute(element: str, attribute: str, value: str) -> str | None:
        if attribute in {"href", "src"}:
            value = urljoin(base_url, value.strip()) if base_url else value.strip()
            if urlsplit(value).scheme.lower() not in _SCHEMES:
                return None
        return value

    return nh3.clean(
        fragment,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes=_SCHEMES,
        attribute_filter=absolute,
        link_rel="noopener noreferrer",
        strip_comments=True,
    ).strip()


def html_to_text(fragment: str) -> str:
    """Readable text from an HTML fragment (for summaries): tags dropped, entities decoded."""
    cleaned = nh3.clean(fragment, tags=set(), strip_comments=True)
    return " ".join(html.unescape(_TAG_RE.sub(" ", cleaned)).split())
