"""`newsletter feeds ...` as an admin types it: good input works, bad input changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.models import Feed, Post
from tests.cli_runner import count, run
from tests.conftest import ScriptedHandler
from tests.factories import make_subscriber
from tests.newsletter.feeds.conftest import FIXTURES, FeedServer, fixture

pytestmark = pytest.mark.usefixtures("app_env", "private_ok")


def test_add_imports_backlog_then_poll_mails_new_posts(
    feed_server: FeedServer, smtp: ScriptedHandler
) -> None:
    make_subscriber("ana@example.org", "respublica")
    url = feed_server.serve("/tag/respublica/feed/", fixture("wordpress-tag.xml"), etag='"1"')
    code, out, err = run("feeds", "add", url, "--tags", "ResPublica", "--interval", "600")
    assert code == 0, err
    assert "3 posts imported as already published, 0 mailed" in out
    assert count(Post) == 3 and smtp.messages == []

    code, out, _ = run("feeds", "list")
    assert code == 0 and url in out and "ResPublica" in out and "600 s" in out

    # Not due yet: a plain poll does nothing; naming the feed polls it (a 304 here).
    code, out, _ = run("feeds", "poll")
    assert code == 0 and "no feed is due" in out
    code, out, _ = run("feeds", "poll", "1")
    assert code == 0 and "not modified" in out

    wordpress = fixture("wordpress-tag.xml").replace(
        b"<item>",
        b"<item><title>New post</title><link>https://blog.example.org/new/</link>"
        b"<guid>https://blog.example.org/?p=2000</guid><category>ResPublica</category></item>"
        b"<item>",
        1,
    )
    feed_server.serve("/tag/respublica/feed/", wordpress, etag='"2"')
    code, out, err = run("feeds", "poll", "--all")
    assert code == 0, err
    assert [m.recipients for m in smtp.messages] == [["ana@example.org"]]
    code, out, _ = run("feeds", "poll", url)
    assert code == 0 and len(smtp.messages) == 1

    code, out, _ = run("feeds", "remove", url)
    assert code == 0 and count(Feed) == 0 and count(Post) == 4


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://blog.example.org/feed/", "http(s) URL"),
        ("blog.example.org/feed", "feeds import FILE"),
        ("/tmp/export.xml", "feeds import FILE"),
    ],
)
def test_bad_feed_url_exits_2_and_writes_nothing(url: str, message: str) -> None:
    code, _, err = run("feeds", "add", url)
    assert code == 2 and message in err
    assert count(Feed) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--interval", "5"], "between 60 and"), (["--mail-newest", "-1"], "--mail-newest")],
)
def test_bad_options_exit_2(feed_server: FeedServer, args: list[str], message: str) -> None:
    code, _, err = run("feeds", "add", feed_server.url("/feed/"), *args)
    assert code == 2 and message in err
    assert count(Feed) == 0


def test_a_feed_that_fails_its_first_fetch_is_not_added(feed_server: FeedServer) -> None:
    url = feed_server.serve("/feed/", fixture("not-xml.html"), content_type="text/html")
    code, _, err = run("feeds", "add", url)
    assert code == 2 and "feed not added" in err and "not an RSS or Atom feed" in err
    code, _, err = run("feeds", "add", feed_server.url("/missing/"))
    assert code == 2 and "HTTP 404" in err
    assert count(Feed) == 0 and count(Post) == 0


def test_duplicate_feed(feed_server: FeedServer) -> None:
    url = feed_server.serve("/feed/", fixture("atom.xml"))
    assert run("feeds", "add", url)[0] == 0
    code, _, err = run("feeds", "add", url)
    assert code == 2 and "already registered" in err
    assert count(Feed) == 1


def test_failed_poll_is_reported_with_exit_1(feed_server: FeedServer) -> None:
    url = feed_server.serve("/feed/", fixture("atom.xml"))
    assert run("feeds", "add", url)[0] == 0
    feed_server.serve("/feed/", b"oops", content_type="text/plain")
    code, out, err = run("feeds", "poll", "--all")
    assert code == 1 and "not an RSS or Atom feed" in err and "failed" in out
    code, out, _ = run("feeds", "list")
    assert "error: " in out


def test_unknown_feed_and_conflicting_arguments() -> None:
    assert run("feeds", "poll", "42")[0] == 2
    assert run("feeds", "remove", "https://nowhere.example/feed")[0] == 2
    code, _, err = run("feeds", "poll", "1", "--all")
    assert code == 2 and "not both" in err


def test_import_a_saved_feed_file(smtp: ScriptedHandler, tmp_path: Path) -> None:
    make_subscriber("ana@example.org", "politics")
    code, _, err = run(
        "feeds", "import", str(FIXTURES / "wordpress-tag.xml"), "--tags", "Politics",
        "--mail-newest", "1",
    )  # fmt: skip
    assert code == 0, err
    assert count(Post) == 3 and count(Feed) == 0
    # The newest post is announced; the rest is history.
    assert len(smtp.messages) == 1 and "Or\u00e7amento" in smtp.messages[0].parsed()["Subject"]
    # Importing again adds nothing and mails nobody.
    assert run("feeds", "import", str(FIXTURES / "wordpress-tag.xml"))[0] == 0
    assert count(Post) == 3 and len(smtp.messages) == 1

    junk = tmp_path / "junk.xml"
    junk.write_text("<html><body>not a feed</body></html>")
    code, _, err = run("feeds", "import", str(junk))
    assert code == 2 and "not an RSS or Atom feed" in err
    code, _, err = run("feeds", "import", str(tmp_path / "missing.xml"))
    assert code == 2 and "cannot read" in err
    assert count(Post) == 3
