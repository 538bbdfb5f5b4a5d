"""Hostile posts: characters XML 1.0 forbids never reach a digest, and one post that
cannot be rendered never stops anyone else's mail.

Every way in (feed, webhook, API, CLI) stores text clean or refuses a bad URL with a
clear 4xx or exit status 2. A post stored before that (inserted raw here, as old
data would be) is cleaned again at render time; with that cleaning turned off it
makes MRML itself fail, and then the post alone is recorded as failed while every
reader still gets the rest. All on SQLite and PostgreSQL, with a real SMTP server.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from newsletter.apitokens import create_token
from newsletter.db import session_scope
from newsletter.delivery import planning
from newsletter.delivery.pipeline import run_due
from newsletter.delivery.rendering import render_digest
from newsletter.feeds import services as feeds
from newsletter.models import Cadence, Delivery, DeliveryPost, DeliveryStatus, Post
from newsletter.posts import PostInput, update_post
from newsletter.sanitize import clean_html, html_to_text
from newsletter.tags import get_or_create_tags, parse_tag_names
from newsletter.text import clean_text
from newsletter.web.app import create_app
from newsletter.webhooks import SIGNATURE_HEADER, sign
from subscribers.suppression import suppressed_among
from tests.cli_runner import count, run
from tests.conftest import ScriptedHandler, apply_env
from tests.factories import make_post, make_subscriber
from tests.newsletter.feeds.conftest import FeedServer, feed_server, private_ok

__all__ = ["feed_server", "private_ok"]  # fixtures used by the feed test

pytestmark = pytest.mark.usefixtures("app_env")

HOUR = dt.timedelta(hours=1)
SECRET = "whsec-test-0123456789abcdef"
# U+0001 and the two noncharacters the review used; MRML refuses each of them.
FORBIDDEN = ("\x01", "\ufffe", "\uffff")
_raw = itertools.count(1)


def assert_clean(*values: str | None) -> None:
    for value in values:
        assert value is None or clean_text(value) == value, repr(value)
        assert value is None or not any(c in value for c in FORBIDDEN), repr(value)


def stored_post(guid: str) -> Post:
    with session_scope() as session:
        return session.scalars(select(Post).where(Post.guid == guid)).one()


def post_row(post_id: int) -> Post:
    with session_scope() as session:
        post = session.get(Post, post_id)
        assert post is not None
        return post


def titles_by_recipient(smtp: ScriptedHandler) -> dict[str, list[list[str]]]:
    """Per reader, the post titles of each digest they got, in order of arrival."""
    result: dict[str, list[list[str]]] = {}
    for message in smtp.messages:
        part = message.parsed().get_body(("plain",))
        assert part is not None
        titles = [line for line in part.get_content().splitlines() if line.startswith("Post ")]
        result.setdefault(message.recipients[0], []).append(sorted(titles))
    return result


def all_text(smtp: ScriptedHandler) -> str:
    """Every Subject, HTML body and text body that was sent, decoded."""
    parts: list[str] = []
    for message in smtp.messages:
        parsed = message.parsed()
        parts.append(str(parsed["Subject"]))
        for kind in ("html", "plain"):
            body = parsed.get_body((kind,))
            assert body is not None
            parts.append(body.get_content())
    return "".join(parts)


def raw_post(
    tags: str,
    received: dt.datetime,
    title: str,
    *,
    url: str | None = None,
    summary: str = "Old summary.",
    author: str | None = "Old author",
) -> int:
    """A post written straight to the database, bypassing every check, as old data is."""
    n = next(_raw)
    with session_scope() as session:
        post = Post(
            guid=f"raw-{n}",
            title=title,
            url=url or f"https://blog.example.org/raw/{n}/",
            author=author,
            summary=summary,
            body_html="",
            published_at=received,
            received_at=received,
            planned_at=None,
            source="cli",
        )
        post.tags = get_or_create_tags(session, parse_tag_names(tags))
        session.add(post)
        session.flush()
        return post.id


def digests_run(at: dt.datetime) -> tuple[str, str]:
    code, out, err = run("digests", "run", "--now", at.isoformat())
    assert code == 0, err
    return out, err


def summary_count(out: str, label: str) -> int:
    """A row of the `digests run` table: `│ label │ n │`."""
    match = re.search(rf"│ {re.escape(label)} +│ (\d+)", out)
    assert match is not None, out
    return int(match.group(1))


@pytest.fixture
def without_render_cleaning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The templates as they were before they cleaned every value: a stored control
    character then reaches MRML, which refuses the whole template."""
    monkeypatch.setattr("newsletter.templating.clean_text", lambda value: value)


