"""Feed documents to entries, with feedparser (RSS 0.9x, 1.0, 2.0 and Atom).

Only the mapping lives here; validating and sanitising happen once, in
`newsletter.posts`, for every source alike. feedparser's own sanitiser and
relative-URI resolution are turned off: nh3 with our allow-list is the one
sanitiser, and relative links must resolve against the post's URL, not the feed's.
"""

from __future__ import annotations

import calendar
import datetime as dt
import html
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import feedparser

from newsletter.errors import InvalidInput
from newsletter.sanitize import html_to_text
from newsletter.tags import MAX_TAG_LENGTH, slugify
from newsletter.text import one_line

log = logging.getLogger(__name__)

FALLBACK_TITLE_LENGTH = 80
# Longer author fields are cut before feedparser reads them (see below).
MAX_AUTHOR_CHARS = 512


def _bounded_author_sync(original: Any) -> Any:
    """feedparser looks for an email address in every author, publisher and
    contributor field with a regular expression that takes quadratic time: one
    200,000-character <author> held a poll for half a minute, and a feed of the
    full size cap would hold a worker for hours. No name is that long, so the field
    is cut to MAX_AUTHOR_CHARS before that search runs."""

    def sync(self: Any, key: str = "author") -> Any:
        context = self._get_context()
        value = context.get(key)
        if isinstance(value, str) and len(value) > MAX_AUTHOR_CHARS:
            context[key] = value[:MAX_AUTHOR_CHARS]
        return original(self, key)

    sync.bounded = True  # type: ignore[attr-defined]
    return sync


_Mixin: Any = feedparser.mixin._FeedParserMixin
if not getattr(_Mixin._sync_author_detail, "bounded", False):
    _Mixin._sync_author_detail = _bounded_author_sync(_Mixin._sync_author_detail)


@dataclass
class FeedEntry:
    """One item of a feed, mapped to our fields but not yet validated."""

    guid: str
    url: str
    title: str
    tags: list[str]
    summary: str
    body_html: str
    author: str | None
    # None: the entry has no usable date, and the poll time stands in.
    published_at: dt.datetime | None
    # Position in the document (0 = first): feeds list newest first.
    position: int


@dataclass
class ParsedFeed:
    title: str
    version: str
    entries: list[FeedEntry]
    skipped: Counter[str] = field(default_factory=Counter)


def parse_feed(content: bytes, url: str, content_type: str | None = None) -> ParsedFeed:
    """The entries of a feed document, first occurrence of each guid only.

    Raises InvalidInput when the document is not RSS or Atom at all.
    """
    headers = {"content-type": content_type} if content_type else {}
    parsed: Any = feedparser.parse(
        content, response_headers=headers, sanitize_html=False, resolve_relative_uris=False
    )
    version = str(parsed.get("version") or "")
    problem = parsed.get("bozo_exception")
    if not version:
        reason = f" ({one_line(str(problem), 200)})" if problem else ""
        raise InvalidInput(f"{url} is not an RSS or Atom feed{reason}")
    if problem:
        log.warning("feed %s is not well-formed (%s); reading what could be read", url, problem)

    result = ParsedFeed(
        title=one_line(html_to_text(str(parsed.feed.get("title") or "")), 500),
        version=version,
        entries=[],
    )
    seen: set[str] = set()
    for position, raw in enumerate(parsed.entries):
        try:
            entry = _entry(raw, url, position)
        except Exception as exc:
            # One entry that cannot be read (a malformed link, say) never stops the rest.
            log.warning("feed %s: entry %d cannot be read (%s); skipped", url, position, exc)
            result.skipped["unreadable"] += 1
            continue
        if entry is None:
            result.skipped["no_link_or_id"] += 1
            continue
        if entry.guid in seen:
            log.info("feed %s repeats guid %r; the first one counts", url, entry.guid)
            result.skipped["duplicate_guid"] += 1
            continue
        seen.add(entry.guid)
        result.entries.append(entry)
    return result


def _entry(raw: Any, feed_url: str, position: int) -> FeedEntry | None:
    link = str(raw.get("link") or "").strip()
    raw_id = str(raw.get("id") or "").strip()
    if link:
        link = urljoin(feed_url, link)
    elif urlsplit(raw_id).scheme in {"http", "https"}:
        link = raw_id
    # Normalised exactly as `add_post` stores it, so lookups by guid match.
    guid = one_line(raw_id or link, 512)
    if not guid or not link:
        log.warning("feed %s: entry %d has neither a link nor an id; skipped", feed_url, position)
        return None

    body = _body(raw)
    summary = str(raw.get("summary") or "")
    return FeedEntry(
        guid=guid,
        url=link,
        title=_title(raw, summary or body, link),
        tags=_tags(raw),
        summary=summary,
        body_html=body,
        author=_author(raw),
        published_at=_date(raw, feed_url, guid),
        position=position,
    )


def _title(raw: Any, text_source: str, link: str) -> str:
    # Titles are plain text: markup in them (RSS titles are often escaped HTML) goes.
    title = one_line(html_to_text(str(raw.get("title") or "")), 500)
    if title:
        return title
    # Title-less items (allowed in RSS) are named by the start of their text.
    text = html_to_text(text_source)
    if text:
        return one_line(text, FALLBACK_TITLE_LENGTH)
    return link


def _tags(raw: Any) -> list[str]:
    names: list[str] = []
    for tag in raw.get("tags") or []:
        name = one_line(html_to_text(str(tag.get("label") or tag.get("term") or "")))
        name = name[:MAX_TAG_LENGTH]
        # A category of punctuation alone names nothing a reader could follow.
        if name and slugify(name):
            names.append(name)
    return names


def _body(raw: Any) -> str:
    contents = raw.get("content") or []
    for item in contents:
        if "html" in str(item.get("type") or ""):
            return str(item.get("value") or "")
    for item in contents:
        value = str(item.get("value") or "")
        if value:
            return "<p>" + html.escape(value) + "</p>"
    return ""


def _author(raw: Any) -> str | None:
    detail = raw.get("author_detail") or {}
    name = one_line(html_to_text(str(detail.get("name") or raw.get("author") or "")), 255)
    return name or None


def _date(raw: Any, feed_url: str, guid: str) -> dt.datetime | None:
    # dict.get: feedparser's own get() maps a missing `updated` to `published`, warning.
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        value = dict.get(raw, key)
        if isinstance(value, time.struct_time):
            try:
                return dt.datetime.fromtimestamp(calendar.timegm(value), dt.UTC)
            except (OverflowError, ValueError, OSError):
                break
    given = dict.get(raw, "published") or dict.get(raw, "updated") or dict.get(raw, "created")
    if given:
        log.warning(
            "feed %s: entry %r has an unreadable date %r; using the poll time",
            feed_url,
            guid,
            one_line(str(given), 100),
        )
    else:
        log.info("feed %s: entry %r has no date; using the poll time", feed_url, guid)
    return None
