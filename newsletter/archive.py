"""The archive of sent digests: lists with their counts, and each digest's web copy.

A digest is stored once with `@@NL_...@@` placeholders (rendering.py) and each
reader's copy fills them with that reader's values. The web copy, shown in the
console, the public archive and behind a "view in your browser" link, fills them
with neutral values instead: no name, no address, no token, and links that open a
page saying what they do in a reader's own copy.

Lists are newest first by keyset on the digest id (the order digests were made,
which is the order of their first sends), never OFFSET.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Integer, case, cast, exists, func, select, true
from sqlalchemy.orm import Session

from newsletter.config import get_settings
from newsletter.delivery.compose import tag_list
from newsletter.delivery.personalise import fill
from newsletter.delivery.rendering import content_key, read_web_copy_token, without_view_link
from newsletter.errors import NotFound
from newsletter.models import Cadence, Delivery, DeliveryStatus, Digest, Post, Tag, post_tags
from newsletter.text import one_line

# Where a web copy's preferences and unsubscribe links lead (newsletter/web/archive.py).
ABOUT_LINKS_PATH = "/about/web-copy"
PAGE_SIZE = 25

SENT = exists().where(Delivery.digest_id == Digest.id, Delivery.status == DeliveryStatus.SENT)
"""A digest is in the archive once one reader's copy left; one planned but never sent
(everyone skipped, every send failed, still queued) is not."""


@dataclass(frozen=True)
class ArchivedTag:
    slug: str
    name: str
    listed: bool


@dataclass(frozen=True)
class ArchivedPost:
    id: int
    title: str
    url: str
    published_at: dt.datetime
    tags: tuple[ArchivedTag, ...]


@dataclass(frozen=True)
class Counts:
    """What became of a digest's copies: one per reader it was planned for, a deleted
    reader's included (their row stays, without them)."""

    readers: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    pending: int = 0
    first_sent: dt.datetime | None = None


@dataclass(frozen=True)
class Summary:
    id: int
    cadence: Cadence
    subject: str
    created_at: dt.datetime
    posts: list[ArchivedPost]
    counts: Counts
    # False for a digest whose posts could not be rendered together: it has no copy.
    rendered: bool

    @property
    def listed_tags(self) -> list[ArchivedTag]:
        """The listed tags of its posts: where the public archive shows it."""
        seen = {tag.slug: tag for post in self.posts for tag in post.tags if tag.listed}
        return sorted(seen.values(), key=lambda tag: tag.name.casefold())

    @property
    def date(self) -> dt.datetime:
        """When it first went out (when it was made, if it never did)."""
        return self.counts.first_sent or self.created_at


@dataclass(frozen=True)
class SummaryPage:
    digests: list[Summary]
    next_before: int | None


@dataclass(frozen=True)
class WebCopy:
    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class TagEntry:
    slug: str
    name: str
    description: str
    digests: int


# -- the web copy -----------------------------------------------------------------


def about_link(which: str) -> str:
    return f"{get_settings().public_base_url}{ABOUT_LINKS_PATH}?link={which}"


def web_values(posts: Sequence[ArchivedPost]) -> dict[str, str]:
    """The neutral values a web copy is filled with, in place of a reader's."""
    site = get_settings().site_name
    names = sorted({tag.name for post in posts for tag in post.tags}, key=str.casefold)
    return {
        "GREETING": "Hello,",
        "TAGS": tag_list(names),
        "REASON": (
            f"You are reading the web copy of a digest from {site}. Each reader's own "
            "copy says why they got it and carries their own links."
        ),
        "PREFERENCES_URL": about_link("preferences"),
        "UNSUBSCRIBE_URL": about_link("unsubscribe"),
    }


def web_subject(digest: Digest, posts: Sequence[ArchivedPost]) -> str:
    return one_line(fill(digest.subject, web_values(posts), escape=False), 300)


