"""Splitting URLs that come from outside without letting a malformed one crash a caller."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from newsletter.errors import InvalidInput


def split_url(url: str, what: str = "URL") -> SplitResult:
    """`urlsplit`, with a malformed URL as InvalidInput instead of a bare ValueError.

    urlsplit raises ValueError for an unclosed IPv6 bracket (`http://[::1`), and
    reading `.port` does for a port that is not a number; left alone, either would
    end a whole command or request instead of refusing one value.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError as exc:
        raise InvalidInput(f"{what} is not a well-formed URL ({exc}): {url[:200]!r}") from None
    return parts
