"""Polling real feeds over HTTP into the pipeline, on SQLite and PostgreSQL, with real SMTP.

The invariants: a feed's backlog mails nobody; an item new to us is mailed once to
exactly the readers of its tags; a known guid is never news again, whatever the
feed does to it; a 304 does no work; bad documents store nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from email.utils import format_datetime
from xml.sax.saxutils import escape

import pytest
from sqlalchemy import func, select

from newsletter.db import session_scope
from newsletter.delivery.pipeline import run_due
from newsletter.feeds import services as feeds
from newsletter.models import Feed, Post, Tag
from tests.conftest import ScriptedHandler
from tests.factories import make_subscriber
from tests.newsletter.feeds.conftest import FeedServer, fixture

pytestmark = pytest.mark.usefixtures("app_env", "private_ok")


@dataclass
class Item:
    guid: str
    title: str
    tags: list[str]
    published: dt.datetime | None = None
    body: str = "<p>Body.</p>"
    link: str = field(default="")

    def xml(self) -> str:
        link = self.link or f"https://blog.example.org/{self.guid}/"
        date = f"<pubDate>{format_datetime(self.published)}</pubDate>" if self.published else ""
        cats = "".join(f"<category><![CDATA[{t}]]></category>" for t in self.tags)
        return (
            f"<item><title>{escape(self.title)}</title><link>{link}</link>"
            f'<guid isPermaLink="false">{self.guid}</guid>{date}{cats}'
            f"<content:encoded><![CDATA[{self.body}]]></content:encoded></item>"
        )


def rss(*items: Item) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">'
        "<channel><title>Test blog</title><link>https://blog.example.org/</link>"
        "<description>d</description>" + "".join(i.xml() for i in items) + "</channel></rss>"
    ).encode()


def add(url: str, tags: str = "", mail_newest: int = 0, interval: int = 900) -> int:
    with session_scope() as session:
        return feeds.add_feed(session, url, tags, interval, mail_newest).id


def posts() -> list[Post]:
    with session_scope() as session:
        return list(session.scalars(select(Post).order_by(Post.id)))


def post(guid: str) -> Post:
    with session_scope() as session:
        return session.scalars(select(Post).where(Post.guid == guid)).one()


def feed_row(feed_id: int) -> Feed:
    with session_scope() as session:
        row = session.get(Feed, feed_id)
        assert row is not None
        return row


def recipients(smtp: ScriptedHandler) -> list[str]:
    return sorted(r for m in smtp.messages for r in m.recipients)


D = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)


def test_new_tagged_item_mails_its_followers_once(
    feed_server: FeedServer, smtp: ScriptedHandler
) -> None:
    """End to end: backlog silent, a new item tagged X mails X's readers once, then nothing."""
    make_subscriber("x1@example.org", "Politics")
    make_subscriber("x2@example.org", "politics, climate")
    make_subscriber("y@example.org", "Climate")
    make_subscriber("xd@example.org", "politics", "daily")
    backlog = [
        Item("p1", "Old politics", ["Politics"], D),
        Item("p2", "Old climate", ["Climate"], D),
    ]
    url = feed_server.serve("/tag/politics/feed/", rss(*backlog))
    feed_id = add(url)

    first = feeds.poll_feed(feed_id)
    assert first.ok and first.backlog == 2 and first.new == []
    assert smtp.messages == []

    feed_server.serve(
        "/tag/politics/feed/",
        rss(Item("p3", "Fresh politics", ["POLITICS"], D + dt.timedelta(days=1)), *backlog),
    )
    second = feeds.poll_feed(feed_id)
    assert len(second.new) == 1 and second.backlog == 0 and second.unchanged == 2
    assert recipients(smtp) == ["x1@example.org", "x2@example.org"]
    assert all("Fresh politics" in m.parsed()["Subject"] for m in smtp.messages)

    third = feeds.poll_feed(feed_id)
    assert third.new == [] and third.skipped["known_from_elsewhere"] == 0
    assert len(smtp.messages) == 2
    # The daily reader gets the new post (and only it) at their hour; nothing after.
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    run_due(tomorrow)
    assert recipients(smtp) == ["x1@example.org", "x2@example.org", "xd@example.org"]
    daily = next(m for m in smtp.messages if m.recipients == ["xd@example.org"])
    text = daily.parsed().get_body(("plain",))
    assert text is not None and "Fresh politics" in text.get_content()
    assert "Old politics" not in text.get_content()
    run_due(tomorrow + dt.timedelta(days=1))
    assert len(smtp.messages) == 3


