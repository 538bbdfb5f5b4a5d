"""A reader's message, from a really rendered digest, held to the email package's parser.

`newsletter.delivery.mime` writes MIME by hand for speed; these tests parse its bytes with
`email.policy.default` and check what a mail client would see.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from email.message import EmailMessage
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest

from newsletter.config import get_settings
from newsletter.delivery.compose import message_for
from newsletter.delivery.mime import HeaderInjection, OutgoingMessage, new_message_id
from newsletter.delivery.rendering import content_key, render_digest
from newsletter.delivery.smtp import SmtpConfig
from newsletter.errors import InvalidInput
from newsletter.models import Cadence, Delivery, Digest, Post, Tag
from subscribers.models import Subscriber

BASE_URL = "https://news.example.org"
INJECTION = "\r\nBcc: evil@example.com"

PYTHON = Tag(id=1, slug="python", name="Python")
CAFE = Tag(id=2, slug="cafe", name="Café culture")


def make_post(post_id: int, title: str, url: str, tags: list[Tag]) -> Post:
    post = Post(
        id=post_id,
        guid=url,
        title=title,
        url=url,
        author="Zoë Ångström",
        summary=f"Summary of {title}, long enough to wrap in the plain text part of the mail.",
        published_at=dt.datetime(2026, 3, post_id, 8, 0, tzinfo=dt.UTC),
    )
    post.tags = tags
    return post


def sample_posts() -> list[Post]:
    return [
        make_post(1, "Naïve Bayes, explained over café ☕", "https://blog.example.org/p/1", [CAFE]),
        make_post(
            2,
            "Pattern matching in Python 3.12",
            "https://blog.example.org/p/2?utm=digest&lang=en",
            [PYTHON],
        ),
        make_post(
            3, "Über-long titles " + "and more " * 12, "http://old.example.org/p/3", [PYTHON]
        ),
    ]


def make_subscriber(name: str = "Zoë Ångström", tags: list[Tag] | None = None) -> Subscriber:
    subscriber = Subscriber(
        id=42,
        uid="k3yOfZoe_0123456",
        email="zoe@example.com",
        name=name,
        cadence=Cadence.DAILY,
        timezone="Europe/Paris",
        send_hour=8,
    )
    subscriber.tags = tags if tags is not None else [CAFE, PYTHON]
    return subscriber


def build(posts: list[Post], subscriber: Subscriber, cadence: Cadence = Cadence.DAILY) -> bytes:
    rendered = render_digest(posts, cadence)
    ids = [p.id for p in posts]
    digest = Digest(
        id=1,
        content_key=content_key(cadence, ids),
        cadence=cadence,
        post_ids=ids,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
    )
    settings = get_settings()
    delivery = Delivery(id=1, digest_id=1, subscriber_id=subscriber.id)
    delivery.message_id = new_message_id(settings.from_)
    message: OutgoingMessage = message_for(delivery, digest, subscriber, settings)
    assert message.recipient == subscriber.email
    assert message.sender == settings.from_
    assert message.message_id == delivery.message_id
    return message.data


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> tuple[EmailMessage, EmailMessage]:
    assert message.get_content_type() == "multipart/alternative"
    payload = message.get_payload()
    assert isinstance(payload, list)
    assert all(isinstance(p, EmailMessage) for p in payload)
    plain, html = payload
    assert isinstance(plain, EmailMessage)
    assert isinstance(html, EmailMessage)
    assert [plain.get_content_type(), html.get_content_type()] == ["text/plain", "text/html"]
    return plain, html


def raw_headers(data: bytes) -> dict[str, str]:
    """The top-level headers exactly as written (unfolded, not decoded)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    unfolded = re.sub(r"\r\n[ \t]+", " ", head)
    result: dict[str, str] = {}
    for line in unfolded.split("\r\n"):
        name, _, value = line.partition(":")
        result[name] = value.strip()
    return result


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str, str]] = []
        self.viewport: str | None = None
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"href", "src", "background", "action"}:
                self.urls.append((tag, name, value or ""))
        if tag == "meta" and dict(attrs).get("name") == "viewport":
            self.viewport = dict(attrs).get("content") or ""
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data


@pytest.fixture
def data(settings_env: dict[str, str]) -> bytes:
    return build(sample_posts(), make_subscriber())


def test_structure_is_multipart_alternative_text_then_html_in_utf8(data: bytes) -> None:
    message = parse(data)
    assert message["MIME-Version"] == "1.0"
    plain, html = parts(message)
    for part in (plain, html):
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert message.get_body(preferencelist=("html",)) is html
    assert message.get_body(preferencelist=("plain",)) is plain
    # Every line respects SMTP's limit, and every line ends in CRLF.
    lines = data.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert data.isascii()


def test_no_parser_defects_anywhere(data: bytes) -> None:
    for part in parse(data).walk():
        assert part.defects == [], (part.get_content_type(), part.defects)


