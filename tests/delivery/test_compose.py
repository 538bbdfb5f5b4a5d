"""A reader's copy from the compiled digest against the one-off path.

`compose.message_for` builds a copy from the digest's compiled form (encoded once,
with holes); `fill` + `mime.build_message` builds the same message whole. Parsed by
the email package, both must carry the same headers (but Date and the boundary) and
byte-equal decoded bodies, for every kind of reader and value.
"""

from __future__ import annotations

import binascii
import datetime as dt
import email
import email.policy
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter import tokens
from newsletter.config import Settings, get_settings
from newsletter.delivery import compose
from newsletter.delivery.compose import (
    compiled,
    message_for,
    personal_values,
    whole_message,
)
from newsletter.delivery.mime import (
    HeaderInjection,
    OutgoingMessage,
    address_line,
    format_address,
    qp,
    qp_piece,
)
from newsletter.delivery.personalise import fill
from newsletter.delivery.rendering import render_digest
from newsletter.delivery.smtp import dot_stuffed
from newsletter.models import Cadence, Delivery, Digest, Post, Tag
from subscribers.models import Subscriber
from tests.conftest import apply_env

PYTHON = Tag(id=1, slug="python", name="Python")
CAFE = Tag(id=2, slug="cafe", name="Café culture")
INJECTION = "\r\nBcc: evil@example.com"


def make_post(post_id: int, title: str, tags: list[Tag], summary: str | None = None) -> Post:
    post = Post(
        id=post_id,
        guid=f"https://blog.example.org/p/{post_id}",
        title=title,
        url=f"https://blog.example.org/p/{post_id}?utm=digest&lang=en",
        author="Zoë Ångström",
        summary=summary or f"Summary of {title}, long enough to wrap in the text part. " * 3,
        published_at=dt.datetime(2026, 3, post_id, 8, 0, tzinfo=dt.UTC),
    )
    post.tags = tags
    return post


def make_digest(posts: list[Post] | None = None) -> Digest:
    posts = posts or [
        make_post(1, "Naïve Bayes, explained over café ☕", [CAFE]),
        make_post(2, "Pattern matching in Python 3.12", [PYTHON]),
        make_post(3, "שלום: right-to-left titles, and = signs", [PYTHON]),
    ]
    rendered = render_digest(posts, Cadence.DAILY)
    return Digest(
        id=1,
        cadence=Cadence.DAILY,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
    )


def make_reader(
    name: str = "Ana Lima", email_: str = "ana@example.com", tags: list[Tag] | None = None
) -> Subscriber:
    reader = Subscriber(
        id=7,
        uid="k3yOfAna_0123456",
        email=email_,
        name=name,
        cadence=Cadence.DAILY,
        timezone="Europe/Lisbon",
        send_hour=8,
    )
    reader.tags = tags if tags is not None else [CAFE, PYTHON]
    return reader


def delivery() -> Delivery:
    return Delivery(id=1, message_id="<0123456789abcdef@news.example.org>")


def one_off(
    digest: Digest, reader: Subscriber, config: Settings, values: dict[str, str]
) -> OutgoingMessage:
    """Today's whole-message path: substitution, then the MIME writer from scratch."""
    return whole_message(delivery(), digest, reader, config, values)


