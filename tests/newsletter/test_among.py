"""`db.among`, the `IN` of a list of hundreds: on PostgreSQL one array literal
(`db.array_literal`), which must carry any text unchanged."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from newsletter.db import among, array_literal, session_scope
from newsletter.models import Tag

pytestmark = pytest.mark.usefixtures("app_env")

AWKWARD = [
    'quote"d',
    "back\\slash",
    "trailing\\",
    "comma,brace{}",
    " spaced ",
    "NULL",
    "",
    "zoë 日本",
]


def test_every_value_is_found_whatever_it_holds() -> None:
    with session_scope() as session:
        session.add_all(Tag(slug=f"t{n}", name=name) for n, name in enumerate(AWKWARD))
    with session_scope() as session:
        ids = dict(session.execute(select(Tag.name, Tag.id).where(among(Tag.name, AWKWARD))).all())
        assert sorted(ids) == sorted(AWKWARD)
        found = session.scalars(select(Tag.name).where(among(Tag.id, ids.values())))
        assert sorted(found) == sorted(AWKWARD)
        assert session.scalars(select(Tag.id).where(among(Tag.id, []))).all() == []


def test_array_literal_quotes_text_and_writes_null() -> None:
    assert array_literal([1, 2, 3], quoted=False) == "{1,2,3}"
    assert array_literal(['a"b', "c\\d", None]) == '{"a\\"b","c\\\\d",NULL}'
