"""The console's feed page over real HTTP, against a real feed server on a loopback
port and real databases: add, "Poll now" with its result, a broken feed's error on
the page (never a 500), remove, and who may do it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from newsletter.db import session_scope
from newsletter.feeds import services as feeds
from newsletter.models import Feed, Post
from newsletter.outbox import free_port
from tests.cli_runner import count
from tests.console.conftest import ADMIN, EDITOR, actions, form_token, signed_in
from tests.newsletter.feeds.conftest import FeedServer, feed_server, private_ok

__all__ = ["feed_server", "private_ok"]  # fixtures used by name below

pytestmark = pytest.mark.usefixtures("staff", "private_ok")


def rss(*guids: str) -> bytes:
    items = "".join(
        f"<item><title>Post {g}</title><link>https://blog.example.org/{g}/</link>"
        f'<guid isPermaLink="false">{g}</guid><category>Climate</category></item>'
        for g in guids
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
        "<title>Test blog</title><link>https://blog.example.org/</link>"
        f"<description>d</description>{items}</channel></rss>"
    ).encode()


def token_of(c: TestClient) -> str:
    return form_token(c.get("/admin/feeds").text)


def add_feed(url: str, tags: str = "") -> int:
    with session_scope() as session:
        return feeds.add_feed(session, url, tags).id


def feed_row(feed_id: int) -> Feed:
    with session_scope() as session:
        row = session.get(Feed, feed_id)
        assert row is not None
        return row


def poll(c: TestClient, feed_id: int) -> str:
    """Press "Poll now"; the page it leads to."""
    response = c.post(
        f"/admin/feeds/{feed_id}/poll", data={"csrf_token": token_of(c)}, follow_redirects=False
    )
    assert response.status_code == 303
    page = c.get(response.headers["location"])
    assert page.status_code == 200
    return str(page.text)


def result_of(html: str) -> str:
    start = html.index('id="poll-result"')
    return " ".join(html[start : html.index("</div>", start)].split())


def test_add_then_poll_now_shows_new_posts_then_not_modified(feed_server: FeedServer) -> None:
    url = feed_server.serve("/feed.xml", rss("a", "b"), etag='"v1"')
    c = signed_in(ADMIN)
    response = c.post(
        "/admin/feeds",
        data={"url": url, "tags": "Science", "interval": "600", "csrf_token": token_of(c)},
    )
    assert response.status_code == 200 and "The feed is added" in response.text
    feed_id = feed_row_id(url)
    row = response.text[response.text.index(f'id="feed-{feed_id}"') :].split("</tr>")[0]
    for shown in ("Test blog", url, "Science", "600 s", "OK (200)"):
        assert shown in row
    assert count(Post) == 2  # the backlog, imported as already published

    feed_server.serve("/feed.xml", rss("a", "b", "c"), etag='"v2"')
    assert "1 new post (sent to their readers)" in result_of(poll(c, feed_id))
    with session_scope() as session:
        assert session.scalar(select(Post.title).where(Post.guid == "c")) == "Post c"
    # The server answers 304 to the ETag it gave: nothing to do, and the page says so.
    assert "not modified since the last poll" in result_of(poll(c, feed_id))
    assert feed_server.seen("/feed.xml")[-1].headers["if-none-match"] == '"v2"'
    assert [a for a, _ in actions()] == ["login", "feed_added", "feed_polled", "feed_polled"]


def feed_row_id(url: str) -> int:
    with session_scope() as session:
        return feeds.find_feed(session, url).id


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ({"body": b"<html>not a feed</html>", "content_type": "text/html"}, "failed"),
        ({"body": b"oops", "status": 500}, "failed (HTTP 500)"),
    ],
)
def test_a_broken_feed_shows_its_error_never_a_500(
    feed_server: FeedServer, route: dict[str, object], expected: str
) -> None:
    url = feed_server.serve("/broken.xml", **route)  # type: ignore[arg-type]
    feed_id = add_feed(url)
    c = signed_in(ADMIN)
    result = result_of(poll(c, feed_id))
    row = feed_row(feed_id)
    assert expected in result and row.last_error and row.last_error in result.replace("&#39;", "'")
    page = c.get("/admin/feeds").text
    assert 'class="bad"' in page.split(f'id="feed-{feed_id}"')[1].split("</tr>")[0]
    assert count(Post) == 0


def test_a_feed_nobody_answers_shows_its_error() -> None:
    feed_id = add_feed(f"http://127.0.0.1:{free_port()}/feed.xml")
    c = signed_in(ADMIN)
    result = result_of(poll(c, feed_id))
    assert "failed" in result and feed_row(feed_id).last_error
    assert actions()[-1][0] == "feed_polled"


def test_a_feed_that_cannot_be_read_is_not_added(feed_server: FeedServer) -> None:
    url = feed_server.serve("/nope.xml", b"nope", status=404)
    c = signed_in(ADMIN)
    token = token_of(c)
    response = c.post("/admin/feeds", data={"url": url, "csrf_token": token})
    assert response.status_code == 400 and "The feed was not added" in response.text
    for bad in ("not a url", "ftp://example.org/feed"):
        response = c.post("/admin/feeds", data={"url": bad, "csrf_token": token})
        assert response.status_code == 400 and "http(s) URL" in response.text
    response = c.post("/admin/feeds", data={"url": url, "interval": "5", "csrf_token": token})
    assert response.status_code == 400 and "poll interval" in response.text
    assert count(Feed) == 0 and [a for a, _ in actions()] == ["login"]


def test_remove_keeps_the_posts(feed_server: FeedServer) -> None:
    url = feed_server.serve("/feed.xml", rss("a"))
    c = signed_in(ADMIN)
    c.post("/admin/feeds", data={"url": url, "csrf_token": token_of(c)})
    feed_id = feed_row_id(url)
    response = c.post(f"/admin/feeds/{feed_id}/remove", data={"csrf_token": token_of(c)})
    assert response.status_code == 200 and "Feed removed." in response.text
    assert count(Feed) == 0 and count(Post) == 1
    assert actions()[-1] == ("feed_removed", url)
    assert (
        c.post(f"/admin/feeds/{feed_id}/poll", data={"csrf_token": token_of(c)}).status_code == 404
    )


def test_editor_and_a_missing_csrf_token_are_refused_and_nothing_is_fetched(
    feed_server: FeedServer,
) -> None:
    url = feed_server.serve("/feed.xml", rss("a"))
    feed_id = add_feed(url)
    editor = signed_in(EDITOR)
    token = form_token(editor.get("/admin/tags").text)
    assert editor.get("/admin/feeds").status_code == 403
    for path in (f"/admin/feeds/{feed_id}/poll", f"/admin/feeds/{feed_id}/remove", "/admin/feeds"):
        assert editor.post(path, data={"url": url, "csrf_token": token}).status_code == 403
    admin = signed_in(ADMIN)
    for data in ({}, {"csrf_token": "not-the-token"}):
        assert admin.post(f"/admin/feeds/{feed_id}/poll", data=data).status_code == 403
        assert admin.post(f"/admin/feeds/{feed_id}/remove", data=data).status_code == 403
    assert feed_server.requests == [] and count(Feed) == 1
    assert feed_row(feed_id).last_polled_at is None
    assert [a for a, _ in actions()] == ["login", "login"]