def test_envelope_headers(data: bytes, settings_env: dict[str, str]) -> None:
    message = parse(data)
    for name in ("Subject", "From", "To", "Date", "Message-ID"):
        assert message[name], f"missing {name}"
        assert len(message.get_all(name) or []) == 1, f"{name} repeated"
    sender = message["From"].addresses
    assert [(a.display_name, a.addr_spec) for a in sender] == [
        ("Newsletter", "digest@news.example.org")
    ]
    date = message["Date"].datetime
    assert date is not None
    assert date.tzinfo is not None
    assert abs(dt.datetime.now(dt.UTC) - date) < dt.timedelta(minutes=5)
    assert re.fullmatch(r"<[0-9a-f]{32}@news\.example\.org>", message["Message-ID"])
    assert message["Subject"] == "3 new posts in Café culture, Python"
    assert message["Precedence"] == "bulk"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["List-Id"] == "The Digest <digest.news.example.org>"


def test_one_click_unsubscribe_headers(data: bytes) -> None:
    message = parse(data)
    unsubscribe = str(message["List-Unsubscribe"])
    assert re.fullmatch(r"<https://news\.example\.org/unsubscribe/[\w.-]+>", unsubscribe)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # The same link as the footer's Unsubscribe link.
    _, html = parts(message)
    assert unsubscribe[1:-1] in html.get_content()


def test_list_unsubscribe_is_written_as_a_plain_url_on_the_wire(data: bytes) -> None:
    raw = raw_headers(data)["List-Unsubscribe"]
    assert "=?" not in raw, raw
    assert re.fullmatch(r"<https://news\.example\.org/unsubscribe/[\w.-]+>", raw), raw


def test_non_ascii_names_and_subject_round_trip(settings_env: dict[str, str]) -> None:
    subscriber = make_subscriber(name='Zoë "Zed" Ångström, Jr. 日本')
    [post] = sample_posts()[:1]
    message = parse(build([post], subscriber))
    [to] = message["To"].addresses
    assert to.display_name == 'Zoë "Zed" Ångström, Jr. 日本'
    assert to.addr_spec == "zoe@example.com"
    assert message["Subject"] == "Naïve Bayes, explained over café ☕"
    plain, html = parts(message)
    assert 'Hi Zoë "Zed" Ångström, Jr. 日本,' in plain.get_content()
    # HTML gets the escaped form of the same name.
    assert "Hi Zoë &quot;Zed&quot; Ångström, Jr. 日本," in html.get_content()
    assert "Zoë Ångström" in plain.get_content()  # the author
    assert "Naïve Bayes, explained over café ☕" in html.get_content()


def test_html_part_is_responsive_and_every_link_is_absolute(data: bytes) -> None:
    _, html = parts(parse(data))
    body = html.get_content()
    assert body.startswith("<!DOCTYPE html>")
    links = _Links()
    links.feed(body)
    assert links.viewport is not None
    assert "width=device-width" in links.viewport
    assert "@media" in links.style
    assert links.urls, "no links at all"
    for tag, attribute, url in links.urls:
        parts_ = urlsplit(url)
        assert parts_.scheme in {"http", "https"} and parts_.netloc, (tag, attribute, url)
    hrefs = {url for _, _, url in links.urls}
    for post in sample_posts():
        assert post.url in hrefs
    assert any(u.startswith(f"{BASE_URL}/unsubscribe/") for u in hrefs)
    assert any(u.startswith(f"{BASE_URL}/preferences/") for u in hrefs)


def test_no_placeholder_is_left_anywhere(data: bytes) -> None:
    message = parse(data)
    assert "@@NL_" not in data.decode("ascii")
    for part in message.walk():
        for name, value in part.items():
            assert "@@NL_" not in str(value), name
        if not part.is_multipart():
            content = part.get_content()
            assert "@@NL_" not in content, part.get_content_type()
            assert "@@" not in content


def test_text_part_holds_every_title_and_url(data: bytes) -> None:
    plain, _ = parts(parse(data))
    text = plain.get_content()
    for post in sample_posts():
        assert post.title in text
        assert f"Read more: {post.url}" in text
    assert f"Unsubscribe: {BASE_URL}/unsubscribe/" in text
    assert f"Manage your preferences: {BASE_URL}/preferences/" in text
    assert "Hi Zoë Ångström," in text
    assert "daily at 08:00 (Europe/Paris)" in text


def test_crlf_in_the_subscriber_name_is_refused(settings_env: dict[str, str]) -> None:
    subscriber = make_subscriber(name="Mallory" + INJECTION)
    with pytest.raises(HeaderInjection):
        build(sample_posts(), subscriber)


@pytest.mark.parametrize("count", [1, 2], ids=["title-is-subject", "title-in-body"])
def test_crlf_in_a_post_title_never_makes_a_header(
    settings_env: dict[str, str], count: int
) -> None:
    posts = sample_posts()[:count]
    posts[0].title = "Innocent title" + INJECTION
    try:
        data = build(posts, make_subscriber())
    except HeaderInjection:
        return
    message = parse(data)
    for part in message.walk():
        assert part["Bcc"] is None
        assert all(name.lower() != "bcc" for name in part)
        assert part.defects == []
    head = data.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"(?im)^bcc:", head)
    assert "bcc" not in {name.lower() for name in raw_headers(data)}
    if count == 1:
        # The text survives, folded onto one line, inside the Subject.
        assert message["Subject"] == "Innocent title Bcc: evil@example.com"
    else:
        assert b"evil@example.com" not in head