def fill_copy(digest: Digest, posts: Sequence[ArchivedPost]) -> WebCopy:
    values = web_values(posts)
    return WebCopy(
        subject=web_subject(digest, posts),
        html=fill(without_view_link(digest.html), values, escape=True),
        text=fill(digest.text, values, escape=False),
    )


def web_copy(session: Session, digest: Digest) -> WebCopy:
    """The digest as a reader saw it, without anything of that reader."""
    return fill_copy(digest, digest_posts(session, [digest])[digest.id])


# -- queries ----------------------------------------------------------------------


def digest_posts(session: Session, digests: Sequence[Digest]) -> dict[int, list[ArchivedPost]]:
    """Each digest's posts that still exist, newest first as the digest shows them."""
    wanted = {post_id for digest in digests for post_id in digest.post_ids}
    found: dict[int, ArchivedPost] = {}
    if wanted:
        for post in session.scalars(select(Post).where(Post.id.in_(wanted))):
            tags = tuple(ArchivedTag(tag.slug, tag.name, tag.listed) for tag in post.tags)
            found[post.id] = ArchivedPost(post.id, post.title, post.url, post.published_at, tags)
    result: dict[int, list[ArchivedPost]] = {}
    for digest in digests:
        posts = [found[i] for i in digest.post_ids if i in found]
        result[digest.id] = sorted(posts, key=lambda p: (p.published_at, p.id), reverse=True)
    return result


def digest_counts(session: Session, digest_ids: Sequence[int]) -> dict[int, Counts]:
    """The counts of many digests in one grouped query."""
    if not digest_ids:
        return {}

    def having(*statuses: DeliveryStatus) -> ColumnElement[Any]:
        return func.sum(case((Delivery.status.in_(statuses), 1), else_=0))

    rows = session.execute(
        select(
            Delivery.digest_id,
            func.count(),
            having(DeliveryStatus.SENT),
            having(DeliveryStatus.FAILED),
            having(DeliveryStatus.SKIPPED),
            having(DeliveryStatus.QUEUED, DeliveryStatus.SENDING),
            func.min(Delivery.sent_at),
        )
        .where(Delivery.digest_id.in_(digest_ids))
        .group_by(Delivery.digest_id)
    )
    return {
        digest_id: Counts(readers, sent or 0, failed or 0, skipped or 0, pending or 0, first)
        for digest_id, readers, sent, failed, skipped, pending, first in rows
    }


def summarise(
    session: Session, digests: Sequence[Digest], with_counts: bool = True
) -> list[Summary]:
    """Digests with their posts and counts: the same few queries however many there are.

    Counting reads every copy of each digest; public pages, which show no counts,
    leave it out, and date a digest by when it was made (its first send followed).
    """
    posts = digest_posts(session, digests)
    counts = digest_counts(session, [d.id for d in digests]) if with_counts else {}
    return [
        Summary(
            id=digest.id,
            cadence=digest.cadence,
            subject=web_subject(digest, posts[digest.id]),
            created_at=digest.created_at,
            posts=posts[digest.id],
            counts=counts.get(digest.id, Counts()),
            rendered=bool(digest.html),
        )
        for digest in digests
    ]


def _post_ids_of_digest(session: Session) -> tuple[Any, ColumnElement[Any]]:
    """A digest's post ids as rows (its JSON list unnested), and the column holding one.

    Portable SQL has no way to unnest JSON, so each backend names its own function.
    """
    if session.get_bind().dialect.name == "postgresql":
        rows = func.json_array_elements_text(Digest.post_ids).table_valued(
            "value", joins_implicitly=True
        )
        return rows, cast(rows.c.value, Integer)
    rows = func.json_each(Digest.post_ids).table_valued("value", joins_implicitly=True)
    return rows, rows.c.value