def parse(data: bytes) -> EmailMessage:
    if data.isascii():
        message = email.message_from_bytes(data, policy=email.policy.default)
    else:  # SMTPUTF8: UTF-8 headers (RFC 6532)
        message = email.message_from_string(data.decode("utf-8"), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def headers(message: EmailMessage) -> list[tuple[str, str]]:
    """Every header decoded, but Date (per copy) and the boundary (per digest)."""
    result = []
    for name, value in message.items():
        if name == "Date":
            continue
        if name == "Content-Type":
            value = message.get_content_type()
        result.append((name, str(value)))
    return result


def bodies(message: EmailMessage) -> list[tuple[str, bytes]]:
    result = []
    for part in message.walk():
        assert part.defects == [], (part.get_content_type(), part.defects)
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            result.append((part.get_content_type(), payload))
    return result


def assert_well_formed(data: bytes, smtputf8: bool = False) -> None:
    assert b"\n" not in data.replace(b"\r\n", b""), "a bare LF"
    assert b"\r" not in data.replace(b"\r\n", b""), "a bare CR"
    if not smtputf8:
        assert data.isascii()
    head, body = data.split(b"\r\n\r\n", 1)
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    # Quoted-printable: every body line within RFC 2045's 76 characters.
    assert all(len(line) <= 76 for line in body.split(b"\r\n")), max(body.split(b"\r\n"), key=len)


def lines(text: str) -> str:
    """`text` with every line break as LF (a bare CR goes out as a line break)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def assert_same_message(
    digest: Digest, reader: Subscriber, values: dict[str, str] | None = None
) -> OutgoingMessage:
    """message_for's copy against the one-off build of the same copy."""
    config = get_settings()
    values = values or personal_values(reader, config)
    copy = message_for(delivery(), digest, reader, config, dict(values))
    whole = one_off(digest, reader, config, values)
    assert (copy.sender, copy.recipient, copy.message_id, copy.smtputf8) == (
        whole.sender,
        whole.recipient,
        whole.message_id,
        whole.smtputf8,
    )
    assert_well_formed(copy.data, copy.smtputf8)
    if copy.wire is not None:
        # The transport writes this without scanning the copy for dot lines.
        assert copy.wire == dot_stuffed(copy.data)[:-3]
    parsed, reference = parse(copy.data), parse(whole.data)
    assert headers(parsed) == headers(reference)
    assert parsed["Date"].datetime is not None
    assert bodies(parsed) == bodies(reference)
    # And the bodies are exactly what substitution gives.
    plain, html = (lines(part.get_content()) for part in parsed.iter_parts())
    assert plain == lines(fill(digest.text, values, escape=False))
    assert html == lines(fill(digest.html, values, escape=True))
    return copy


@pytest.fixture
def config(settings_env: dict[str, str]) -> Iterator[Settings]:
    yield get_settings()


@pytest.fixture
def digest(config: Settings) -> Digest:
    return make_digest()


def test_the_digest_compiles_and_a_copy_fills_its_holes(digest: Digest, config: Settings) -> None:
    template = compiled(digest, config)
    assert template is not None
    keys = {key for _, key in template.holes}
    assert {"To", "Subject", "Date", "Message-ID", "List-Unsubscribe"} <= keys
    assert {"text:GREETING", "html:UNSUBSCRIBE_URL"} <= keys
    copy = assert_same_message(digest, make_reader())
    assert b"@@NL_" not in copy.data


@pytest.mark.parametrize(
    "name",
    [
        "Ana Lima",
        "",
        "Zoë Ångström",
        'Zoë "Zed" Ångström, Jr. 日本',
        "مريم العربية",
        "שלום עליכם",
        "Emoji 😀🎉 Fan",
        "Dr. O'Brien (the elder)",
        "a=b Ünder_score=eq?",
        ("Zoë " + "Ångström-Lindqvist " * 10).strip(),
    ],
    ids=[
        "ascii",
        "empty",
        "latin",
        "quotes-cjk",
        "arabic",
        "hebrew",
        "emoji",
        "specials",
        "equals",
        "long",
    ],
)
def test_every_kind_of_name_gives_the_same_message(digest: Digest, name: str) -> None:
    copy = assert_same_message(digest, make_reader(name=name))
    [to] = parse(copy.data)["To"].addresses
    assert to.addr_spec == "ana@example.com"
    if name and not name.isascii():
        # What an RFC 2047 reader shows. (The email package's address parser shows a
        # space between two encoded-words, which is why a short name goes in one.)
        words = _raw_header(copy.data, "To").rsplit(" <", 1)[0]
        assert str(make_header(decode_header(words))) == name
    if len(name) < 40:
        assert to.display_name == name


def _raw_header(data: bytes, name: str) -> str:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ")
    for line in unfolded.split("\r\n"):
        key, _, value = line.partition(": ")
        if key == name:
            return value
    raise AssertionError(f"no {name} header")


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "",
        "x=y == z=",
        ".",
        ".\n.\nnext",
        "line one\nline two\n",
        "trailing space ",
        "tab\tinside",
        "ü" * 300,
        "x" * 300,
        "a" * 74 + "ü",
        "a" * 73 + "=",
        "😀 " * 80,
        "<b>&amp; \"quoted\" 'single'</b>",
        "عربي مع English و = علامة",
    ],
)
def test_every_kind_of_value_decodes_to_the_same_text(digest: Digest, value: str) -> None:
    reader = make_reader()
    values = personal_values(reader, get_settings())
    values["GREETING"] = value
    values["TAGS"] = value
    values["REASON"] = value + " / " + value
    assert_same_message(digest, reader, values)


