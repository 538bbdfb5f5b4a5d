"""Real feed documents mapped to entries: identity, tags, body, dates, encodings, junk."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from newsletter.errors import InvalidInput
from newsletter.feeds.parsing import parse_feed
from tests.newsletter.feeds.conftest import fixture

URL = "https://blog.example.org/tag/respublica/feed/"


def test_wordpress_rss2_tag_feed() -> None:
    feed = parse_feed(fixture("wordpress-tag.xml"), URL, "application/rss+xml; charset=UTF-8")
    assert feed.version == "rss20" and feed.title == "ResPublica \u2013 Tribuna P\u00fablica"
    first, second, third = feed.entries
    assert first.guid == "https://blog.example.org/?p=1042"
    assert first.url == "https://blog.example.org/2026/03/02/orcamento-saude/"
    assert first.title == "Or\u00e7amento: o que muda na sa\u00fade"
    assert first.tags == ["ResPublica", "Public Services", "Sa\u00fade"]
    assert first.author == "Marta Reis"
    assert first.published_at == dt.datetime(2026, 3, 2, 9, 12, 44, tzinfo=dt.UTC)
    # content:encoded is the body; the description is the summary.
    assert "<strong>mudan\u00e7as</strong>" in first.body_html
    assert first.summary.startswith("O or\u00e7amento para 2026")
    assert second.title == "Transportes p\u00fablicos & a cidade"
    assert [e.position for e in feed.entries] == [0, 1, 2]
    assert third.tags == ["ResPublica", "Politics"]


def test_atom_feed() -> None:
    feed = parse_feed(fixture("atom.xml"), "https://hugo.example.net/tags/climate/index.xml")
    assert feed.version == "atom10"
    heat, glaciers = feed.entries
    assert heat.guid == "tag:hugo.example.net,2026-03-01:/posts/heat-city"
    # An HTML title becomes plain text.
    assert heat.title == "Heat & the city"
    assert heat.tags == ["Climate", "Urban Planning"]  # the label wins over the term
    assert heat.published_at == dt.datetime(2026, 3, 1, 11, 0, tzinfo=dt.UTC)
    assert heat.author == "Ana Sousa"
    assert '<img src="img/map.png"' in heat.body_html
    # No <published>: <updated> stands in; xhtml content is HTML.
    assert glaciers.published_at == dt.datetime(2026, 2, 20, 9, 0, tzinfo=dt.UTC)
    assert glaciers.body_html == '<p>Ice, <a href="/data/">data</a>.</p>'


def test_rss_1_0_and_0_91() -> None:
    rdf = parse_feed(fixture("rss1.rdf"), "https://rdf.example.org/index.rdf")
    assert rdf.version == "rss10"
    [item] = rdf.entries
    assert (item.guid, item.tags, item.author) == (
        "https://rdf.example.org/posts/1",
        ["Climate"],
        "Rita Alves",
    )
    old = parse_feed(fixture("rss091.xml"), "https://old.example.org/rss.xml")
    assert old.version.startswith("rss091")
    [item] = old.entries
    # No guid: the link is the identity.
    assert item.guid == item.url == "https://old.example.org/items/1"


def test_duplicate_guids_first_one_counts() -> None:
    feed = parse_feed(fixture("duplicate-guids.xml"), "https://dupes.example.org/feed/")
    assert [(e.guid, e.title) for e in feed.entries] == [
        ("https://dupes.example.org/a/", "First spelling"),
        ("https://dupes.example.org/b/", "No guid, identified by its link"),
    ]
    assert feed.skipped["duplicate_guid"] == 2


def test_missing_and_broken_dates_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="newsletter.feeds.parsing")
    feed = parse_feed(fixture("no-dates.xml"), "https://undated.example.org/feed/")
    assert [e.published_at for e in feed.entries] == [None, None]
    # The raw guid is kept, not resolved against the feed's URL.
    assert [e.guid for e in feed.entries] == ["undated-1", "undated-2"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("'undated-1' has no date; using the poll time" in m for m in messages)
    assert any(
        "'undated-2' has an unreadable date 'the day after tomorrow'; using the poll time" in m
        for m in messages
    )


@pytest.mark.parametrize("content_type", [None, "text/xml", "application/xml; charset=utf-8"])
def test_declared_iso_8859_1_is_decoded(content_type: str | None) -> None:
    feed = parse_feed(fixture("latin1.xml"), "https://latin1.example.org/feed/", content_type)
    assert feed.title == "Caf\u00e9 Pol\u00edtico"
    [item] = feed.entries
    assert item.title == "Educa\u00e7\u00e3o e sa\u00fade em Set\u00fabal"
    assert item.tags == ["Educa\u00e7\u00e3o", "Sa\u00fade P\u00fablica"]
    assert item.author == "Jos\u00e9 Gon\u00e7alves"


@pytest.mark.parametrize(
    "document",
    [fixture("not-xml.html"), b"", b"\x00\x01\x02 binary junk", b'{"items": []}'],
)
def test_not_a_feed_is_refused(document: bytes) -> None:
    with pytest.raises(InvalidInput, match="is not an RSS or Atom feed"):
        parse_feed(document, "https://blog.example.org/feed/")


def test_hostile_fields_are_plain_text() -> None:
    feed = parse_feed(fixture("hostile.xml"), "https://hostile.example.org/feed/")
    [item] = feed.entries
    assert item.title == "Totally normal post"
    assert item.author is not None and "\n" not in item.author and "<" not in item.author


def test_a_huge_author_never_reaches_feedparsers_quadratic_email_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """feedparser searches every author for an email address with a regular expression
    that is quadratic in the field's length: a 200,000-character author held a poll for
    half a minute. The field is cut first, so that search only ever sees a short one."""
    import re

    import feedparser.mixin

    from newsletter.feeds.parsing import MAX_AUTHOR_CHARS

    searched: list[int] = []

    class RecordingRe:
        def __getattr__(self, name: str) -> object:
            return getattr(re, name)

        def search(self, pattern: str, string: str, flags: int = 0) -> object:
            if "@" in pattern:
                searched.append(len(string))
            return re.search(pattern, string, flags)

    monkeypatch.setattr(feedparser.mixin, "re", RecordingRe())
    huge = "x" * 200_000
    document = (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        "<link>https://blog.example.org/</link><description>d</description>"
        f"<managingEditor>{huge}</managingEditor>"
        f"<item><title>One</title><link>https://blog.example.org/1/</link>"
        f"<author>{huge}</author></item></channel></rss>"
    ).encode()
    [entry] = parse_feed(document, URL, "application/rss+xml").entries
    assert searched and max(searched) <= MAX_AUTHOR_CHARS
    assert entry.author is not None and entry.author.startswith("xxx")


def test_an_entry_that_cannot_be_read_is_skipped_and_the_rest_kept() -> None:
    document = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        b"<link>https://blog.example.org/</link><description>d</description>"
        b"<item><title>Bad</title><link>http://[::1</link></item>"
        b"<item><title>Good</title><link>https://blog.example.org/good/</link></item>"
        b"</channel></rss>"
    )
    feed = parse_feed(document, URL, "application/rss+xml")
    assert [e.title for e in feed.entries] == ["Good"]
    assert feed.skipped["unreadable"] == 1
