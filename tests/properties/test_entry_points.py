"""Hostile input at every way in: refused cleanly, or stored faithfully, and mail goes on.

For each entry point (CLI arguments, API and webhook JSON, CSV rows, feed
documents, the sign-up and preference forms) the property is the same:

- the input is refused with a clear 4xx or error message (exit status 2, or 1 for
  a report with rejected rows) and nothing is written, or it is accepted and stored
  as the documented cleaning makes it (no character XML or HTML forbids, no line
  break or bidi control in one-line text);
- no 500, no traceback;
- afterwards a control post reaches a bystander reader exactly once through the
  normal `digests run`, and no delivery is left stuck in `sending`.

Every example starts from empty tables: the fixtures only provide the services
(SQLite and PostgreSQL, a real SMTP server, a real HTTP server for feeds).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from newsletter import tokens
from newsletter.db import session_scope
from newsletter.models import Delivery, DeliveryStatus, Feed, Post, Tag
from newsletter.posts import PostInput, add_post
from newsletter.text import clean_text
from newsletter.web.app import create_app
from newsletter.webhooks import SIGNATURE_HEADER, sign
from subscribers.models import Subscriber
from tests.cli_runner import run
from tests.conftest import ScriptedHandler, apply_env, truncate
from tests.factories import make_subscriber, make_tags
from tests.newsletter.feeds.conftest import FeedServer, feed_server, private_ok
from tests.properties.conftest import hostile_text

__all__ = ["feed_server", "private_ok"]  # fixtures used by name below

BYSTANDER = "bystander@example.org"
WEBHOOK_SECRET = "whsec-property-0123456789"
_serial = itertools.count(1)


# --- the world every example starts from, and the property that must hold after it ----


def fresh_world(database_url: str, smtp: ScriptedHandler) -> None:
    """Empty tables, one bystander who follows `control`, an empty mailbox."""
    truncate(database_url)
    smtp.messages.clear()
    smtp.replies.clear()
    make_subscriber(BYSTANDER, "control")


def count(model: type) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def snapshot() -> dict[str, int]:
    return {m.__name__: count(m) for m in (Post, Tag, Subscriber, Feed, Delivery)}


def assert_clean_one_line(value: str) -> None:
    """What one-line text may hold once stored: nothing forbidden, no break, no bidi."""
    assert clean_text(value) == value, repr(value)
    assert not any(unicodedata.category(c) == "Cc" for c in value), repr(value)
    assert not any(c in value for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def assert_others_served(smtp: ScriptedHandler) -> None:
    """A control post reaches the bystander exactly once; nothing is left in `sending`."""
    n = next(_serial)
    title = f"Control post {n}"
    before = len(smtp.messages)
    with session_scope() as session:
        add_post(
            session,
            PostInput(title=title, url=f"https://blog.example.org/control/{n}/", tags="control"),
        )
    code, out, err = run("digests", "run")
    assert code == 0, (out, err)
    assert "Traceback" not in out + err
    got = [m for m in smtp.messages[before:] if BYSTANDER in m.recipients]
    assert len(got) == 1, [m.recipients for m in smtp.messages[before:]]
    assert title in str(got[0].parsed()["Subject"]) or title in got[0].data.decode(
        "utf-8", "replace"
    )
    with session_scope() as session:
        stuck = session.scalar(
            select(func.count()).where(Delivery.status == DeliveryStatus.SENDING)
        )
    assert stuck == 0


def assert_refused_cleanly(code: int, out: str, err: str, before: dict[str, int]) -> None:
    assert code == 2, (code, out, err)
    assert err.strip(), "a refusal must say why"
    assert "Traceback" not in out + err
    assert snapshot() == before


# --- strategies ------------------------------------------------------------------------

text = hostile_text()
short_text = hostile_text(huge=False)
urls = st.one_of(
    short_text.map(lambda s: "https://blog.example.org/p/" + s),
    short_text,
    st.sampled_from(["javascript:alert(1)", "https://blog.example.org/\ufffe", "http://[::1"]),
)
tag_lists = st.lists(short_text, max_size=4).map(", ".join)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(short_text, inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def post_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """Post-shaped JSON: the right keys, hostile values of any type now and then."""
    value = st.one_of(text, json_values) if draw(st.booleans()) else text
    payload: dict[str, Any] = {
        "title": draw(value),
        "url": draw(urls),
        "tags": draw(st.one_of(st.lists(short_text, max_size=4), json_values)),
        "summary": draw(value),
        "body": draw(value),
    }
    if draw(st.booleans()):
        payload["author"] = draw(value)
    if draw(st.booleans()):
        payload["published_at"] = draw(st.one_of(short_text, json_values))
    if draw(st.booleans()):
        payload["guid"] = draw(value)
    return payload


def raw_quote(value: object) -> str:
    """Percent-encoded bytes of any text, lone surrogates included."""
    return quote(str(value).encode("utf-8", "surrogatepass"), safe="")


def header_bytes(value: str) -> bytes:
    """A header value as bytes HTTP can carry: controls and line breaks dropped (no
    client can send them), everything else as UTF-8."""
    raw = value.encode("utf-8", "surrogatepass")
    return bytes(b for b in raw if (b >= 0x20 and b != 0x7F) or b == 0x09)


def dumps(value: Any) -> bytes:
    """JSON as a hostile client writes it: NaN allowed, lone surrogates escaped."""
    return json.dumps(value, allow_nan=True).encode()


# --- CLI ----------------------------------------------------------------------------


@given(title=text, url=urls, tags=tag_lists, summary=text, author=text)
def test_cli_posts_add(
    app_env: str, smtp: ScriptedHandler, title: str, url: str, tags: str, summary: str, author: str
) -> None:
    fresh_world(app_env, smtp)
    before = snapshot()
    args = ["posts", "add", "--title", title, "--url", url, "--tags", tags]
    code, out, err = run(*args, "--summary", summary, "--author", author)
    if code == 0:
        with session_scope() as session:
            [post] = session.scalars(select(Post))
            assert post.title and len(post.title) <= 500
            for value in (post.title, post.author or "", post.url, *(t.name for t in post.tags)):
                assert_clean_one_line(value)
            assert clean_text(post.summary) == post.summary
    else:
        assert_refused_cleanly(code, out, err, before)
    assert_others_served(smtp)


@given(
    email=st.one_of(text, short_text.map(lambda s: s + "@example.org")),
    name=text,
    timezone=st.one_of(short_text, st.sampled_from(["Europe/Lisbon", "UTC", "Factory"])),
    hour=st.one_of(short_text, st.sampled_from(["\u00b2", "9" * 5000, "-1", "24", "7"])),
    frequency=st.one_of(short_text, st.sampled_from(["immediate", "daily", "weekly"])),
)
def test_cli_subscribers_add(
    app_env: str,
    smtp: ScriptedHandler,
    email: str,
    name: str,
    timezone: str,
    hour: str,
    frequency: str,
) -> None:
    fresh_world(app_env, smtp)
    before = snapshot()
    code, out, err = run(
        "subscribers", "add", email, "--tags", "control", "--name", name,
        "--timezone", timezone, "--send-hour", hour, "--frequency", frequency,
    )  # fmt: skip
    if code == 0:
        with session_scope() as session:
            added = session.scalars(select(Subscriber).where(Subscriber.email != BYSTANDER)).one()
            assert_clean_one_line(added.name)
            assert len(added.name) <= 200
    else:
        # Typer refuses a non-integer --send-hour itself, with its usage error.
        assert code == 2 and "Traceback" not in out + err and snapshot() == before
    assert_others_served(smtp)


# --- REST API and webhook ---------------------------------------------------------------


@pytest.fixture
def api(app_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    from newsletter.apitokens import create_token

    apply_env(monkeypatch, NEWSLETTER_WEBHOOK_SECRET=WEBHOOK_SECRET)
    with session_scope() as session:
        plain, _ = create_token(session, "properties")
    client = TestClient(create_app(), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {plain}"
    with client:
        yield client


def api_reset(database_url: str, smtp: ScriptedHandler, client: TestClient) -> None:
    """A fresh world that keeps a working API token."""
    from newsletter.apitokens import create_token

    fresh_world(database_url, smtp)
    with session_scope() as session:
        plain, _ = create_token(session, "properties")
    client.headers["Authorization"] = f"Bearer {plain}"


def check_post_response(status: int, body: str, before: dict[str, int]) -> None:
    assert status < 500, body
    if status in (200, 201):
        with session_scope() as session:
            for post in session.scalars(select(Post)):
                for value in (post.title, post.author or "", post.url, post.guid):
                    assert_clean_one_line(value)
                assert clean_text(post.summary) == post.summary
                assert clean_text(post.body_html) == post.body_html
    else:
        assert 400 <= status < 500
        assert "Traceback" not in body
        assert snapshot() == before


@given(payload=st.one_of(post_payloads(), json_values))
def test_api_create_post(
    app_env: str, smtp: ScriptedHandler, api: TestClient, payload: Any
) -> None:
    api_reset(app_env, smtp, api)
    before = snapshot()
    response = api.post(
        "/api/posts", content=dumps(payload), headers={"Content-Type": "application/json"}
    )
    check_post_response(response.status_code, response.text, before)
    assert_others_served(smtp)


@given(
    offset=st.one_of(st.integers(min_value=-(2**64), max_value=2**64), short_text),
    limit=st.one_of(st.integers(min_value=-(2**64), max_value=2**64), short_text),
    post_id=st.one_of(st.integers(min_value=-(2**64), max_value=2**64), short_text),
)
def test_api_numbers_and_ids(
    app_env: str, smtp: ScriptedHandler, api: TestClient, offset: Any, limit: Any, post_id: Any
) -> None:
    api_reset(app_env, smtp, api)
    query = f"offset={raw_quote(offset)}&limit={raw_quote(limit)}"
    for response in (
        api.get(f"/api/posts?{query}"),
        api.get(f"/api/tags?{query}"),
        api.get(f"/api/posts/{raw_quote(post_id)}"),
        api.patch(f"/api/posts/{raw_quote(post_id)}", json={"title": "x"}),
    ):
        assert response.status_code < 500, response.text


@given(
    body=st.one_of(
        post_payloads().map(dumps),
        json_values.map(dumps),
        st.integers(min_value=1, max_value=300_000).map(lambda n: b"[" * n + b"]" * n),
        st.binary(max_size=64),
    ),
    timestamp=st.one_of(st.none(), short_text),
)
def test_webhook(
    app_env: str, smtp: ScriptedHandler, api: TestClient, body: bytes, timestamp: str | None
) -> None:
    api_reset(app_env, smtp, api)
    before = snapshot()
    header = sign(WEBHOOK_SECRET, body)
    if timestamp is not None:
        header = f"t={timestamp},v1=" + header.split("v1=", 1)[1]
    response = api.post(
        "/hooks/posts",
        content=body,
        headers={
            "Content-Type": "application/json",
            # Raw bytes: what reaches the server is whatever the client wrote.
            SIGNATURE_HEADER: header_bytes(header),
        },
    )
    check_post_response(response.status_code, response.text, before)
    assert_others_served(smtp)


# --- CSV import -------------------------------------------------------------------------


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    rows = draw(
        st.lists(
            st.tuples(
                st.one_of(text, short_text.map(lambda s: f"r{s}@example.org")),
                text,
                st.one_of(short_text, st.just("control")).map(lambda s: f"control, {s}"),
                st.one_of(short_text, st.sampled_from(["immediate", "daily", "weekly"])),
                st.one_of(short_text, st.just("Europe/Lisbon")),
                st.one_of(short_text, st.sampled_from(["7", "\u00b2", "9" * 5000])),
            ),
            min_size=1,
            max_size=5,
        )
    )
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["email", "name", "tags", "cadence", "timezone", "send_hour"])
    writer.writerows(rows)
    raw = out.getvalue().encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        return raw
    # A cell of a megabyte, as a broken export or an attacker writes it.
    return raw + b'"' + b"x" * (1024 * 1024 + 10) + b'",n,control,immediate,UTC,8\n'


@given(data=csv_files())
def test_csv_import(app_env: str, smtp: ScriptedHandler, tmp_path: Path, data: bytes) -> None:
    fresh_world(app_env, smtp)
    before = snapshot()
    path = tmp_path / "list.csv"
    path.write_bytes(data)
    code, out, err = run("subscribers", "import", str(path), "--create-tags")
    assert "Traceback" not in out + err
    assert code in (0, 1, 2), (code, out, err)
    if code == 2:
        assert err.strip() and snapshot() == before
    with session_scope() as session:
        for subscriber in session.scalars(select(Subscriber)):
            assert_clean_one_line(subscriber.name)
            assert_clean_one_line(subscriber.email)
    assert_others_served(smtp)
    # Every reader the import made active and following `control` got it too, or
    # has a failure recorded with its reason.
    with session_scope() as session:
        for delivery in session.scalars(select(Delivery)):
            assert delivery.status is not DeliveryStatus.SENDING
            if delivery.status is DeliveryStatus.FAILED:
                assert delivery.last_error


# --- feeds ------------------------------------------------------------------------------


def _xml_text(value: str) -> str:
    """Text as a careless feed writes it: escaped, with forbidden characters as references."""
    out = []
    for char in escape(value):
        code = ord(char)
        allowed = char in "\t\n\r" or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD
        out.append(char if allowed and code <= 0x10FFFF else f"&#{code};")
    return "".join(out)


@st.composite
def feed_documents(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    items = []
    for n in range(draw(st.integers(1, 3))):
        title, summary, author, tag = (draw(text) for _ in range(4))
        link = draw(urls)
        items.append(
            f"<item><title>{_xml_text(title)}</title><link>{_xml_text(link)}</link>"
            f'<guid isPermaLink="false">g{n}-{_xml_text(draw(short_text))}</guid>'
            f"<author>{_xml_text(author)}</author><category>{_xml_text(tag)}</category>"
            f"<description>{_xml_text(summary)}</description></item>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
        "<title>Hostile</title><link>https://blog.example.org/</link><description>d</description>"
        + "".join(items)
        + "</channel></rss>"
    ).encode("utf-8", "surrogatepass")


EMPTY_FEED = (
    b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
    b"<link>https://blog.example.org/</link><description>d</description></channel></rss>"
)


@pytest.mark.usefixtures("private_ok")
@given(document=feed_documents())
def test_feed_poll(
    app_env: str, smtp: ScriptedHandler, feed_server: FeedServer, document: bytes
) -> None:
    fresh_world(app_env, smtp)
    make_subscriber("feedreader@example.org", "from-feed")
    path = f"/feed-{next(_serial)}.xml"
    url = feed_server.serve(path, EMPTY_FEED)
    code, out, err = run("feeds", "add", url, "--tags", "from-feed")
    assert code == 0, (out, err)
    feed_server.serve(path, document)
    code, out, err = run("feeds", "poll", "--all")
    assert "Traceback" not in out + err
    assert code in (0, 1), (code, out, err)
    with session_scope() as session:
        feed = session.scalars(select(Feed)).one()
        if code == 1:
            assert feed.last_error, "a failed poll is recorded on the feed"
        for post in session.scalars(select(Post)):
            for value in (post.title, post.author or "", post.url, *(t.name for t in post.tags)):
                assert_clean_one_line(value)
            assert clean_text(post.summary) == post.summary
    assert_others_served(smtp)
    with session_scope() as session:
        for delivery in session.scalars(select(Delivery)):
            assert delivery.status is not DeliveryStatus.SENDING


# --- forms ------------------------------------------------------------------------------


def form_body(fields: list[tuple[str, str]]) -> bytes:
    """application/x-www-form-urlencoded, lone surrogates and all, as raw bytes."""
    return "&".join(
        f"{quote(k)}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in fields
    ).encode("ascii")


@st.composite
def choice_fields(draw: st.DrawFn) -> list[tuple[str, str]]:
    tags = draw(st.lists(st.one_of(st.just("control"), short_text), max_size=3))
    fields = [("tags", t) for t in tags]
    fields += [
        ("name", draw(text)),
        ("cadence", draw(st.one_of(short_text, st.sampled_from(["daily", "weekly"])))),
        ("timezone", draw(st.one_of(short_text, st.just("Europe/Berlin")))),
        ("send_hour", draw(st.one_of(short_text, st.sampled_from(["\u00b2", "9" * 5000, "8"])))),
        ("send_weekday", draw(st.one_of(short_text, st.sampled_from(["\u00b2", "2"])))),
    ]
    return fields


@given(
    email=st.one_of(
        text,
        st.sampled_from(
            [
                "t\u00ebst@example.org",
                "\uff54\uff45\uff53\uff54@example.org",
                "test@ex\u0430mple.org",
            ]
        ),
    ),
    fields=choice_fields(),
)
def test_signup_form(
    app_env: str, smtp: ScriptedHandler, email: str, fields: list[tuple[str, str]]
) -> None:
    fresh_world(app_env, smtp)
    client = TestClient(create_app(), raise_server_exceptions=False, follow_redirects=False)
    response = client.post(
        "/subscribe",
        content=form_body([("email", email), *fields]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code in (200, 303, 400, 422, 429), response.text[:500]
    assert "Traceback" not in response.text
    with session_scope() as session:
        for subscriber in session.scalars(select(Subscriber)):
            assert_clean_one_line(subscriber.name)
    assert_others_served(smtp)


@given(fields=choice_fields(), action=st.one_of(short_text, st.sampled_from(["save", "pause"])))
def test_preferences_form(
    app_env: str, smtp: ScriptedHandler, fields: list[tuple[str, str]], action: str
) -> None:
    fresh_world(app_env, smtp)
    make_tags("control, other")
    reader = make_subscriber("reader@example.org", "control, other", name="Reader")
    with session_scope() as session:
        uid = session.get(Subscriber, reader).uid  # type: ignore[union-attr]
    client = TestClient(create_app(), raise_server_exceptions=False, follow_redirects=False)
    response = client.post(
        f"/preferences/{tokens.make_token('preferences', uid)}",
        content=form_body([*fields, ("action", action)]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code in (200, 303, 400, 422), response.text[:500]
    assert "Traceback" not in response.text
    with session_scope() as session:
        stored = session.get(Subscriber, reader)
        assert stored is not None
        assert_clean_one_line(stored.name)
        assert stored.tags, "a reader always follows at least one tag"
    assert_others_served(smtp)
