"""Tag names and their normalised slugs: "Public Services" == "public-services"."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Insert,
    Integer,
    ScalarSelect,
    Select,
    Table,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.errors import InvalidInput, NotFound
from newsletter.models import Feed, Tag, post_tags
from newsletter.text import one_line
from subscribers.models import subscriber_tags

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


# -- the console's and the command line's tag work: counts, rename, merge, details ----

MAX_DESCRIPTION_LENGTH = 500


@dataclass(frozen=True)
class TagSummary:
    """A tag with how many posts carry it and how many readers follow it."""

    tag: Tag
    posts: int
    followers: int


def tag_counts() -> tuple[ScalarSelect[int], ScalarSelect[int]]:
    """Correlated counts of a tag's posts and followers, to select beside `Tag`."""
    posts = select(func.count()).where(post_tags.c.tag_id == Tag.id).scalar_subquery()
    followers = select(func.count()).where(subscriber_tags.c.tag_id == Tag.id).scalar_subquery()
    return posts, followers


def tag_summaries(session: Session) -> list[TagSummary]:
    """Every tag by slug with its counts: tags are few (hundreds), so no paging."""
    posts, followers = tag_counts()
    rows = session.execute(select(Tag, posts, followers).order_by(Tag.slug))
    return [TagSummary(tag, n_posts, n_followers) for tag, n_posts, n_followers in rows]


def tag_summary(session: Session, tag: Tag) -> TagSummary:
    posts, followers = tag_counts()
    row = session.execute(select(posts, followers).where(Tag.id == tag.id)).one()
    return TagSummary(tag, row[0], row[1])


def find_tag(session: Session, ref: str) -> Tag:
    """A tag by any spelling of its name or slug ("Public Services", "public-services")."""
    tag = session.scalar(select(Tag).where(Tag.slug == slugify(ref)))
    if tag is None:
        raise NotFound(f"no tag {one_line(ref, 80)!r} (see `newsletter tags list`)")
    return tag


def offered_tags(session: Session, keep: Iterable[str] = ()) -> list[Tag]:
    """The tags the sign-up and preference pages offer, by name: the listed ones, and
    those in `keep` (slugs a reader already follows or just chose), so an unlisted
    tag a reader follows stays on their preferences page for them to keep or drop."""
    kept = sorted({slug for slug in keep if isinstance(slug, str)})
    return list(
        session.scalars(
            select(Tag).where(or_(Tag.listed.is_(true()), Tag.slug.in_(kept))).order_by(Tag.name)
        )
    )


def _one_name(name: str) -> tuple[str, str]:
    """(slug, display name) of exactly one tag name."""
    names = parse_tag_names(name)
    if not names:
        raise InvalidInput("a tag needs a name")
    if len(names) > 1:
        raise InvalidInput("a tag name cannot hold a comma or a semicolon: they separate tags")
    [(slug, clean)] = names.items()
    return slug, clean


def _feeds_naming(session: Session, slug: str) -> list[tuple[Feed, dict[str, str]]]:
    """The feeds that add this tag to their posts, each with its parsed tag names."""
    found = []
    for feed in session.scalars(select(Feed).where(Feed.extra_tags != "").order_by(Feed.id)):
        names = parse_tag_names(feed.extra_tags)
        if slug in names:
            found.append((feed, names))
    return found


def feeds_adding(session: Session, tag: Tag) -> list[Feed]:
    """The feeds whose every post gets this tag (feeds are few: read them all)."""
    return [feed for feed, _ in _feeds_naming(session, tag.slug)]


def _rename_in_feeds(session: Session, old_slug: str, new_name: str) -> None:
    """Feeds name the tags they add by display name: point those at the new name, or
    the next poll would bring the old tag back."""
    new_slug = slugify(new_name)
    for feed, names in _feeds_naming(session, old_slug):
        renamed: dict[str, str] = {}
        for slug, shown in names.items():
            slug = new_slug if slug == old_slug else slug
            renamed.setdefault(slug, new_name if slug == new_slug else shown)
        extra = ", ".join(renamed.values())
        if len(extra) > 1000:
            raise InvalidInput(f"the tags of feed {feed.url} would be too long with this name")
        feed.extra_tags = extra


