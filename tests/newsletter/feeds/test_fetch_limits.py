"""Hostile feed servers: slow-loris headers, malformed redirects, addresses hidden in
IPv6 transition prefixes, and a feed that breaks in an unforeseen way mid-poll."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.db import session_scope
from newsletter.feeds import services as feeds
from newsletter.feeds.fetching import FetchError, fetch_feed, is_public
from newsletter.feeds.parsing import parse_feed as real_parse
from newsletter.models import Feed
from tests.conftest import apply_env
from tests.newsletter.feeds.conftest import FeedServer, fixture

runner = CliRunner()


class SlowLoris:
    """A raw socket server that answers one header line at a time, forever."""

    def __init__(self, pause: float = 0.2) -> None:
        self.pause = pause
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                n = 0
                while not self.stop.wait(self.pause):
                    conn.sendall(f"X-Slow-{n}: a\r\n".encode())
                    n += 1
            except OSError:
                pass  # the client gave up: that is the point


@pytest.fixture
def slow_loris() -> Iterator[SlowLoris]:
    server = SlowLoris()
    server.thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.thread.join(5)
        server.listener.close()


@pytest.mark.usefixtures("private_ok")
def test_a_server_dripping_header_lines_cannot_outlast_the_cap(
    slow_loris: SlowLoris, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(monkeypatch, NEWSLETTER_FEED_TIMEOUT="1")
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"took longer than 1 s"):
        fetch_feed(f"http://127.0.0.1:{slow_loris.port}/feed/")
    # A generous safety bound only: without the cap this fetch would never end.
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("::7f00:1", False),  # IPv4-compatible 127.0.0.1
        ("::a00:1", False),  # IPv4-compatible 10.0.0.1
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of the cloud metadata address
        ("64:ff9b:1::808:808", False),  # local-use NAT64: the site decides
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2002:c0a8:101::1", False),  # 6to4 of 192.168.1.1
        ("::ffff:0:a00:1", False),  # IPv4-translated 10.0.0.1
        ("::ffff:10.0.0.1", False),  # IPv4-mapped
        ("64:ff9b::808:808", True),  # NAT64 of a public address
        ("2002:808:808::1", True),  # 6to4 of a public address
    ],
)
def test_private_addresses_hidden_in_ipv6_transition_prefixes(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.usefixtures("private_ok")
@pytest.mark.parametrize("location", ["http://[::1", "http://exa mple.org/", "http://:80/"])
def test_a_malformed_redirect_is_a_fetch_error(feed_server: FeedServer, location: str) -> None:
    url = feed_server.redirect("/moved/", location)
    with pytest.raises(FetchError, match=r"(?i)location|feed URL"):
        fetch_feed(url)


@pytest.mark.usefixtures("app_env", "private_ok")
def test_poll_all_records_a_broken_feed_and_polls_the_others(
    feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = feed_server.redirect("/bad/", "http://[::1")
    good = feed_server.serve("/good/", fixture("wordpress-tag.xml"))
    with session_scope() as session:
        bad_id = feeds.add_feed(session, bad, "", 900, 0).id
        good_id = feeds.add_feed(session, good, "", 900, 0).id

    # A failure nobody foresaw inside one feed's poll stops only that feed.
    def parse(content: bytes, url: str, content_type: str | None) -> object:
        if url == good and not getattr(parse, "broke", False):
            parse.broke = True  # type: ignore[attr-defined]
            raise RuntimeError("parser exploded")
        return real_parse(content, url, content_type)

    monkeypatch.setattr(feeds, "parse_feed", parse)
    other = feed_server.serve("/other/", fixture("wordpress-tag.xml"))
    with session_scope() as session:
        other_id = feeds.add_feed(session, other, "", 900, 0).id

    result = runner.invoke(app, ["feeds", "poll", "--all"])
    assert result.exit_code == 1
    with session_scope() as session:
        rows = {f.id: f for f in session.scalars(select(Feed))}
    assert "location" in (rows[bad_id].last_error or "").lower()
    assert "parser exploded" in (rows[good_id].last_error or "")
    assert rows[other_id].last_error is None and rows[other_id].last_polled_at is not None
