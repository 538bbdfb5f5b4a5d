"""Tag names and their normalised slugs: "Public Services" == "public-services"."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.errors import InvalidInput
from newsletter.models import Tag
from newsletter.text import one_line

_NON_SLUG = re.compile(r"[^a-z0-9]+")
_NON_WORD = re.compile(r"[\W_]+")
MAX_TAG_LENGTH = 120


def slugify(name: str) -> str:
    """Lower case, accents folded to ASCII, runs of anything else become one hyphen."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = _NON_SLUG.sub("-", folded.lower()).strip("-")
    if not slug:
        # Names in non-Latin scripts keep their letters: a stable key is all we need.
        slug = _NON_WORD.sub("-", unicodedata.normalize("NFKC", name).casefold()).strip("-")
    return slug[:MAX_TAG_LENGTH]


def parse_tag_names(raw: str | Iterable[str]) -> dict[str, str]:
    """Split "a, b;c" (or a list) into {slug: display name}, first spelling wins."""
    parts = re.split(r"[,;]", raw) if isinstance(raw, str) else list(raw)
    result: dict[str, str] = {}
    for part in parts:
        name = one_line(part, MAX_TAG_LENGTH)
        if not name:
            continue
        slug = slugify(name)
        if not slug:
            raise InvalidInput(f"tag {part!r} has no letters or digits")
        result.setdefault(slug, name)
    return result


def get_or_create_tags(session: Session, names: dict[str, str]) -> list[Tag]:
    """The tags for these slugs, creating missing ones; safe against a concurrent insert."""
    if not names:
        return []
    existing = {t.slug: t for t in session.scalars(select(Tag).where(Tag.slug.in_(list(names))))}
    for slug, name in names.items():
        if slug in existing:
            continue
        try:
            with session.begin_nested():
                tag = Tag(slug=slug, name=name)
                session.add(tag)
                session.flush()
        except IntegrityError:
            tag = session.scalars(select(Tag).where(Tag.slug == slug)).one()
        existing[slug] = tag
    return [existing[slug] for slug in names]


def existing_tags(session: Session, names: dict[str, str]) -> list[Tag]:
    """The tags for these slugs; an unknown one is an error that names it."""
    found = {t.slug: t for t in session.scalars(select(Tag).where(Tag.slug.in_(list(names))))}
    unknown = [names[s] for s in names if s not in found]
    if unknown:
        raise InvalidInput(
            "unknown tag(s): "
            + ", ".join(repr(u) for u in unknown)
            + " (see `newsletter tags list`, or create one with `newsletter tags add`)"
        )
    return [found[s] for s in names]
