"""Address normalisation: the fast path must agree with email_validator wherever it answers."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email

from newsletter.errors import InvalidInput
from subscribers.services import _is_plain_address, normalize_email

ADDRESSES = [
    "ana@example.org", "Ana.Silva+news@Example.ORG", "a_b-c@sub.example.co.uk", "x@example.museum",
    "o'brien@example.ie", "a..b@example.org", ".a@example.org", "a.@example.org", "a@example",
    "a@localhost", "a@example.test", "a@example.local", "a@-example.org", "a@example-.org",
    "a@example.o", "zoë@example.org", "ana@exämple.org", "a b@example.org", "a@b@example.org",
    "x" * 65 + "@example.org", "a@" + "b" * 64 + ".org", "\"quoted\"@example.org", "a@123.45.67.89",
    "a@[127.0.0.1]", "user%host@example.org", "a@example.org.", "a@.example.org",
]  # fmt: skip


@pytest.mark.parametrize("address", ADDRESSES)
def test_fast_path_is_a_subset_of_email_validator(address: str) -> None:
    try:
        validate_email(address, check_deliverability=False)
        valid = True
    except EmailNotValidError:
        valid = False
    if _is_plain_address(address):
        assert valid, f"fast path accepted {address!r}, email_validator does not"
    try:
        normalize_email(address)
        ours = True
    except InvalidInput:
        ours = False
    assert ours == valid


def test_normalised_to_lower_case() -> None:
    assert normalize_email("  Ana.Silva@Example.ORG ") == "ana.silva@example.org"
    assert normalize_email("Zoë@Exämple.org") == "zoë@exämple.org"