def rename_tag(session: Session, tag: Tag, name: str) -> str:
    """Give `tag` a new display name, and with it the name's slug; posts, followers
    and their dates stay. A slug another tag holds is refused (merge instead).
    Returns the old slug."""
    slug, clean = _one_name(name)
    clash = session.scalar(select(Tag).where(Tag.slug == slug, Tag.id != tag.id))
    if clash is not None:
        raise InvalidInput(
            f"the tag {clash.name!r} already has the slug {slug!r}: choose another name, "
            f"or merge {tag.name!r} into {clash.name!r}"
        )
    old_slug = tag.slug
    tag.slug, tag.name = slug, clean
    _rename_in_feeds(session, old_slug, clean)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise InvalidInput(f"another tag took the slug {slug!r} at the same moment") from None
    return old_slug


def describe_tag(session: Session, tag: Tag, description: str, listed: bool) -> None:
    """Set what the sign-up page says about a tag, and whether it offers it."""
    tag.description = one_line(description, MAX_DESCRIPTION_LENGTH)
    tag.listed = listed
    session.flush()


@dataclass(frozen=True)
class MergeReport:
    source: str
    target: str
    # Posts that carried only the source tag and now carry the target.
    posts_moved: int
    # Readers who followed only the source and now follow the target from the same date.
    followers_moved: int
    # Readers who followed both: they follow the target from the earlier of the two dates.
    followers_both: int


def _insert_missing(session: Session, table: Table) -> Insert:
    """INSERT that skips a row whose primary key is already there, on both backends:
    the NOT EXISTS in each merge query avoids duplicates, this covers a reader who
    follows the target in a concurrent transaction."""
    if session.get_bind().dialect.name == "postgresql":
        return pg_insert(table).on_conflict_do_nothing()
    return sqlite_insert(table).on_conflict_do_nothing()


def merge_tags(session: Session, source: Tag, target: Tag) -> MergeReport:
    """Move every post and follower of `source` to `target` and delete `source`, in the
    caller's transaction. A reader following both keeps the earlier of their two
    follow dates: each follower keeps the date they started following, which decides
    the posts they are due (`newsletter.delivery.planning.pending_posts`)."""
    if source.id == target.id:
        raise InvalidInput("a tag cannot be merged into itself")
    # On PostgreSQL, a rename or merge of the same tags at the same moment waits here.
    session.execute(select(Tag.id).where(Tag.id.in_([source.id, target.id])).with_for_update())
    pt, other_pt = post_tags, post_tags.alias("other_pt")
    moving_posts = select(pt.c.post_id, literal(target.id, Integer)).where(
        pt.c.tag_id == source.id,
        ~exists().where(other_pt.c.post_id == pt.c.post_id, other_pt.c.tag_id == target.id),
    )
    st, src, dst = subscriber_tags, subscriber_tags.alias("src"), subscriber_tags.alias("dst")
    moving_follows = select(st.c.subscriber_id, literal(target.id, Integer), st.c.created_at).where(
        st.c.tag_id == source.id,
        ~exists().where(dst.c.subscriber_id == st.c.subscriber_id, dst.c.tag_id == target.id),
    )
    both = select(st.c.subscriber_id).where(
        st.c.tag_id == target.id,
        exists().where(src.c.tag_id == source.id, src.c.subscriber_id == st.c.subscriber_id),
    )
    # Counted before the moves (rowcount of INSERT ... SELECT is not reliable everywhere).
    report = MergeReport(
        source=source.slug,
        target=target.slug,
        posts_moved=_count(session, moving_posts),
        followers_moved=_count(session, moving_follows),
        followers_both=_count(session, both),
    )
    session.execute(_insert_missing(session, pt).from_select(["post_id", "tag_id"], moving_posts))
    earlier = select(src.c.created_at).where(
        src.c.tag_id == source.id,
        src.c.subscriber_id == st.c.subscriber_id,
        src.c.created_at < st.c.created_at,
    )
    session.execute(
        update(st)
        .where(st.c.tag_id == target.id, earlier.exists())
        .values(created_at=earlier.scalar_subquery())
    )
    session.execute(
        _insert_missing(session, st).from_select(
            ["subscriber_id", "tag_id", "created_at"], moving_follows
        )
    )
    session.execute(delete(pt).where(pt.c.tag_id == source.id))
    session.execute(delete(st).where(st.c.tag_id == source.id))
    _rename_in_feeds(session, source.slug, target.name)
    session.delete(source)
    session.flush()
    return report


def _count(session: Session, query: Select[Any]) -> int:
    return session.scalar(select(func.count()).select_from(query.subquery())) or 0
