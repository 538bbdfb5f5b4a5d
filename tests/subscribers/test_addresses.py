"""Addresses: one stored form per reader, and look-alike domains told apart."""

from __future__ import annotations

import idna
import pytest
from sqlalchemy import func, select

from newsletter.db import session_scope
from newsletter.errors import InvalidInput
from subscribers import suppression
from subscribers.models import Subscriber, SuppressionReason
from subscribers.services import (
    SubscriberInput,
    add_subscriber,
    get_by_email,
    normalize_email,
    refuse_lookalike_domain,
)
from tests.factories import make_tags

CYRILLIC_A = "\u0430"
LOOKALIKE = f"test@ex{CYRILLIC_A}mple.org"
# Computed, not copied: the A-label of the look-alike domain.
LOOKALIKE_PUNYCODE = "test@" + idna.encode(f"ex{CYRILLIC_A}mple.org").decode()
FULL_WIDTH = "".join(chr(ord(c) + 0xFEE0) for c in "test@example.org")


def test_the_punycode_form_is_computed_from_the_unicode_one() -> None:
    assert LOOKALIKE_PUNYCODE == "test@xn--exmple-4nf.org"
    assert FULL_WIDTH[0] == "\uff54" and "\uff20" in FULL_WIDTH  # full-width t and @


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("test@example.org", "test@example.org"),
        ("  Ana.Silva@Example.ORG ", "ana.silva@example.org"),
        # Full-width forms fold (NFKC), local part and domain alike.
        (FULL_WIDTH, "test@example.org"),
        (FULL_WIDTH.upper(), "test@example.org"),
        ("\uff54\uff45\uff53\uff54@example.org", "test@example.org"),
        # A domain stored as its U-label, however it came: Unicode or punycode, any case.
        (LOOKALIKE, LOOKALIKE),
        (LOOKALIKE_PUNYCODE, LOOKALIKE),
        (LOOKALIKE_PUNYCODE.upper(), LOOKALIKE),
        ("a@b\u00fccher.de", "a@b\u00fccher.de"),
        ("a@B\u00dcCHER.DE", "a@b\u00fccher.de"),
        ("a@xn--bcher-kva.de", "a@b\u00fccher.de"),
        ("a@news.XN--BCHER-KVA.de", "a@news.b\u00fccher.de"),
        ("a@xn--e1afmkfd.xn--p1ai", "a@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444"),
        # Non-ASCII local parts are valid, stored NFC and lower case.
        ("t\u00ebst@example.org", "t\u00ebst@example.org"),
        ("te\u0308st@example.org", "t\u00ebst@example.org"),
        ("T\u00cbST@Example.org", "t\u00ebst@example.org"),
        ("Zo\u00eb@Ex\u00e4mple.org", "zo\u00eb@ex\u00e4mple.org"),
    ],
)
def test_normalisation(typed: str, stored: str) -> None:
    assert normalize_email(typed) == stored
    # Stored forms are fixed points: normalising again changes nothing.
    assert normalize_email(stored) == stored


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("a@xn--zz.de", "not valid IDNA"),
        ("not-an-address", "must have an @-sign"),
        ("a\u200b@example.org", "ZERO WIDTH SPACE"),
        ("a\u202e@example.org", "RIGHT-TO-LEFT OVERRIDE"),
        ("a@exa\u200bmple.org", "ZERO WIDTH SPACE"),
        ("a\nb@example.org", "line break"),
        ("a\ufe6bb@example.org", "@-sign"),  # a small commercial at folds to a second @
        ("x" * 5000 + "@example.org", "longer than any address"),
    ],
)
def test_invalid_addresses_are_refused_clearly(typed: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match="invalid email address") as caught:
        normalize_email(typed)
    assert reason in str(caught.value)
    assert len(str(caught.value)) < 400 and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "address",
    [
        LOOKALIKE,
        "test@ex\u03b1mple.org",  # Greek alpha
        "test@news.p\u0430ypal.com",  # one bad label among good ones
        "test@\u0440\u0430ypal.com",  # Cyrillic r and a, Latin ypal
    ],
)
def test_mixed_script_domains_are_refused(address: str) -> None:
    with pytest.raises(InvalidInput, match=r"mixes \w+ and \w+ letters") as caught:
        refuse_lookalike_domain(normalize_email(address))
    assert "look-alike" in str(caught.value)


@pytest.mark.parametrize(
    "address",
    [
        "test@example.org",
        "a@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444",  # пример.рф
        "a@b\u00fccher.de",
        "a@\u03c0\u03b1\u03c1\u03ac\u03b4\u03b5\u03b9\u03b3\u03bc\u03b1.gr",  # Greek only
        "a@\u4f8b\u3048.jp",  # Han and Hiragana: one Japanese name
        "a@xn--e1afmkfd.xn--p1ai",
        "t\u00ebst@example-1.org",
    ],
)
def test_single_script_domains_pass(address: str) -> None:
    refuse_lookalike_domain(normalize_email(address))


@pytest.mark.usefixtures("app_env")
def test_unicode_and_punycode_are_one_reader() -> None:
    make_tags("politics")
    with session_scope() as session:
        add_subscriber(session, SubscriberInput(LOOKALIKE_PUNYCODE, "politics"))
    for again in (LOOKALIKE, LOOKALIKE_PUNYCODE.upper()):
        with session_scope() as session, pytest.raises(InvalidInput, match="already subscribed"):
            add_subscriber(session, SubscriberInput(again, "politics"))
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 1
        assert get_by_email(session, LOOKALIKE).email == LOOKALIKE
        suppression.suppress(session, normalize_email(LOOKALIKE), SuppressionReason.MANUAL)
    with session_scope() as session:
        assert suppression.find(session, normalize_email(LOOKALIKE_PUNYCODE)) is not None


@pytest.mark.usefixtures("app_env")
def test_full_width_and_plain_are_one_reader() -> None:
    make_tags("politics")
    with session_scope() as session:
        add_subscriber(session, SubscriberInput(FULL_WIDTH, "politics"))
    with session_scope() as session, pytest.raises(InvalidInput, match="already subscribed"):
        add_subscriber(session, SubscriberInput("TEST@example.org", "politics"))
    with session_scope() as session:
        assert list(session.scalars(select(Subscriber.email))) == ["test@example.org"]