def test_a_copy_comes_dot_stuffed_for_the_wire(digest: Digest) -> None:
    """The usual copy carries its stuffed form, so the transport need not scan it
    (the layout's CSS and quoted-printable lines start with dots); a value that
    brings a dot line of its own leaves the stuffing to the transport."""
    reader = make_reader()
    copy = assert_same_message(digest, reader)
    assert copy.wire is not None and b"\r\n.." in copy.wire
    dotted = make_digest([make_post(4, "Dots", [PYTHON], summary="one\n.two\n..three")])
    assert assert_same_message(dotted, reader).wire is not None
    values = personal_values(reader, get_settings())
    values["GREETING"] = ".\n.hidden"
    assert assert_same_message(digest, reader, values).wire is None


def test_long_values_from_a_reader_with_many_long_tags(digest: Digest) -> None:
    tags = [
        Tag(id=10 + i, slug=f"t{i}", name=f"Über-long tag name number {i} " * 3) for i in range(20)
    ]
    assert_same_message(digest, make_reader(name="Zoë " * 50, tags=tags))


def test_an_idn_domain_goes_as_a_labels(digest: Digest) -> None:
    copy = assert_same_message(digest, make_reader(email_="zoe@bücher.example"))
    assert copy.recipient == "zoe@xn--bcher-kva.example"
    assert not copy.smtputf8
    [to] = parse(copy.data)["To"].addresses
    assert to.domain == "xn--bcher-kva.example"


def test_a_non_ascii_local_part_needs_smtputf8(digest: Digest) -> None:
    copy = assert_same_message(digest, make_reader(name="Zoë", email_="zoë@example.com"))
    assert copy.smtputf8
    assert copy.recipient == "zoë@example.com"
    [to] = parse(copy.data)["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Zoë", "zoë@example.com")


@pytest.mark.parametrize("where", ["name", "message_id", "unsubscribe"])
def test_a_line_break_in_a_header_value_is_refused(digest: Digest, where: str) -> None:
    reader = make_reader(name="Mallory" + INJECTION if where == "name" else "Mallory")
    values = personal_values(reader, get_settings())
    if where == "unsubscribe":
        values["UNSUBSCRIBE_URL"] += INJECTION
    post = delivery()
    if where == "message_id":
        post.message_id += INJECTION
    with pytest.raises(HeaderInjection):
        message_for(post, digest, reader, get_settings(), values)


def test_a_post_text_with_placeholders_stays_defused(config: Settings) -> None:
    digest = make_digest(
        [
            make_post(
                1, "Spoof @@NL_REASON@@ and @@NL_FOO@@", [CAFE], "Body @@NL_UNSUBSCRIBE_URL@@"
            ),
            make_post(2, "Second", [PYTHON]),
        ]
    )
    reader = make_reader()
    copy = assert_same_message(digest, reader)
    plain = parse(copy.data).get_body(preferencelist=("plain",))
    assert plain is not None
    text = plain.get_content()
    assert "Spoof @\u2060@NL_REASON@\u2060@ and @\u2060@NL_FOO@\u2060@" in text
    assert text.count("unsubscribe/") == 1


def test_a_value_missing_leaves_its_placeholder_as_fill_does(digest: Digest) -> None:
    reader = make_reader()
    values = personal_values(reader, get_settings())
    del values["TAGS"]
    copy = assert_same_message(digest, reader, values)
    assert "@@NL_TAGS@@" in parse(copy.data)["Subject"]


@pytest.mark.parametrize("ending", ["@@NL_GREETING@@", "x\r@@NL_GREETING@@ y"])
def test_a_digest_that_cannot_be_cut_is_built_whole(config: Settings, ending: str) -> None:
    digest = make_digest()
    digest.text = digest.text + ending
    assert compiled(digest, config) is None
    assert_same_message(digest, make_reader())