# -- every way in -------------------------------------------------------------------


def test_sanitisers_clean_after_decoding_entities() -> None:
    # `&amp;#1;` is `&#1;` once the feed's XML is read, and U+0001 once decoded as HTML.
    assert html_to_text("Costs &#1; rise\ufffe &#xFFFF;") == "Costs rise"
    assert clean_html('<p title="a&#1;">b&#1;\uffff<a href="https://x.example/&#1;">c</a></p>') == (
        '<p title="a">b<a href="https://x.example/" rel="noopener noreferrer">c</a></p>'
    )


def test_malformed_urls_are_refused_or_dropped_never_fatal() -> None:
    # urlsplit raises ValueError for an unclosed IPv6 bracket: never a crash.
    assert clean_html('<a href="http://[::1">x</a>') == '<a rel="noopener noreferrer">x</a>'
    code, _, err = run("posts", "add", "--title", "T", "--url", "http://[::1", "--tags", "a")
    assert code == 2 and "not a well-formed URL" in err and count(Post) == 0
    code, _, err = run("feeds", "add", "http://[::1/feed")
    assert code == 2 and "not a well-formed URL" in err


@pytest.mark.usefixtures("private_ok")
def test_feed_items_are_stored_clean_and_mailed(
    feed_server: FeedServer, smtp: ScriptedHandler
) -> None:
    make_subscriber("now@example.org", "politics")
    make_subscriber("daily@example.org", "politics", "daily")
    make_subscriber("other@example.org", "climate", "daily")
    head = (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"'
        ' xmlns:content="http://purl.org/rss/1.0/modules/content/"><channel>'
        "<title>Blog</title><link>https://blog.example.org/</link><description>d</description>"
    )
    old = (
        "<item><title>Old</title><link>https://blog.example.org/old/</link>"
        "<category>Politics</category></item>"
    )
    url = feed_server.serve("/feed/", (head + old + "</channel></rss>").encode())
    with session_scope() as session:
        feed_id = feeds.add_feed(session, url, "", 900, 0).id
    assert feeds.poll_feed(feed_id).backlog == 1

    hostile = (
        # The review's item: an escaped character reference in the description.
        "<item><title>Post one\ufffe</title><link>https://blog.example.org/one/</link>"
        "<guid>one\uffff</guid><author>x@example.org (Ana\ufffe Reis)</author>"
        "<category>Politics\uffff</category><description>Costs &amp;#1; rise\ufffe"
        "</description><content:encoded><![CDATA[<p>a&#1;b\uffff</p>]]></content:encoded></item>"
        "<item><title>Post two</title><link>https://blog.example.org/two/</link>"
        "<category>\ufffeClimate</category><description>Fine.</description></item>"
        # A link with a noncharacter is refused: the entry is skipped, the rest stored.
        "<item><title>Post three</title><link>https://blog.example.org/\ufffe/</link>"
        "<category>Politics</category></item>"
    )
    feed_server.serve("/feed/", (head + hostile + old + "</channel></rss>").encode())
    report = feeds.poll_feed(feed_id)
    assert report.ok and len(report.new) == 2
    assert report.skipped["invalid_entry"] == 1

    one = stored_post("one")
    assert (one.title, one.summary, one.author) == ("Post one", "Costs rise", "Ana Reis")
    assert one.body_html == "<p>ab</p>" and [t.slug for t in one.tags] == ["politics"]
    assert_clean(one.title, one.url, one.summary, one.author, one.guid, one.body_html)
    assert [t.slug for t in stored_post("https://blog.example.org/two/").tags] == ["climate"]

    out, _ = digests_run(dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    assert summary_count(out, "posts that could not be rendered") == 0
    assert titles_by_recipient(smtp) == {
        "now@example.org": [["Post one"]],
        "daily@example.org": [["Post one"]],
        "other@example.org": [["Post two"]],
    }
    assert_clean(all_text(smtp))


HOSTILE: dict[str, Any] = {
    "title": "Post hostile\ufffe\uffff",
    "url": "https://blog.example.org/hostile/",
    "tags": ["Politics\uffff", "\ufffeHealth"],
    "summary": "Costs &amp;#1; rise\x01\uffff",
    "body": "<p>a&#1;b\ufffe</p>",
    "author": "Ana\ufffe Reis\uffff",
    "guid": "hostile\ufffe-1",
}


def _webhook(fields: dict[str, Any], _tmp: Path) -> int:
    raw = json.dumps(fields).encode()
    with TestClient(create_app()) as client:
        response = client.post(
            "/hooks/posts",
            content=raw,
            headers={SIGNATURE_HEADER: sign(SECRET, raw), "Content-Type": "application/json"},
        )
    assert response.status_code in {201, 422}, response.text
    if response.status_code == 422:
        assert "U+FFFE" in response.json()["detail"]
    return int(response.status_code)


def _api(fields: dict[str, Any], _tmp: Path) -> int:
    with session_scope() as session:
        token, _ = create_token(session, "tests")
    with TestClient(create_app(), headers={"Authorization": f"Bearer {token}"}) as client:
        response = client.post("/api/posts", json=fields)
    assert response.status_code in {201, 422}, response.text
    if response.status_code == 422:
        assert "U+FFFE" in response.json()["detail"][0]["msg"]
    return int(response.status_code)


def _cli(fields: dict[str, Any], tmp: Path) -> int:
    body = tmp / "body.html"
    body.write_text(fields["body"], encoding="utf-8")
    code, _, err = run(
        "posts", "add", "--title", fields["title"], "--url", fields["url"],
        "--tags", ",".join(fields["tags"]), "--summary", fields["summary"],
        "--author", fields["author"], "--guid", fields["guid"], "--body-file", str(body),
    )  # fmt: skip
    if code == 2:
        assert "U+FFFE" in err
    return code


WAYS_IN = {"webhook": (_webhook, 201, 422), "api": (_api, 201, 422), "cli": (_cli, 0, 2)}


@pytest.mark.parametrize("way", sorted(WAYS_IN))
def test_every_way_in_stores_clean_text_and_refuses_a_bad_url(
    way: str, smtp: ScriptedHandler, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    apply_env(monkeypatch, NEWSLETTER_WEBHOOK_SECRET=SECRET)
    send, created, refused = WAYS_IN[way]
    make_subscriber("now@example.org", "politics")
    make_subscriber("daily@example.org", "health", "daily")
    make_subscriber("other@example.org", "climate", "daily")
    make_post("climate", title="Post climate")

    bad_url = {**HOSTILE, "url": "https://blog.example.org/\ufffe/", "guid": "bad-url"}
    assert send(bad_url, tmp_path) == refused
    assert count(Post) == 1
    assert send(HOSTILE, tmp_path) == created

    post = stored_post("hostile-1")
    assert post.title == "Post hostile" and post.author == "Ana Reis"
    assert post.summary == "Costs &#1; rise" and post.body_html == "<p>ab</p>"
    assert [t.slug for t in post.tags] == ["health", "politics"]
    assert_clean(post.title, post.url, post.summary, post.author, post.guid, post.body_html)
    assert_clean(*(t.name for t in post.tags))

    out, _ = digests_run(dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    assert summary_count(out, "posts that could not be rendered") == 0
    assert titles_by_recipient(smtp) == {
        "now@example.org": [["Post hostile"]],
        "daily@example.org": [["Post hostile"]],
        "other@example.org": [["Post climate"]],
    }
    assert_clean(all_text(smtp))


# -- old data, and the render failures it can cause ------------------------------------


def test_old_post_with_control_characters_is_cleaned_at_render_time(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    make_subscriber("ana@example.org", "politics", "daily", t0)
    raw_post(
        "politics",
        t0 + HOUR,
        "Post old\x01\ufffe",
        url="https://blog.example.org/old\uffff/",
        summary="Sum\x01mary\uffff",
        author="Au\ufffethor",
    )
    out, err = digests_run(t0 + 24 * HOUR)
    assert summary_count(out, "posts that could not be rendered") == 0 and "failed" not in err
    assert titles_by_recipient(smtp) == {"ana@example.org": [["Post old"]]}
    assert_clean(all_text(smtp))


@pytest.mark.usefixtures("without_render_cleaning")
def test_post_that_mrml_refuses_fails_alone_and_goes_out_once_corrected(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    make_subscriber("ana@example.org", "politics", "daily", t0)
    make_subscriber("cat@example.org", "politics, climate", "daily", t0)
    make_subscriber("ben@example.org", "climate", "daily", t0)
    make_post("politics", now=t0 + HOUR, title="Post good politics")
    make_post("climate", now=t0 + HOUR, title="Post good climate")
    bad = raw_post("politics", t0 + HOUR, "Post broken \x01 title")
    with session_scope() as session:
        post = session.get(Post, bad)
        assert post is not None
        with pytest.raises(ValueError, match="unable to parse next template"):
            render_digest([post], Cadence.DAILY)

    out, err = digests_run(t0 + 24 * HOUR)
    assert summary_count(out, "posts that could not be rendered") == 1
    assert summary_count(out, "sent") == 3
    assert f"post {bad} could not be rendered" in err and "unable to parse next template" in err
    assert titles_by_recipient(smtp) == {
        "ana@example.org": [["Post good politics"]],
        "cat@example.org": [["Post good climate", "Post good politics"]],
        "ben@example.org": [["Post good climate"]],
    }
    failed = post_row(bad)
    assert failed.failed_at is not None and failed.planned_at is not None
    assert "unable to parse next template" in (failed.failed_reason or "")
    code, listing, _ = run("posts", "list")
    assert code == 0 and "failed: ValueError" in listing
    with session_scope() as session:
        promised = session.scalar(
            select(func.count()).select_from(DeliveryPost).where(DeliveryPost.post_id == bad)
        )
    assert promised == 0

    # The next run sends nothing twice and does not try the bad post again.
    out, err = digests_run(t0 + 48 * HOUR)
    assert summary_count(out, "posts that could not be rendered") == 0 and err == ""
    assert len(smtp.messages) == 3

    # Corrected (here through the same service the webhook and feeds use), it goes out
    # in its readers' next digest, and only it.
    with session_scope() as session:
        post = session.get(Post, bad)
        assert post is not None
        fixed = PostInput(title="Post fixed", url=post.url, tags="politics", guid=post.guid)
        assert update_post(session, post, fixed)
    assert post_row(bad).failed_at is None
    out, err = digests_run(t0 + 72 * HOUR)
    assert summary_count(out, "sent") == 2 and err == ""
    got = titles_by_recipient(smtp)
    assert got["ana@example.org"][1:] == got["cat@example.org"][1:] == [["Post fixed"]]
    assert len(got["ben@example.org"]) == 1


@pytest.mark.usefixtures("without_render_cleaning")
def test_swept_post_that_cannot_be_rendered_is_not_retried_forever(
    smtp: ScriptedHandler, t0: dt.datetime
) -> None:
    make_subscriber("now@example.org", "politics", now=t0)
    make_subscriber("other@example.org", "climate", now=t0)
    bad = raw_post("politics", t0 + HOUR, "Post broken\ufffe")
    make_post("climate", now=t0 + HOUR, title="Post climate")

    first = run_due(t0 + 2 * HOUR)
    assert first.plan.posts_swept == 1 and list(first.plan.failed_posts) == [bad]
    assert dict(first.rows())["posts that could not be rendered"] == 1
    assert post_row(bad).planned_at is not None and post_row(bad).failed_at is not None
    again = run_due(t0 + 3 * HOUR)
    assert again.plan.posts_swept == 0 and again.plan.failures == []

    # The reader of the broken post's tag still gets the next good one, without it.
    make_post("politics", now=t0 + 4 * HOUR, title="Post politics")
    assert titles_by_recipient(smtp) == {
        "other@example.org": [["Post climate"]],
        "now@example.org": [["Post politics"]],
    }
    # Corrected, it reaches its immediate reader at once, and only them.
    with session_scope() as session:
        post = session.get(Post, bad)
        assert post is not None
        update_post(session, post, PostInput("Post mended", post.url, "politics", guid=post.guid))
    assert titles_by_recipient(smtp)["now@example.org"] == [["Post politics"], ["Post mended"]]
    assert len(smtp.messages) == 3


def test_digest_that_fails_only_as_a_whole_is_recorded_failed_for_its_readers(
    smtp: ScriptedHandler, t0: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails_together(posts: Sequence[Post], cadence: Cadence) -> Any:
        if len(posts) > 1:
            raise ValueError("unable to parse next template in root template")
        return render_digest(posts, cadence)

    monkeypatch.setattr("newsletter.delivery.planning.render_digest", fails_together)
    both = make_subscriber("both@example.org", "politics, climate", "daily", t0)
    make_subscriber("pol@example.org", "politics", "daily", t0)
    posts = [
        make_post("politics", now=t0 + HOUR, title="Post politics"),
        make_post("climate", now=t0 + HOUR, title="Post climate"),
    ]

    out, err = digests_run(t0 + 24 * HOUR)
    assert summary_count(out, "readers whose digest could not be rendered") == 1
    assert summary_count(out, "posts that could not be rendered") == 0
    assert "could not be rendered for 1 reader(s)" in err
    assert titles_by_recipient(smtp) == {"pol@example.org": [["Post politics"]]}
    with session_scope() as session:
        failed = session.scalars(select(Delivery).where(Delivery.subscriber_id == both)).one()
        assert failed.status is DeliveryStatus.FAILED
        assert failed.last_error is not None and "unable to parse" in failed.last_error
        assert sorted(failed.post_ids) == sorted(posts)

    out, err = digests_run(t0 + 48 * HOUR)
    assert summary_count(out, "readers whose digest could not be rendered") == 0 and err == ""
    assert len(smtp.messages) == 1 and count(Delivery) == 2


# -- other failures while planning -------------------------------------------------------


def test_one_failing_chunk_does_not_stop_the_others(
    smtp: ScriptedHandler, t0: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(monkeypatch, NEWSLETTER_PLAN_CHUNK_SIZE="1")
    for name in ("a", "b", "c"):
        make_subscriber(f"{name}@example.org", "politics", "daily", t0)
    make_post("politics", now=t0 + HOUR, title="Post politics")

    def broken(session: Any, emails: Sequence[str]) -> Any:
        if "b@example.org" in emails:
            raise RuntimeError("suppression lookup exploded")
        return suppressed_among(session, emails)

    monkeypatch.setattr("newsletter.delivery.planning.suppressed_among", broken)
    summary = run_due(t0 + 24 * HOUR)
    assert summary.plan.planning_errors == 1
    assert "suppression lookup exploded" in summary.plan.failures[0]
    assert sorted(titles_by_recipient(smtp)) == ["a@example.org", "c@example.org"]

    # The failed chunk was rolled back: nothing was lost, the next run plans it.
    monkeypatch.setattr("newsletter.delivery.planning.suppressed_among", suppressed_among)
    assert run_due(t0 + 25 * HOUR).plan.failures == []
    assert sorted(titles_by_recipient(smtp)) == ["a@example.org", "b@example.org", "c@example.org"]


def test_a_swept_post_that_raises_is_counted_and_marked_planned(
    t0: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = raw_post("politics", t0, "Post one")
    second = raw_post("politics", t0, "Post two")
    real = planning.plan_for_post

    def flaky(post_id: int, now: dt.datetime | None = None) -> planning.PlanReport:
        if post_id == first:
            raise RuntimeError("worker hiccup")
        return real(post_id, now)

    monkeypatch.setattr(planning, "plan_for_post", flaky)
    report = planning.plan_due(t0 + HOUR)
    assert report.posts_swept == 2 and report.planning_errors == 1
    assert report.failures == [f"planning swept post {first} failed: RuntimeError: worker hiccup"]
    with session_scope() as session:
        planned = session.scalars(select(Post.id).where(Post.planned_at.is_not(None))).all()
    assert sorted(planned) == [first, second]
    assert planning.plan_due(t0 + 2 * HOUR).posts_swept == 0