def test_crlf_in_a_tag_name_never_makes_a_header(settings_env: dict[str, str]) -> None:
    hostile = Tag(id=5, slug="x", name="News" + INJECTION)
    posts = sample_posts()
    posts[0].tags = [hostile]
    try:
        data = build(posts, make_subscriber(tags=[hostile]))
    except HeaderInjection:
        return
    message = parse(data)
    assert message["Bcc"] is None
    assert not re.search(rb"(?im)^bcc:", data.split(b"\r\n\r\n", 1)[0])


# --- SMTP URLs ------------------------------------------------------------------------------


def test_smtp_url_plain() -> None:
    config = SmtpConfig.from_url("smtp://mail.example.org")
    assert config == SmtpConfig(host="mail.example.org", port=25)


def test_smtp_url_with_credentials_port_and_timeout() -> None:
    config = SmtpConfig.from_url("smtp://us%40er:p%3Ass%2Fw@mail.example.org:2525?timeout=7.5")
    assert config.host == "mail.example.org"
    assert config.port == 2525
    assert config.username == "us@er"
    assert config.password == "p:ss/w"
    assert config.timeout == 7.5
    assert not config.implicit_tls
    assert not config.starttls


def test_smtps_url_is_implicit_tls_on_465() -> None:
    config = SmtpConfig.from_url("smtps://user:secret@mail.example.org")
    assert config.implicit_tls
    assert not config.starttls
    assert config.port == 465
    assert (config.username, config.password) == ("user", "secret")


@pytest.mark.parametrize("flag", ["1", "true", "yes", "TRUE"])
def test_starttls_flag(flag: str) -> None:
    config = SmtpConfig.from_url(f"smtp://mail.example.org:587?starttls={flag}")
    assert config.starttls
    assert not config.implicit_tls
    assert config.port == 587


def test_starttls_off() -> None:
    assert not SmtpConfig.from_url("smtp://mail.example.org:587?starttls=0").starttls


@pytest.mark.parametrize(
    "url",
    [
        "",
        "mail.example.org:25",
        "http://mail.example.org",
        "smtp://",
        "smtp://:25",
        "smtp://mail.example.org:notaport",
        "smtp://mail.example.org:99999",
        "smtp://mail.example.org?timeout=soon",
    ],
)
def test_bad_smtp_url_is_invalid_input(url: str) -> None:
    with pytest.raises(InvalidInput):
        SmtpConfig.from_url(url)


# --- post text that looks like a placeholder -------------------------------------------------


def visible(text: str) -> str:
    return text.replace("\u2060", "")


def test_a_title_that_looks_like_an_unknown_placeholder_is_shown_as_is(
    settings_env: dict[str, str],
) -> None:
    posts = sample_posts()
    posts[1].title = "Templating tricks: @@NL_FOO@@ explained"
    message = parse(build(posts, make_subscriber()))
    plain, html = parts(message)
    # Shown as written (a word joiner, U+2060, invisibly separates the @@).
    assert "Templating tricks: @@NL_FOO@@ explained" in visible(plain.get_content())
    assert "Templating tricks: @@NL_FOO@@ explained" in visible(html.get_content())


def test_a_title_cannot_pull_in_the_readers_personal_values(
    settings_env: dict[str, str],
) -> None:
    [post] = sample_posts()[:1]
    post.title = "Spoof @@NL_REASON@@"
    message = parse(build([post], make_subscriber()))
    assert visible(message["Subject"]) == "Spoof @@NL_REASON@@"
    plain, _ = parts(message)
    assert "Spoof @@NL_REASON@@" in visible(plain.get_content())


def test_a_bare_cr_in_a_post_never_reaches_the_wire(settings_env: dict[str, str]) -> None:
    # Old Mac line ends from a feed: SMTP allows CR only before LF.
    posts = sample_posts()
    posts[0].summary = "First line\rsecond line"
    data = build(posts, make_subscriber())
    assert b"\r" not in data.replace(b"\r\n", b"")
    plain, _ = parts(parse(data))
    assert "First line\r\nsecond line" in plain.get_content()


@pytest.mark.parametrize(
    "name", ["Zoë Ångström", "مريم العربية", "שלום עליכם", "Emoji 😀🎉 Fan", 'Zoë "Zed", Jr.']
)
def test_a_non_ascii_display_name_reads_back_as_written(
    settings_env: dict[str, str], name: str
) -> None:
    message = parse(build(sample_posts(), make_subscriber(name=name)))
    [to] = message["To"].addresses
    assert (to.display_name, to.addr_spec) == (name, "zoe@example.com")
    assert message["To"].defects == ()
    plain, _ = parts(message)
    assert f"Hi {name}," in plain.get_content()
