"""The shared digest rendering: Jinja2 -> MJML -> HTML -> inlined CSS, and its text twin.

Everything runs the real pipeline (templates, MRML, premailer); only the network edge
is faked, in the test that proves premailer never reaches it.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from mjml import mjml2html
from premailer import Premailer

import subscribers.models  # noqa: F401  (maps Subscriber, which Delivery refers to)
from newsletter.delivery.personalise import FIELDS, placeholder
from newsletter.delivery.rendering import RenderedDigest, content_key, inline_css, render_digest
from newsletter.models import Cadence, Post, Tag

PYTHON = Tag(id=1, slug="python", name="Python")
CSS = Tag(id=2, slug="css", name="CSS & Design")
EMAIL = Tag(id=3, slug="email", name="E-mail")


def make_post(
    post_id: int,
    *,
    title: str,
    url: str,
    author: str | None,
    summary: str,
    published_at: dt.datetime,
    tags: list[Tag],
) -> Post:
    post = Post(
        id=post_id,
        guid=url,
        title=title,
        url=url,
        author=author,
        summary=summary,
        published_at=published_at,
    )
    post.tags = tags
    return post


def sample_posts() -> list[Post]:
    return [
        make_post(
            1,
            title="Flexbox in email clients, revisited",
            url="https://blog.example.org/posts/flexbox-email",
            author="Ada Lovelace",
            summary="Which clients honour flexbox today, and what to fall back on.",
            published_at=dt.datetime(2026, 2, 27, 9, 30, tzinfo=dt.UTC),
            tags=[CSS, EMAIL],
        ),
        make_post(
            2,
            title="Structural pattern matching for parsers",
            url="https://blog.example.org/posts/match-parsers?ref=digest&x=1",
            author="Guido Example",
            summary="Writing a small parser with match statements instead of if chains.",
            published_at=dt.datetime(2026, 3, 1, 18, 0, tzinfo=dt.UTC),
            tags=[PYTHON],
        ),
        make_post(
            3,
            title="Dark mode for newsletters",
            url="https://blog.example.org/posts/dark-mode",
            author=None,
            summary="",
            published_at=dt.datetime(2026, 2, 20, 7, 0, tzinfo=dt.UTC),
            tags=[CSS],
        ),
    ]


@dataclass
class ParsedHtml:
    """What an HTML parser sees: elements with attributes, anchor texts, <style> contents."""

    start_tags: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    anchors: list[tuple[str | None, str]] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.result = ParsedHtml()
        self._anchor: tuple[str | None, list[str]] | None = None
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.result.start_tags.append((tag, dict(attrs)))
        if tag == "a":
            self._anchor = (dict(attrs).get("href"), [])
        elif tag == "style":
            self._in_style = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._anchor is not None:
            href, parts = self._anchor
            self.result.anchors.append((href, " ".join("".join(parts).split())))
            self._anchor = None
        elif tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.result.styles.append(data)
            return
        self.result.text.append(data)
        if self._anchor is not None:
            self._anchor[1].append(data)


def parse_html(html: str) -> ParsedHtml:
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return collector.result


@pytest.fixture
def digest(settings_env: dict[str, str]) -> RenderedDigest:
    return render_digest(sample_posts(), Cadence.DAILY)


def test_html_is_a_standards_mode_responsive_document(digest: RenderedDigest) -> None:
    html = digest.html
    assert html.startswith("<!DOCTYPE html>"), html[:60]
    parsed = parse_html(html)
    viewports = [a for t, a in parsed.start_tags if t == "meta" and a.get("name") == "viewport"]
    assert viewports, "no viewport meta tag"
    assert "width=device-width" in (viewports[0].get("content") or "")


def test_css_is_inlined_but_media_queries_stay_in_a_style_block(digest: RenderedDigest) -> None:
    parsed = parse_html(digest.html)
    css = "\n".join(parsed.styles)
    # The template's own mobile rule survives in <style> (it cannot be inlined).
    assert "@media only screen and (max-width: 480px)" in css
    assert ".post-title { font-size: 20px !important" in css
    # Class rules from <mj-style> are copied onto the elements as style attributes.
    chips = [a for t, a in parsed.start_tags if t == "span" and a.get("class") == "chip"]
    assert chips, "no tag chips rendered"
    for attrs in chips:
        style = attrs.get("style") or ""
        assert "border-radius:999px" in style.replace(" ", ""), style
        assert "background:#e0e7ff" in style.replace(" ", ""), style
    assert sum(1 for _, a in parsed.start_tags if a.get("style")) > 20


def test_html_loads_nothing_from_outside(digest: RenderedDigest) -> None:
    lowered = digest.html.lower()
    assert "<link" not in lowered, "a <link> would fetch a stylesheet (e.g. Google Fonts)"
    assert "@import" not in lowered
    parsed = parse_html(digest.html)
    assert not [a for t, a in parsed.start_tags if t in {"link", "script", "img", "iframe"}]


def test_every_post_is_shown_with_its_details_and_a_read_more_button(
    digest: RenderedDigest,
) -> None:
    parsed = parse_html(digest.html)
    visible_text = " ".join(" ".join(parsed.text).split())
    for post in sample_posts():
        assert post.title in visible_text
        assert (post.url, post.title) in parsed.anchors, f"title of {post.id} is not a link"
        assert (post.url, "Read more") in parsed.anchors, f"no Read more button for {post.id}"
        assert f"{post.published_at.day} {post.published_at:%b %Y}" in visible_text
        if post.author:
            assert post.author in visible_text
        if post.summary:
            assert post.summary in visible_text
    chip_names = _chip_texts(digest.html)
    assert chip_names == ["Python", "CSS & Design", "E-mail", "CSS & Design"]
    # Newest first: 1 Mar, then 27 Feb, then 20 Feb.
    titles = [t for h, t in parsed.anchors if t not in {"Read more"} and h and "blog." in h]
    assert titles == [
        "Structural pattern matching for parsers",
        "Flexbox in email clients, revisited",
        "Dark mode for newsletters",
    ]


def _chip_texts(html: str) -> list[str]:
    """The text of every `<span class="chip">`, in document order."""

    class Chips(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.names: list[str] = []
            self._inside = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self._inside = tag == "span" and dict(attrs).get("class") == "chip"
            if self._inside:
                self.names.append("")

        def handle_endtag(self, tag: str) -> None:
            self._inside = False

        def handle_data(self, data: str) -> None:
            if self._inside:
                self.names[-1] += data

    parser = Chips()
    parser.feed(html)
    return parser.names


def test_header_and_footer_hold_every_personal_placeholder(digest: RenderedDigest) -> None:
    for name in FIELDS:
        assert placeholder(name) in digest.html, name
    parsed = parse_html(digest.html)
    hrefs = {h for h, _ in parsed.anchors}
    assert "@@NL_UNSUBSCRIBE_URL@@" in hrefs
    assert "@@NL_PREFERENCES_URL@@" in hrefs
    for name in ("TAGS", "GREETING", "REASON", "PREFERENCES_URL", "UNSUBSCRIBE_URL"):
        assert placeholder(name) in digest.text, name


def test_text_part_holds_every_title_and_url(digest: RenderedDigest) -> None:
    for post in sample_posts():
        assert post.title in digest.text
        assert post.url in digest.text
    assert "&amp;" not in digest.text, "the text part must not be HTML-escaped"


def test_subject_names_the_post_or_counts_them(settings_env: dict[str, str]) -> None:
    posts = sample_posts()
    one = render_digest(posts[:1], Cadence.IMMEDIATE)
    assert one.subject == posts[0].title
    many = render_digest(posts, Cadence.WEEKLY)
    assert many.subject == "3 new posts in @@NL_TAGS@@"
    assert "\n" not in many.subject


def test_an_empty_digest_is_refused(settings_env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        render_digest([], Cadence.DAILY)


HOSTILE_TITLE = "<script>alert(1)</script> Totally normal title"
HOSTILE_SUMMARY = '"><img src=x onerror=alert(2)> and <b onmouseover="alert(3)">bold</b>'
HOSTILE_URL = 'https://evil.example.org/a"onmouseover="alert(4)'


def test_hostile_titles_summaries_authors_and_tags_are_escaped(
    settings_env: dict[str, str],
) -> None:
    post = make_post(
        7,
        title=HOSTILE_TITLE,
        url=HOSTILE_URL,
        author='<script src="https://evil.example.org/x.js"></script>',
        summary=HOSTILE_SUMMARY,
        published_at=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
        tags=[Tag(id=9, slug="xss", name="<img src=x onerror=alert(5)>")],
    )
    html = render_digest([post], Cadence.IMMEDIATE).html
    parsed = parse_html(html)
    tags = {t for t, _ in parsed.start_tags}
    assert "script" not in tags
    assert "img" not in tags
    assert "b" not in tags
    for tag, attrs in parsed.start_tags:
        for name in attrs:
            assert not name.startswith("on"), f"live event handler {name} on <{tag}>"
    assert "<script" not in html.lower()
    # The text itself is kept, as text: what the reader sees is the literal title.
    visible = " ".join(parsed.text)
    assert HOSTILE_TITLE in visible
    assert "onerror=alert(2)" in visible
    # The quote in the URL stays inside the href value.
    assert (HOSTILE_URL, "Read more") in parsed.anchors


def test_content_key_depends_on_post_ids_and_cadence_only() -> None:
    key = content_key(Cadence.DAILY, [3, 1, 2])
    assert key == content_key(Cadence.DAILY, [1, 2, 3])
    assert key == content_key(Cadence.DAILY, (2, 3, 1))
    assert len(key) == 64
    assert key != content_key(Cadence.WEEKLY, [1, 2, 3])
    assert key != content_key(Cadence.IMMEDIATE, [1, 2, 3])
    assert key != content_key(Cadence.DAILY, [1, 2])
    assert key != content_key(Cadence.DAILY, [1, 23])
    assert content_key(Cadence.DAILY, [12, 3]) != content_key(Cadence.DAILY, [1, 23])


# --- premailer must never reach the network ---------------------------------------------


class _RecordingServer:
    """A real HTTP server on loopback that records every request and answers slowly."""

    def __init__(self, delay: float) -> None:
        hits: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                time.sleep(delay)
                body = b"body { color: red; }"
                self.send_response(200)
                self.send_header("Content-Type", "text/css")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.hits = hits
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _mjml_fetching_from(base: str) -> str:
    """MJML whose HTML has a font <link>, a font @import and a stylesheet @import."""
    return f"""
