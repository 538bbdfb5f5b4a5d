"""The guarded fetcher against a real HTTP server: addresses, redirects, size, time, 304."""

from __future__ import annotations

import ipaddress

import pytest

from newsletter.errors import InvalidInput
from newsletter.feeds import fetching
from newsletter.feeds.fetching import FetchError, check_feed_url, fetch_feed, is_public
from tests.conftest import apply_env
from tests.newsletter.feeds.conftest import FeedServer, fixture

pytestmark = pytest.mark.usefixtures("settings_env")

WORDPRESS = fixture("wordpress-tag.xml")


@pytest.mark.usefixtures("private_ok")
def test_conditional_get_sends_validators_and_reads_304(feed_server: FeedServer) -> None:
    url = feed_server.serve(
        "/tag/x/feed/", WORDPRESS, etag='"v1"', last_modified="Mon, 02 Mar 2026 09:12:44 GMT"
    )
    first = fetch_feed(url)
    assert first.status == 200 and first.content == WORDPRESS
    assert first.etag == '"v1"' and first.last_modified == "Mon, 02 Mar 2026 09:12:44 GMT"
    assert "if-none-match" not in feed_server.requests[0].headers

    second = fetch_feed(url, etag=first.etag, last_modified=first.last_modified)
    assert second.not_modified and second.content == b""
    sent = feed_server.requests[1].headers
    assert sent["if-none-match"] == '"v1"'
    assert sent["if-modified-since"] == "Mon, 02 Mar 2026 09:12:44 GMT"


def test_loopback_is_refused_unless_allowed(feed_server: FeedServer) -> None:
    url = feed_server.serve("/feed/", WORDPRESS)
    with pytest.raises(FetchError, match=r"non-public address 127.0.0.1"):
        fetch_feed(url)
    with pytest.raises(FetchError, match=r"non-public address ::1"):
        fetch_feed(f"http://[::1]:{feed_server.port}/feed/")
    # Refused before connecting: the server never saw a request.
    assert feed_server.requests == []


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
    ],
)
def test_public_address_table(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_a_name_with_any_private_address_is_refused() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.5"]

    with pytest.raises(FetchError, match=r"non-public address 10.0.0.5"):
        fetch_feed("https://blog.example.org/feed/", resolver=resolver)


@pytest.mark.usefixtures("private_ok")
def test_connects_to_the_checked_address_with_the_real_host(feed_server: FeedServer) -> None:
    """DNS is asked once; the connection goes to that address, the Host header stays."""
    feed_server.serve("/feed/", WORDPRESS)
    asked: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    result = fetch_feed(f"http://blog.example.test:{feed_server.port}/feed/", resolver=resolver)
    assert result.status == 200 and asked == ["blog.example.test"]
    assert feed_server.requests[0].headers["host"] == f"blog.example.test:{feed_server.port}"


def test_every_redirect_hop_is_checked(
    feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend 127.0.0.1 is a public server that redirects to a private one.
    monkeypatch.setattr(fetching, "is_public", lambda a: str(a) == "127.0.0.1")
    url = feed_server.redirect("/feed/", f"http://127.0.0.2:{feed_server.port}/admin")
    with pytest.raises(FetchError, match=r"non-public address 127.0.0.2"):
        fetch_feed(url)
    assert [r.path for r in feed_server.requests] == ["/feed/"]


@pytest.mark.usefixtures("private_ok")
def test_redirects_are_followed_up_to_the_limit(feed_server: FeedServer) -> None:
    feed_server.serve("/final/", WORDPRESS)
    feed_server.redirect("/r5/", "/final/", 301)
    for n in range(4, 0, -1):
        feed_server.redirect(f"/r{n}/", f"/r{n + 1}/", 307)
    result = fetch_feed(feed_server.url("/r1/"))
    assert result.url == feed_server.url("/final/") and result.content == WORDPRESS
    feed_server.redirect("/r0/", "/r1/")
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch_feed(feed_server.url("/r0/"))


@pytest.mark.usefixtures("private_ok")
def test_redirect_to_another_scheme_is_refused(feed_server: FeedServer) -> None:
    url = feed_server.redirect("/feed/", "file:///etc/passwd")
    with pytest.raises(InvalidInput, match="http"):
        fetch_feed(url)


@pytest.mark.usefixtures("private_ok")
def test_size_is_capped(feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    apply_env(monkeypatch, NEWSLETTER_FEED_MAX_BYTES="4096")
    big = b"<rss>" + b"x" * 10_000 + b"</rss>"
    declared = feed_server.serve("/declared/", big)
    with pytest.raises(FetchError, match="over the 4096 byte limit"):
        fetch_feed(declared)
    # Without a Content-Length the stream is counted and cut off.
    streamed = feed_server.serve("/streamed/", big, chunk=1024)
    with pytest.raises(FetchError, match="over the 4096 byte limit"):
        fetch_feed(streamed)


@pytest.mark.usefixtures("private_ok")
def test_time_is_capped(feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that drips its body never holds a poller past the deadline."""
    apply_env(monkeypatch, NEWSLETTER_FEED_TIMEOUT="0.6")
    url = feed_server.serve("/slow/", WORDPRESS, chunk=200, pause=0.25)
    with pytest.raises(FetchError, match=r"took longer than 0.6 s|timed out"):
        fetch_feed(url)


@pytest.mark.usefixtures("private_ok")
def test_http_error_status_is_an_error(feed_server: FeedServer) -> None:
    with pytest.raises(FetchError, match="HTTP 404") as caught:
        fetch_feed(feed_server.url("/missing/"))
    assert caught.value.status == 404


@pytest.mark.parametrize(
    "url",
    [
        "ftp://blog.example.org/feed/",
        "file:///etc/passwd",
        "/tag/x/feed/",
        "javascript:alert(1)",
        "http://user:secret@blog.example.org/feed/",
        "http://blog.example.org:99999/feed/",
    ],
)
def test_only_plain_http_urls(url: str) -> None:
    with pytest.raises(InvalidInput):
        check_feed_url(url)


@pytest.mark.usefixtures("private_ok")
def test_international_host_names_travel_as_idna(feed_server: FeedServer) -> None:
    feed_server.serve("/feed/", WORDPRESS)
    asked: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    fetch_feed(f"http://blog.café.example:{feed_server.port}/feed/", resolver=resolver)
    assert asked == ["blog.xn--caf-dma.example"]
    assert feed_server.requests[0].headers["host"] == f"blog.xn--caf-dma.example:{feed_server.port}"