def has_post_tagged(session: Session, *where: ColumnElement[bool]) -> ColumnElement[bool]:
    """The digest holds a post whose tag meets `where` (on Tag)."""
    rows, post_id = _post_ids_of_digest(session)
    return exists(
        select(1)
        .select_from(rows)
        .join(post_tags, post_tags.c.post_id == post_id)
        .join(Tag, Tag.id == post_tags.c.tag_id)
        .where(*where)
    )


def sent_digests(
    session: Session,
    before: int | None = None,
    limit: int = PAGE_SIZE,
    tag_id: int | None = None,
    with_counts: bool = True,
) -> SummaryPage:
    """Sent digests (holding a post with this tag, if given), newest first."""
    query = select(Digest).where(SENT).order_by(Digest.id.desc()).limit(limit + 1)
    if tag_id is not None:
        query = query.where(has_post_tagged(session, Tag.id == tag_id))
    if before is not None:
        query = query.where(Digest.id < before)
    digests = list(session.scalars(query))
    shown = digests[:limit]
    more = len(digests) > limit and shown
    summaries = summarise(session, shown, with_counts)
    return SummaryPage(summaries, shown[-1].id if more else None)


def get_digest(session: Session, digest_id: int) -> Digest:
    """Any digest, sent or not (a reader's failed delivery links to it too)."""
    digest = session.get(Digest, digest_id)
    if digest is None:
        raise NotFound("no such digest")
    return digest


def summary(session: Session, digest_id: int) -> tuple[Digest, Summary]:
    digest = get_digest(session, digest_id)
    return digest, summarise(session, [digest])[0]


# -- "view in your browser": any digest, by its signed link -------------------------


def linked_digest(session: Session, token: str) -> tuple[Digest, Summary]:
    """The digest a "view in your browser" link names, public archive or not.

    The link names the digest's content key; an edit to one of its posts retires that
    key (posts.py), so a digest not found by it is looked for among those holding the
    post the link also names, by the key its own content gives.
    """
    post_id, key = read_web_copy_token(token)
    digest = session.scalar(select(Digest).where(Digest.content_key == key))
    if digest is None:
        rows, held = _post_ids_of_digest(session)
        holding = exists(select(1).select_from(rows).where(held == post_id))
        candidates = session.scalars(select(Digest).where(holding).order_by(Digest.id.desc()))
        digest = next(
            (d for d in candidates if content_key(d.cadence, d.post_ids) == key and d.html), None
        )
    if digest is None or not digest.html:
        raise NotFound("this digest is no longer available")
    return digest, summarise(session, [digest], with_counts=False)[0]


# -- the public archive: sent digests of listed tags only --------------------------


def listed_tags(session: Session) -> list[TagEntry]:
    """Listed tags that have sent digests, with how many."""
    rows, post_id = _post_ids_of_digest(session)
    query = (
        select(Tag.slug, Tag.name, Tag.description, func.count(Digest.id.distinct()))
        .select_from(Digest)
        .join(rows, true())
        .join(post_tags, post_tags.c.post_id == post_id)
        .join(Tag, Tag.id == post_tags.c.tag_id)
        .where(Tag.listed == true(), SENT)
        .group_by(Tag.id, Tag.slug, Tag.name, Tag.description)
        .order_by(Tag.name, Tag.id)
    )
    return [TagEntry(*row) for row in session.execute(query)]


def listed_tag(session: Session, slug: str) -> Tag:
    tag = session.scalar(select(Tag).where(Tag.slug == slug, Tag.listed == true()))
    if tag is None:
        raise NotFound("no such tag in the archive")
    return tag


def public_digest(session: Session, digest_id: int) -> tuple[Digest, Summary]:
    """A sent digest holding a post with a listed tag; anything else is not public."""
    query = select(Digest).where(
        Digest.id == digest_id, SENT, has_post_tagged(session, Tag.listed == true())
    )
    digest = session.scalar(query)
    if digest is None:
        raise NotFound("no such digest in the archive")
    return digest, summarise(session, [digest], with_counts=False)[0]