<mjml>
  <mj-head>
    <mj-font name="X" href="{base}/font.css" />
    <mj-attributes><mj-all font-family="X, Arial, sans-serif" /></mj-attributes>
    <mj-style>@import url({base}/style.css); .lead {{ color: #123456; }}</mj-style>
  </mj-head>
  <mj-body>
    <mj-section><mj-column>
      <mj-text css-class="lead">Hello</mj-text>
    </mj-column></mj-section>
  </mj-body>
</mjml>
"""


@pytest.fixture
def slow_server() -> Iterator[_RecordingServer]:
    with _RecordingServer(delay=5.0) as server:
        yield server


def test_inline_css_makes_no_network_request(
    slow_server: _RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    html = mjml2html(_mjml_fetching_from(slow_server.base))
    # The input really does ask for external CSS in the three ways premailer could follow.
    assert f'<link href="{slow_server.base}/font.css"' in html
    assert f"@import url({slow_server.base}/font.css)" in html
    assert f"@import url({slow_server.base}/style.css)" in html

    attempts: list[str] = []

    def refuse_urlopen(url: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(str(getattr(url, "full_url", url)))
        raise AssertionError(f"urlopen({url!r}) during inline_css")

    def refuse_requests(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        attempts.append(url)
        raise AssertionError(f"requests {method} {url} during inline_css")

    monkeypatch.setattr(urllib.request, "urlopen", refuse_urlopen)
    monkeypatch.setattr(requests.Session, "request", refuse_requests)

    started = time.monotonic()
    result = inline_css(html)
    elapsed = time.monotonic() - started

    assert attempts == []
    assert slow_server.hits == []
    assert elapsed < 2.0, f"inline_css took {elapsed:.1f}s: did it wait on the network?"
    # It still did its job: the class rule is inlined and the doctype upper-cased.
    assert "color:#123456" in result.replace(" ", "")
    assert result.startswith("<!DOCTYPE html>")


def test_the_network_check_can_see_a_fetch() -> None:
    """Control: a stock Premailer does follow the @import, so the check above is not blind."""
    with _RecordingServer(delay=0.0) as server:
        html = mjml2html(_mjml_fetching_from(server.base))
        Premailer(html, allow_network=False, keep_style_tags=True).transform()
        assert server.hits, "stock premailer fetched nothing: the harness cannot detect fetches"


def test_doctype_is_upper_cased_whatever_the_input() -> None:
    out = inline_css("<!doctype html><html><head></head><body><p>x</p></body></html>")
    assert out.startswith("<!DOCTYPE html>")
