"""A real HTTP server on a loopback port that serves feed documents, as blogs do.

Routes can be changed between polls; every request is recorded with its headers,
so tests see exactly what the poller sent (If-None-Match, If-Modified-Since, Host).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import apply_env

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "feeds"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@dataclass
class Route:
    body: bytes = b""
    content_type: str = "application/rss+xml; charset=utf-8"
    status: int = 200
    etag: str | None = None
    last_modified: str | None = None
    location: str | None = None
    # Send no Content-Length and write the body in pieces, pausing between them.
    chunk: int | None = None
    pause: float = 0.0


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class FeedServer:
    port: int = 0
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes, **options: object) -> str:
        self.routes[path] = Route(body=body, **options)  # type: ignore[arg-type]
        return self.url(path)

    def redirect(self, path: str, to: str, status: int = 302) -> str:
        self.routes[path] = Route(status=status, location=to)
        return self.url(path)

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]


def _handler(server_state: FeedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            server_state.requests.append(Seen(self.path, headers))
            route = server_state.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            if route.location is not None:
                self.send_response(route.status)
                self.send_header("Location", route.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if (route.etag and headers.get("if-none-match") == route.etag) or (
                route.last_modified
                and not route.etag
                and headers.get("if-modified-since") == route.last_modified
            ):
                self.send_response(304)
                self.end_headers()
                return
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            if route.etag:
                self.send_header("ETag", route.etag)
            if route.last_modified:
                self.send_header("Last-Modified", route.last_modified)
            if route.chunk is None:
                self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            try:
                if route.chunk is None:
                    self.wfile.write(route.body)
                    return
                for start in range(0, len(route.body), route.chunk):
                    self.wfile.write(route.body[start : start + route.chunk])
                    self.wfile.flush()
                    time.sleep(route.pause)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    state = FeedServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def private_ok(monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str]) -> None:
    """Let the fetcher reach the loopback test server, as an intranet admin would."""
    apply_env(monkeypatch, NEWSLETTER_ALLOW_PRIVATE_FEEDS="true")