def test_a_cr_in_a_value_builds_the_copy_whole(digest: Digest) -> None:
    reader = make_reader()
    values = personal_values(reader, get_settings())
    values["GREETING"] = "odd\rvalue"
    copy = message_for(delivery(), digest, reader, get_settings(), values)
    whole = one_off(digest, reader, get_settings(), values)
    assert bodies(parse(copy.data)) == bodies(parse(whole.data))


# --- the cache of compiled digests ------------------------------------------------------------


def test_the_same_digest_loaded_again_reuses_its_compilation(config: Settings) -> None:
    first, second = make_digest(), make_digest()
    assert first is not second
    assert compiled(first, config) is compiled(second, config)


def test_a_changed_digest_never_reuses_an_old_compilation(config: Settings) -> None:
    digest = make_digest()
    before = compiled(digest, config)
    digest.html = digest.html.replace("Naïve Bayes", "Naive Bayes, corrected")
    after = compiled(digest, config)
    assert after is not before
    copy = message_for(delivery(), digest, make_reader(), config)
    html = parse(copy.data).get_body(preferencelist=("html",))
    assert html is not None
    assert "Naive Bayes, corrected" in html.get_content()


def test_changed_settings_never_reuse_an_old_compilation(
    monkeypatch: pytest.MonkeyPatch, config: Settings
) -> None:
    digest = make_digest()
    before = compiled(digest, config)
    apply_env(monkeypatch, NEWSLETTER_FROM_NAME="Other Name")
    copy = message_for(delivery(), digest, make_reader(), get_settings())
    assert compiled(digest, get_settings()) is not before
    assert parse(copy.data)["From"].addresses[0].display_name == "Other Name"


def test_the_cache_keeps_at_most_its_size(
    monkeypatch: pytest.MonkeyPatch, config: Settings
) -> None:
    monkeypatch.setattr(compose, "CACHE_SIZE", 2)
    digests = [make_digest() for _ in range(3)]
    for n, digest in enumerate(digests):
        digest.text += f"\nissue {n}\n"
    first = compiled(digests[0], config)
    compiled(digests[1], config)
    assert compiled(digests[0], config) is first  # used: now the most recent
    compiled(digests[2], config)  # drops digests[1], the least recently used
    assert compiled(digests[0], config) is first
    assert len(compose._cache) == 2


# --- several senders at once -------------------------------------------------------------------


def test_copies_built_from_many_threads_at_once_are_each_right(config: Settings) -> None:
    digests = [make_digest() for _ in range(3)]
    for n, digest in enumerate(digests):
        digest.html = digest.html.replace("</body>", f"<p>issue {n}</p></body>")
    readers = [
        make_reader(name=f"Reader {n} Ünïcode", email_=f"r{n}@example.com") for n in range(24)
    ]
    start = threading.Barrier(8)

    def build(n: int) -> tuple[int, bytes]:
        if n < 8:
            start.wait(timeout=60)  # the first copies race on the first compilation
        digest = digests[n % 3]
        return n, message_for(delivery(), digest, readers[n], config).data

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(build, range(24)))
    for n, data in results:
        values = personal_values(readers[n], config)
        whole = one_off(digests[n % 3], readers[n], config, values)
        parsed = parse(data)
        assert parsed["To"].addresses[0].addr_spec == f"r{n}@example.com"
        # Links are signed per second: compare the bodies without them.
        got = [(t, b.replace(b"\r\n", b"\n")) for t, b in bodies(parsed)]
        want = [(t, b.replace(b"\r\n", b"\n")) for t, b in bodies(parse(whole.data))]
        assert [_unsigned(b) for _, b in got] == [_unsigned(b) for _, b in want]


def _unsigned(body: bytes) -> bytes:
    return re.sub(rb"/(unsubscribe|preferences)/[\w.-]+", rb"/\1/TOKEN", body)


# --- personal values -----------------------------------------------------------------------------


def test_links_are_the_ones_tokens_makes_and_verify(
    monkeypatch: pytest.MonkeyPatch, config: Settings
) -> None:
    monkeypatch.setattr("time.time", lambda: 1_790_000_000.0)
    reader = make_reader()
    values = personal_values(reader, config)
    assert values["PREFERENCES_URL"] == tokens.link("preferences", reader.uid)
    assert values["UNSUBSCRIBE_URL"] == tokens.link("unsubscribe", reader.uid)
    token = values["UNSUBSCRIBE_URL"].rsplit("/", 1)[1]
    assert tokens.read_token("unsubscribe", token) == reader.uid
    with pytest.raises(Exception, match="not valid"):
        tokens.read_token("preferences", token)