def test_first_poll_imports_wordpress_backlog_without_mail(
    feed_server: FeedServer, smtp: ScriptedHandler
) -> None:
    make_subscriber("ana@example.org", "respublica")
    make_subscriber("daily@example.org", "politics", "daily")
    url = feed_server.serve("/tag/respublica/feed/", fixture("wordpress-tag.xml"))
    feed_id = add(url, tags="Tribuna")
    report = feeds.poll_feed(feed_id)
    assert report.ok and report.first and report.backlog == 3 and report.new == []

    stored = posts()
    assert [p.guid for p in stored] == [
        "https://blog.example.org/?p=1017",
        "https://blog.example.org/?p=1031",
        "https://blog.example.org/?p=1042",
    ]
    assert all(p.source == "backlog" and p.planned_at is not None for p in stored)
    assert all(p.feed_id == feed_id for p in stored)
    newest = stored[-1]
    assert newest.title == "Or\u00e7amento: o que muda na sa\u00fade"
    assert newest.author == "Marta Reis"
    assert newest.published_at == dt.datetime(2026, 3, 2, 9, 12, 44, tzinfo=dt.UTC)
    assert [t.slug for t in newest.tags] == ["public-services", "respublica", "saude", "tribuna"]
    # Relative links and images are made absolute against the post's own URL.
    assert (
        'src="https://blog.example.org/wp-content/uploads/2026/03/grafico.png"' in newest.body_html
    )
    assert 'href="https://blog.example.org/2026/02/20/anterior/"' in newest.body_html
    assert "Continue reading" in newest.summary and "<a" not in newest.summary
    # "Public Services" and "public-services" are one tag; the display name stays readable.
    with session_scope() as session:
        names = {slug: name for slug, name in session.execute(select(Tag.slug, Tag.name))}
    assert names["public-services"] == "Public Services" and names["saude"] == "Sa\u00fade"

    row = feed_row(feed_id)
    assert row.title.startswith("ResPublica") and row.first_polled_at is not None
    assert row.last_status == 200 and row.last_error is None
    # Neither now nor at the daily reader's next hour does the backlog go out.
    run_due(dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    assert smtp.messages == []


def test_mail_newest_sends_the_newest_backlog_posts(
    feed_server: FeedServer, smtp: ScriptedHandler
) -> None:
    make_subscriber("ana@example.org", "politics")
    items = [
        Item("a", "Oldest", ["Politics"], D),
        Item("c", "Newest", ["Politics"], D + dt.timedelta(days=2)),
        Item("b", "Middle", ["Politics"], D + dt.timedelta(days=1)),
    ]
    feed_id = add(feed_server.serve("/feed/", rss(*items)), mail_newest=1)
    report = feeds.poll_feed(feed_id)
    assert report.backlog == 2 and len(report.new) == 1
    assert [m.parsed()["Subject"] for m in smtp.messages] == [smtp.messages[0].parsed()["Subject"]]
    assert "Newest" in smtp.messages[0].parsed()["Subject"]
    assert post("c").source == "feed" and post("a").source == "backlog"


def test_conditional_get_304_does_no_work(feed_server: FeedServer, smtp: ScriptedHandler) -> None:
    url = feed_server.serve(
        "/feed/",
        rss(Item("a", "One", ["Politics"], D)),
        etag='W/"abc"',
        last_modified="Sun, 01 Mar 2026 09:00:00 GMT",
    )
    feed_id = add(url)
    feeds.poll_feed(feed_id)
    before = post("a")
    row = feed_row(feed_id)
    assert (row.etag, row.last_modified) == ('W/"abc"', "Sun, 01 Mar 2026 09:00:00 GMT")

    report = feeds.poll_feed(feed_id)
    assert report.not_modified and report.status == 304
    assert (report.new, report.backlog, report.updated, report.unchanged) == ([], 0, 0, 0)
    sent = feed_server.requests[-1].headers
    assert sent["if-none-match"] == 'W/"abc"'
    assert sent["if-modified-since"] == "Sun, 01 Mar 2026 09:00:00 GMT"
    assert post("a").updated_at == before.updated_at
    assert feed_row(feed_id).last_status == 304

    # A changed document (new validator) is read again.
    feed_server.serve(
        "/feed/", rss(Item("b", "Two", ["Politics"], D), Item("a", "One", ["Politics"], D)),
        etag='W/"def"',
    )  # fmt: skip
    report = feeds.poll_feed(feed_id)
    assert report.status == 200 and len(report.new) == 1
    assert feed_row(feed_id).etag == 'W/"def"' and feed_row(feed_id).last_modified is None


def test_known_guid_is_never_new_again(feed_server: FeedServer, smtp: ScriptedHandler) -> None:
    make_subscriber("ana@example.org", "politics, climate")
    a, b = Item("a", "First", ["Politics"], D), Item("b", "Second", ["Politics"], D)
    feed_id = add(feed_server.serve("/feed/", rss(a, b)))
    feeds.poll_feed(feed_id)
    received = post("a").received_at

    # Reordered, re-dated, retitled, re-tagged and with a new body: an edit, not news.
    edited = Item("a", "First (corrected)", ["Politics", "Climate"],
                  D + dt.timedelta(days=30), body="<p>Fixed.</p>")  # fmt: skip
    feed_server.serve("/feed/", rss(b, edited))
    report = feeds.poll_feed(feed_id)
    assert (report.new, report.updated, report.unchanged) == ([], 1, 1)
    stored = post("a")
    assert stored.title == "First (corrected)" and stored.body_html == "<p>Fixed.</p>"
    assert [t.slug for t in stored.tags] == ["climate", "politics"]
    assert stored.published_at == D + dt.timedelta(days=30)
    assert stored.received_at == received and stored.source == "backlog"
    assert smtp.messages == []
    run_due(dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    assert smtp.messages == []
    assert len(posts()) == 2


def test_item_new_to_us_is_new_whatever_its_date(
    feed_server: FeedServer, smtp: ScriptedHandler
) -> None:
    make_subscriber("ana@example.org", "politics")
    feed_id = add(feed_server.serve("/feed/", rss(Item("a", "A", ["Politics"], D))))
    feeds.poll_feed(feed_id)
    ancient = Item("old", "Back-dated", ["Politics"], dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
    feed_server.serve("/feed/", rss(Item("a", "A", ["Politics"], D), ancient))
    report = feeds.poll_feed(feed_id)
    assert len(report.new) == 1
    assert recipients(smtp) == ["ana@example.org"]
    assert post("old").published_at.year == 2001


def test_duplicate_guids_make_one_post(feed_server: FeedServer, smtp: ScriptedHandler) -> None:
    feed_id = add(feed_server.serve("/feed/", fixture("duplicate-guids.xml")))
    report = feeds.poll_feed(feed_id)
    assert report.backlog == 2 and report.skipped["duplicate_guid"] == 2
    assert [p.title for p in posts()] == ["No guid, identified by its link", "First spelling"]


def test_missing_dates_get_the_poll_time(
    feed_server: FeedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    feed_id = add(feed_server.serve("/feed/", fixture("no-dates.xml")))
    polled = dt.datetime(2026, 3, 5, 12, 0, tzinfo=dt.UTC)
    report = feeds.poll_feed(feed_id, polled)
    assert report.backlog == 2
    assert [p.published_at for p in posts()] == [polled, polled]
    assert "using the poll time" in caplog.text


def test_iso_8859_1_feed(feed_server: FeedServer) -> None:
    url = feed_server.serve("/feed/", fixture("latin1.xml"), content_type="text/xml")
    feeds.poll_feed(add(url))
    [stored] = posts()
    assert stored.title == "Educa\u00e7\u00e3o e sa\u00fade em Set\u00fabal"
    assert stored.author == "Jos\u00e9 Gon\u00e7alves"
    assert [(t.slug, t.name) for t in stored.tags] == [
        ("educacao", "Educa\u00e7\u00e3o"),
        ("saude-publica", "Sa\u00fade P\u00fablica"),
    ]


def test_atom_feed(feed_server: FeedServer) -> None:
    feeds.poll_feed(add(feed_server.serve("/index.xml", fixture("atom.xml"),
                                          content_type="application/atom+xml")))  # fmt: skip
    glaciers, heat = posts()
    assert heat.title == "Heat & the city" and heat.author == "Ana Sousa"
    assert 'src="https://hugo.example.net/posts/heat-city/img/map.png"' in heat.body_html
    assert heat.summary == "Cities run hot."
    assert 'href="https://hugo.example.net/data/"' in glaciers.body_html


def test_not_xml_records_the_error_and_stores_nothing(feed_server: FeedServer) -> None:
    feed_id = add(feed_server.serve("/feed/", fixture("not-xml.html"), content_type="text/html"))
    report = feeds.poll_feed(feed_id)
    assert not report.ok and "is not an RSS or Atom feed" in (report.error or "")
    assert posts() == []
    row = feed_row(feed_id)
    assert row.last_error == report.error and row.first_polled_at is None and row.etag is None
    # Once the feed is fixed, the first good poll is still the backlog import.
    feed_server.serve("/feed/", rss(Item("a", "A", ["Politics"], D)))
    report = feeds.poll_feed(feed_id)
    assert report.ok and report.first and report.backlog == 1
    assert feed_row(feed_id).last_error is None


def test_hostile_html_is_sanitised(feed_server: FeedServer) -> None:
    feeds.poll_feed(add(feed_server.serve("/feed/", fixture("hostile.xml"))))
    [stored] = posts()
    body = stored.body_html.lower()
    for forbidden in ("<script", "<style", "<iframe", "<svg", "<object", "<form", "<input",
                      "onerror", "onclick", "onmouseover", "onload", "javascript:", "data:",
                      "alert("):  # fmt: skip
        assert forbidden not in body, forbidden
    assert '<img src="https://hostile.example.org/pics/cat.png">' in stored.body_html
    assert 'href="https://hostile.example.org/posts/normal/relative/page/"' in stored.body_html
    assert "<" not in stored.summary and "javascript" not in stored.summary
    assert "document.cookie" not in stored.summary
    assert stored.title == "Totally normal post"
    assert stored.author is not None
    assert "\n" not in stored.author and "\r" not in stored.author and "<" not in stored.author


def test_loopback_refused_without_admin_opt_in(
    feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import apply_env

    apply_env(monkeypatch, NEWSLETTER_ALLOW_PRIVATE_FEEDS="false")
    feed_id = add(feed_server.serve("/feed/", rss(Item("a", "A", ["Politics"], D))))
    report = feeds.poll_feed(feed_id)
    assert "non-public address 127.0.0.1" in (report.error or "")
    assert posts() == [] and feed_server.requests == []


def test_another_feed_does_not_rewrite_a_known_post(feed_server: FeedServer) -> None:
    """Two tag archives of one blog carry the same post: it is stored once, left alone."""
    item = Item("shared", "Shared", ["Politics", "Climate"], D)
    one = add(feed_server.serve("/tag/politics/feed/", rss(item)), tags="Politics")
    two = add(feed_server.serve("/tag/climate/feed/", rss(item)), tags="Energy")
    feeds.poll_feed(one)
    report = feeds.poll_feed(two)
    assert report.skipped["known_from_elsewhere"] == 1 and report.backlog == 0
    stored = post("shared")
    assert stored.feed_id == one and [t.slug for t in stored.tags] == ["climate", "politics"]


def test_due_feeds_are_claimed_once_per_interval(feed_server: FeedServer) -> None:
    feed_id = add(feed_server.serve("/feed/", rss(Item("a", "A", ["Politics"], D))), interval=600)
    now = dt.datetime.now(dt.UTC)
    assert [r.feed_id for r in feeds.poll_due(now)] == [feed_id]
    assert feeds.poll_due(now + dt.timedelta(seconds=599)) == []
    # A second poller racing for the same slot gets nothing to do.
    report = feeds.poll_feed(feed_id, now + dt.timedelta(seconds=10), force=False)
    assert report.skipped["not_due"] == 1 and report.status is None
    assert len(feeds.poll_due(now + dt.timedelta(seconds=600))) == 1
    assert len(feed_server.requests) == 2


def test_beat_task_polls_due_feeds(feed_server: FeedServer, smtp: ScriptedHandler) -> None:
    from worker import tasks
    from worker.celery_app import app

    schedule = app.conf.beat_schedule["poll-due-feeds"]
    assert schedule["task"] == "worker.tasks.poll_due_feeds"
    make_subscriber("ana@example.org", "politics")
    url = feed_server.serve("/feed/", rss(Item("a", "A", ["Politics"], D)))
    feed_id = add(url)
    assert tasks.poll_due_feeds.apply().get() == {"feeds": 1}
    assert len(posts()) == 1 and smtp.messages == []
    # Not due again yet: the task does nothing.
    assert tasks.poll_due_feeds.apply().get() == {"feeds": 0}
    feed_server.serve(
        "/feed/", rss(Item("b", "B", ["Politics"], D), Item("a", "A", ["Politics"], D))
    )
    with session_scope() as session:
        row = session.get(Feed, feed_id)
        assert row is not None
        row.next_poll_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    assert tasks.poll_due_feeds.apply().get() == {"feeds": 1}
    assert recipients(smtp) == ["ana@example.org"]
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Post)) == 2
