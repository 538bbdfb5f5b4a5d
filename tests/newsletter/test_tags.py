from __future__ import annotations

import pytest

from newsletter.errors import InvalidInput
from newsletter.tags import parse_tag_names, slugify


@pytest.mark.parametrize(
    "name", ["Public Services", "public-services", "public services", " PUBLIC_services "]
)
def test_spellings_are_one_tag(name: str) -> None:
    assert slugify(name) == "public-services"


def test_accents_fold_in_slug_and_stay_in_name() -> None:
    assert parse_tag_names("Économie, économie") == {"economie": "Économie"}


def test_non_latin_names_keep_a_slug() -> None:
    assert slugify("Политика") == "политика"


def test_separators() -> None:
    assert list(parse_tag_names("a, b;c,,")) == ["a", "b", "c"]


def test_tag_without_letters_is_refused() -> None:
    with pytest.raises(InvalidInput):
        parse_tag_names("---")