def test_a_new_secret_key_signs_with_the_new_key(
    monkeypatch: pytest.MonkeyPatch, config: Settings
) -> None:
    reader = make_reader()
    personal_values(reader, config)
    apply_env(monkeypatch, NEWSLETTER_SECRET_KEY="another-secret-key-9876543210")
    token = personal_values(reader, get_settings())["UNSUBSCRIBE_URL"].rsplit("/", 1)[1]
    assert tokens.read_token("unsubscribe", token) == reader.uid


def test_personal_values_text(config: Settings) -> None:
    values = personal_values(make_reader(name=""), config)
    assert values["GREETING"] == "Hello,"
    assert values["TAGS"] == "Café culture, Python"
    assert values["REASON"] == (
        "You get this email because ana@example.com subscribed to The Digest for posts "
        "tagged Café culture, Python, daily at 08:00 (Europe/Lisbon)."
    )


# --- the shared MIME helpers ---------------------------------------------------------------------


piece = st.lists(
    st.one_of(
        st.sampled_from(["=", ".", " ", "\t", "\n", "\r\n", "\r", "ü", "😀", "=\n", " \n", ".\n"]),
        st.characters(blacklist_categories=["Cs"]),
    ),
    max_size=120,
).map("".join)
# A piece that is not the last never ends with a bare CR (`layout` refuses one).
pieces = st.lists(piece, min_size=1, max_size=6).map(
    lambda ps: [p + "x" if p.endswith("\r") else p for p in ps[:-1]] + ps[-1:]
)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(pieces)
def test_pieces_encoded_apart_decode_as_the_whole(parts: list[str]) -> None:
    """The property the compiled digest rests on: soft-broken pieces read as one text."""
    encoded = b"".join(qp_piece(p) for p in parts[:-1]) + qp(parts[-1])
    assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
    assert b"\n" not in encoded.replace(b"\r\n", b"")
    whole = lines("".join(parts)).replace("\n", "\r\n")
    assert binascii.a2b_qp(encoded) == whole.encode("utf-8")
    assert binascii.a2b_qp(encoded) == binascii.a2b_qp(qp("".join(parts)))


@pytest.mark.parametrize("suffix", ["", "ü", "=", " ", ".", "😀", "a\n"])
def test_a_piece_near_the_line_limit_stays_within_it(suffix: str) -> None:
    for length in range(68, 82):
        text = "a" * length + suffix
        encoded = qp_piece(text) + qp("next")
        assert all(len(line) <= 76 for line in encoded.split(b"\r\n")), (length, encoded)
        assert binascii.a2b_qp(encoded) == (text + "next").replace("\n", "\r\n").encode()


names = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("()<>@,;:\\\".[] '=_?!#-ü😀")),
        st.characters(min_codepoint=32, max_codepoint=126),
    ),
    max_size=30,
)
locals_ = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20
)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(names, locals_)
def test_addresses_are_written_as_the_email_package_writes_them(name: str, local: str) -> None:
    local = local.replace("@", "a")
    expected = str(Address(display_name=name, username=local, domain="example.com"))
    assert format_address(name, f"{local}@example.com") == expected


@settings(max_examples=200, derandomize=True, deadline=None)
@given(names.filter(lambda n: not n.isascii()))
def test_non_ascii_display_names_decode_to_themselves(name: str) -> None:
    line, wire, utf8 = address_line("To", name, "zoe@example.com")
    assert (wire, utf8) == ("zoe@example.com", False)
    assert line.isascii()
    assert all(len(physical) <= 78 for physical in line.split(b"\r\n"))
    message = parse(line + b"\r\n")
    [to] = message["To"].addresses
    assert to.addr_spec == "zoe@example.com"
    assert message["To"].defects == ()
    words = line.decode()[len("To: ") :].replace("\r\n ", " ").rsplit(" <", 1)[0]
    assert str(make_header(decode_header(words))) == name
