"""Every report in the corpus read as what it is, and nothing read into what is not one.

The corpus (tests/fixtures/bounces/) holds hand-written reports in the shapes real
systems send: Postfix, Exim, Microsoft 365, Gmail and Yahoo DSNs and bounces, Yahoo
and Microsoft feedback-loop (ARF) complaints, auto-replies and a reader's letter. Each
was sent (in the story it tells) with a VERP envelope sender for one delivery.
"""

from __future__ import annotations

import pytest

from newsletter.bounces import parsing
from newsletter.config import get_settings
from tests.bounces.conftest import CORPUS, fixture

# file: (message kind, [(event kind, address, delivery id)], words the diagnostic keeps)
EXPECTED: dict[str, tuple[str, list[tuple[str, str | None, int | None]], str]] = {
    "postfix-hard.eml": ("bounce", [("hard", "ana@example.net", 1234)], "Status: 5.1.1"),
    "postfix-soft-delayed.eml": ("bounce", [("soft", "ben@example.net", 1235)], "Mailbox full"),
    "postfix-no-verp.eml": ("bounce", [("hard", "gus@example.org", None)], "User unknown"),
    "postfix-delivered.eml": ("unrelated", [], ""),
    "exim-hard.eml": ("bounce", [("hard", "bob@example.com", 1236)], "550 5.1.1"),
    "exim-soft.eml": ("bounce", [("soft", "cara@example.com", 1237)], "452 4.2.2"),
    "microsoft-hard.eml": (
        "bounce",
        [("hard", "carol@contoso.example.com", 1238)],
        "RESOLVER.ADR.RecipientNotFound",
    ),
    "microsoft-soft.eml": ("bounce", [("soft", "dave@fabrikam.example.com", 1239)], "4.4.7"),
    "gmail-hard.eml": ("bounce", [("hard", "dan@example.org", 1240)], "550-5.1.1 The email"),
    "gmail-soft.eml": ("bounce", [("soft", "eve@example.org", 1241)], "out of storage space"),
    "yahoo-hard.eml": ("bounce", [("hard", "erin@example.com", 1242)], "550 5.1.1"),
    "yahoo-soft.eml": ("bounce", [("soft", "fay@example.com", 1243)], "Mailbox over quota"),
    "mangled-verp.eml": ("bounce", [("hard", None, 1244)], "554 5.7.1 Rejected by policy"),
    "arf-yahoo.eml": ("complaint", [("complaint", "hana@example.net", 1234)], "Yahoo!-Mail"),
    # Microsoft redacts the reader: the VERP envelope sender alone names the delivery.
    "arf-microsoft.eml": ("complaint", [("complaint", None, 1239)], "Hotmail FBL"),
    "auto-reply.eml": ("auto_reply", [], ""),
    "auto-reply-exchange.eml": ("auto_reply", [], ""),
    "unrelated.eml": ("unrelated", [], ""),
}


def test_every_fixture_has_an_expectation() -> None:
    assert {p.name for p in CORPUS.glob("*.eml")} == set(EXPECTED)


@pytest.mark.usefixtures("bounce_env")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus(name: str) -> None:
    kind, events, words = EXPECTED[name]
    parsed = parsing.read(fixture(name), get_settings())
    assert parsed.kind == kind, parsed.reason
    assert [(e.kind, e.email, e.delivery_id) for e in parsed.events] == events
    for event in parsed.events:
        assert words in event.diagnostic
        assert event.occurred_at is not None and event.occurred_at.year == 2026
        # Each report names itself, so reading it again is recognised.
        assert event.key
    if parsed.kind in ("auto_reply", "unrelated"):
        assert parsed.reason


@pytest.mark.usefixtures("bounce_env")
def test_the_returned_message_id_is_read_for_when_no_token_names_the_delivery() -> None:
    parsed = parsing.read(fixture("postfix-no-verp.eml"), get_settings())
    assert parsed.original_message_id == "<e41c7a0b9d8f4e2aa1b2c3d4e5f60718@news.example.org>"
    parsed = parsing.read(fixture("exim-hard.eml"), get_settings())  # the copy is inline text
    assert parsed.original_message_id == "<7a8b9c0d1e2f4a3b9c8d7e6f5a4b3c2d@news.example.org>"


@pytest.mark.usefixtures("settings_env")
def test_without_a_bounce_address_no_token_is_read() -> None:
    parsed = parsing.read(fixture("postfix-hard.eml"), get_settings())
    assert [(e.kind, e.email, e.delivery_id) for e in parsed.events] == [
        ("hard", "ana@example.net", None)
    ]


@pytest.mark.usefixtures("bounce_env")
def test_a_forged_token_names_no_delivery() -> None:
    raw = fixture("postfix-hard.eml").replace(b"ya-6ac09543a112", b"ya-000000000000")
    parsed = parsing.read(raw, get_settings())
    assert [(e.kind, e.delivery_id) for e in parsed.events] == [("hard", None)]


@pytest.mark.usefixtures("bounce_env")
def test_a_not_spam_feedback_report_is_no_complaint() -> None:
    raw = fixture("arf-yahoo.eml").replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    parsed = parsing.read(raw, get_settings())
    assert parsed.kind == "unrelated" and "not-spam" in parsed.reason


MALFORMED = {
    "empty": b"",
    "blank": b"\r\n \n",
    "no headers": b"just some words, no headers at all\n",
    "binary": bytes(range(256)) * 4,
    "unclosed boundary": (
        b"From: MAILER-DAEMON@x.example\nSubject: Undelivered Mail\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        b"--b\nContent-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n"
        b"%%%not base64%%%\n"
    ),
    "bad charset": (
        b"From: a@example.org\nSubject: hi\nContent-Type: text/plain; charset=no-such\n\n\xff\xfe"
    ),
    "headers only, NUL bytes": b"Subject: \x00\x00\nFrom: \x00@\x00\n\n",
}


@pytest.mark.usefixtures("bounce_env")
@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_input_is_unrelated_with_a_reason(name: str) -> None:
    parsed = parsing.read(MALFORMED[name], get_settings())
    assert parsed.kind == "unrelated" and parsed.reason and not parsed.events


@pytest.mark.usefixtures("bounce_env")
def test_a_bounce_cut_short_still_finds_its_delivery_by_the_token() -> None:
    """Only the headers and the first words are left: the token names the delivery,
    and with no status code to go by it counts as soft (counted, not suppressed)."""
    parsed = parsing.read(fixture("postfix-hard.eml")[:900], get_settings())
    assert parsed.kind == "bounce"
    assert [(e.kind, e.email, e.delivery_id) for e in parsed.events] == [("soft", None, 1234)]


@pytest.mark.usefixtures("bounce_env")
def test_a_bounce_naming_our_own_address_is_not_read_as_a_readers() -> None:
    raw = fixture("exim-hard.eml").replace(
        b"X-Failed-Recipients: bob@example.com", b"X-Failed-Recipients: digest@news.example.org"
    )
    raw = raw.replace(b"  bob@example.com\n", b"  digest@news.example.org\n")
    parsed = parsing.read(raw, get_settings())
    assert (parsed.kind, parsed.reason) == ("unrelated", "a bounce of mail to our own address")
