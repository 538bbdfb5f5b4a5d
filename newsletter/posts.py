"""Posts in: validation, sanitising and tagging, then the trigger after commit; edits,
and editors' holds and corrections before a post goes out."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from secrets import token_hex

from sqlalchemy import Select, exists, func, select, update
from sqlalchemy.orm import Session

from newsletter.archive import _post_ids_of_digest
from newsletter.db import utcnow
from newsletter.dispatch import enqueue_after_commit
from newsletter.errors import InvalidInput
from newsletter.models import Cadence, Delivery, DeliveryStatus, Digest, Post, Tag
from newsletter.sanitize import clean_html, html_to_text
from newsletter.tags import get_or_create_tags, parse_tag_names
from newsletter.text import first_unsafe_char, one_line, trim_words
from newsletter.urls import split_url

TITLE_LENGTH = 500
SUMMARY_LENGTH = 400


@dataclass
class PostInput:
    """A post as any source (CLI, API, feed, webhook) hands it in, before validation."""

    title: str
    url: str
    tags: str | list[str] = field(default_factory=list)
    summary: str = ""
    body_html: str = ""
    author: str | None = None
    published_at: str | dt.datetime | None = None
    guid: str | None = None


def parse_datetime(value: str | dt.datetime | None, default: dt.datetime) -> dt.datetime:
    """ISO 8601 in, aware UTC out; a naive value is taken as UTC."""
    if value is None or value == "":
        return default
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(
                f"cannot read date {value!r}: use ISO 8601, like 2026-05-01T09:30:00+02:00"
            ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def validate_url(url: str, what: str = "URL") -> str:
    """An absolute http(s) URL, refused (not repaired) when it holds a control character:
    a link silently changed would point somewhere its author never wrote."""
    url = url.strip()
    unsafe = first_unsafe_char(url)
    if unsafe is not None:
        raise InvalidInput(
            f"{what} holds the control or non-character {unsafe}, which no URL may contain"
        )
    parts = split_url(url, what)
    if parts.scheme not in {"http", "https"} or not parts.netloc or " " in url:
        raise InvalidInput(f"{what} must be an absolute http(s) URL, got {url!r}")
    if len(url) > 2000:
        raise InvalidInput(f"{what} is longer than 2000 characters")
    return url


# A post imported as already published (a feed's backlog on its first poll): it is
# marked planned at once and `planning.pending_posts` skips it, so nobody is mailed.
SOURCE_BACKLOG = "backlog"


class DuplicatePost(InvalidInput):
    """A post with this guid exists already: the API answers 409, the CLI exit status 2."""

    def __init__(self, guid: str, post_id: int) -> None:
        super().__init__(f"a post with guid {guid!r} already exists")
        self.guid = guid
        self.post_id = post_id


@dataclass
class CheckedPost:
    """A PostInput after validation and sanitising: what gets stored."""

    guid: str
    title: str
    url: str
    tag_names: dict[str, str]
    published_at: dt.datetime | None
    body_html: str
    summary: str
    author: str | None


def check_post(data: PostInput) -> CheckedPost:
    """Validate and sanitise without touching the database; raises InvalidInput."""
    title = one_line(data.title, TITLE_LENGTH)
    if not title:
        raise InvalidInput("a post needs a title")
    url = validate_url(data.url, "post URL")
    tag_names = parse_tag_names(data.tags)
    published_at = parse_datetime(data.published_at, utcnow()) if data.published_at else None
    guid = one_line(data.guid or url, 512)
    body_html = clean_html(data.body_html, base_url=url) if data.body_html else ""
    summary = html_to_text(data.summary) if data.summary else html_to_text(body_html)
    author = one_line(data.author, 255) if data.author else None
    return CheckedPost(
        guid=guid,
        title=title,
        url=url,
        tag_names=tag_names,
        published_at=published_at,
        body_html=body_html,
        summary=trim_words(summary, SUMMARY_LENGTH),
        author=author or None,
    )


def add_post(
    session: Session,
    data: PostInput,
    now: dt.datetime | None = None,
    *,
    source: str = "cli",
    feed_id: int | None = None,
    announce: bool = True,
) -> Post:
    """Store a new post and schedule its planning for after the commit.

    With `announce=False` the post is recorded as already planned and no task is
    sent (backlog imports). Raises InvalidInput (DuplicatePost for a known guid),
    leaving the session untouched, for any bad field.
    """
    now = now or utcnow()
    checked = check_post(data)
    existing = session.scalar(select(Post.id).where(Post.guid == checked.guid))
    if existing is not None:
        raise DuplicatePost(checked.guid, existing)

    post = Post(
        guid=checked.guid,
        title=checked.title,
        url=checked.url,
        author=checked.author,
        summary=checked.summary,
        body_html=checked.body_html,
        published_at=checked.published_at or now,
        received_at=now,
        planned_at=None if announce else now,
        source=source,
        feed_id=feed_id,
    )
    post.tags = get_or_create_tags(session, checked.tag_names)
    session.add(post)
    session.flush()
    if announce:
        enqueue_after_commit(session, "post_published", post.id)
    return post


def update_post(session: Session, post: Post, data: PostInput) -> bool:
    """Apply an edit to a stored post; True if anything changed.

    An edit is never news: arrival time and planning stay as they were, so nobody
    is mailed again. The guid is the post's identity and does not change; a missing
    published date keeps the stored one. A post that could not be rendered was
    promised to nobody: an edit clears the failure and announces it again, so it
    goes out in each reader's next digest.
    """
    checked = check_post(data)
    fields: dict[str, object] = {
        "title": checked.title,
        "url": checked.url,
        "summary": checked.summary,
        "body_html": checked.body_html,
        "author": checked.author,
    }
    if checked.published_at is not None:
        fields["published_at"] = checked.published_at
    return _apply_edit(session, post, fields, checked.tag_names)


def correct_post(session: Session, post: Post, title: str, summary: str) -> bool:
    """An editor's correction of the title and summary before the post goes out; True
    if anything changed.

    Both are plain text, cleaned like every other way in; too long is refused, not cut
    (an editor sees what was typed). It goes through the same path as any edit: a
    render failure is cleared, and digests rendered from now on carry the correction.
    """
    title = one_line(title)
    if not title:
        raise InvalidInput("a post needs a title")
    if len(title) > TITLE_LENGTH:
        raise InvalidInput(f"the title is longer than {TITLE_LENGTH} characters")
    summary = one_line(summary)
    # A stored summary was shortened with an ellipsis, one character over: kept as is.
    if len(summary) > SUMMARY_LENGTH and summary != post.summary:
        raise InvalidInput(f"the summary is longer than {SUMMARY_LENGTH} characters")
    return _apply_edit(session, post, {"title": title, "summary": summary})


def _apply_edit(
    session: Session,
    post: Post,
    fields: dict[str, object],
    tag_names: dict[str, str] | None = None,
) -> bool:
    """Store the changed fields (and tags); what every edit path shares."""
    changed = False
    for name, value in fields.items():
        if getattr(post, name) != value:
            setattr(post, name, value)
            changed = True
    if tag_names is not None and {t.slug for t in post.tags} != set(tag_names):
        post.tags = get_or_create_tags(session, tag_names)
        changed = True
    if not changed:
        return False
    _retire_renderings(session, post.id)
    if post.failed_at is not None:
        _retry_failed(session, post)
    session.flush()
    return True


def _digests_holding(session: Session, post_id: int) -> Select[int]:
    """Ids of the digests whose posts include this one: read from each digest's post ids,
    since ledger compaction deletes the older delivery_posts rows."""
    rows, held = _post_ids_of_digest(session)
    return select(Digest.id).where(exists(select(1).select_from(rows).where(held == post_id)))


def _retire_renderings(session: Session, post_id: int) -> None:
    """Digests already rendered with this post keep their copy (their readers have it
    or are about to), but are never handed to another reader: the next reader whose
    digest holds the same posts gets a fresh rendering, with the edit."""
    digest_ids = session.scalars(_digests_holding(session, post_id)).all()
    for digest_id in digest_ids:
        # A key no planner computes, unique like the one it replaces.
        session.execute(
            update(Digest).where(Digest.id == digest_id).values(content_key=token_hex(32))
        )


def _retry_failed(session: Session, post: Post) -> None:
    """Clear a render failure after an edit and plan the post's immediate readers again."""
    post.failed_at = None
    post.failed_reason = None
    _announce_again(session, post)


def _announce_again(session: Session, post: Post) -> None:
    """Plan the post again after the commit, as if it had just arrived: its immediate
    readers get it now, nobody twice (the ledger holds what each was promised)."""
    post.planned_at = None
    enqueue_after_commit(session, "post_published", post.id)


def hold_post(post: Post, by: str, now: dt.datetime | None = None) -> bool:
    """Keep the post out of planning for everyone until it is released; True if it was
    not held already. Readers already mailed keep their copy."""
    if post.held_at is not None:
        return False
    post.held_at = now or utcnow()
    post.held_by = one_line(by, 320)
    return True


def release_post(session: Session, post: Post) -> bool:
    """Let a held post go out; True if it was held. Its immediate readers are planned
    after the commit, daily and weekly readers get it in their next digest: the same
    readers as if it had never been held, each at most once."""
    if post.held_at is None:
        return False
    post.held_at = None
    post.held_by = None
    _announce_again(session, post)
    return True


@dataclass(frozen=True)
class Reach:
    """How far a post went: readers it was sent to, and readers whose digest holding
    it is already rendered and waiting to go (a correction reaches neither)."""

    sent: int
    waiting: int
    failed: int


def post_reach(session: Session, post_id: int) -> Reach:
    """Counted in the ledger by delivery status: one row per reader whose digest held it."""
    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.digest_id.in_(_digests_holding(session, post_id)))
        .group_by(Delivery.status)
    )
    counts = {status: n for status, n in rows}
    waiting = counts.get(DeliveryStatus.QUEUED, 0) + counts.get(DeliveryStatus.SENDING, 0)
    return Reach(
        sent=counts.get(DeliveryStatus.SENT, 0),
        waiting=waiting,
        failed=counts.get(DeliveryStatus.FAILED, 0) + counts.get(DeliveryStatus.SKIPPED, 0),
    )


def recent_posts(session: Session, limit: int = 50) -> list[Post]:
    return list(session.scalars(select(Post).order_by(Post.received_at.desc()).limit(limit)))


@dataclass(frozen=True)
class Outcome:
    """What a new post did at once, read from the ledger: the immediate readers it
    reached, by how their mail went (deferred: refused for now, to be retried)."""

    readers: int
    sent: int
    deferred: int
    waiting: int
    failed: int
    skipped: int


def post_outcome(session: Session, post_id: int) -> Outcome:
    """Counted in the ledger: one row per reader whose digest holds the post."""
    rows = session.execute(
        select(Delivery.status, Delivery.attempts, func.count())
        .where(Delivery.digest_id.in_(_digests_holding(session, post_id)))
        .group_by(Delivery.status, Delivery.attempts)
    )
    counts: dict[tuple[DeliveryStatus, bool], int] = {}
    for status, attempts, n in rows:
        key = (status, attempts > 0)
        counts[key] = counts.get(key, 0) + n

    def of(status: DeliveryStatus) -> int:
        return counts.get((status, False), 0) + counts.get((status, True), 0)

    queued_again = counts.get((DeliveryStatus.QUEUED, True), 0)
    return Outcome(
        readers=sum(counts.values()),
        sent=of(DeliveryStatus.SENT),
        deferred=queued_again,
        waiting=of(DeliveryStatus.QUEUED) - queued_again + of(DeliveryStatus.SENDING),
        failed=of(DeliveryStatus.FAILED),
        skipped=of(DeliveryStatus.SKIPPED),
    )


@dataclass(frozen=True)
class Audience:
    """Who a post with these tags would reach now: active readers following any of
    them whose address is not suppressed; immediate ones at once, the others in
    their next digest."""

    immediate: list[str]
    immediate_count: int
    in_digest: int


def post_audience(session: Session, tag_slugs: list[str], sample: int = 50) -> Audience:
    """The first `sample` immediate readers by address, and how many there are of each kind."""
    from subscribers.models import Subscriber, SubscriberStatus, Suppression, subscriber_tags

    follows = exists().where(
        subscriber_tags.c.subscriber_id == Subscriber.id,
        subscriber_tags.c.tag_id.in_(select(Tag.id).where(Tag.slug.in_(tag_slugs))),
    )
    reachable = (
        Subscriber.status == SubscriberStatus.ACTIVE,
        follows,
        ~exists().where(Suppression.email == Subscriber.email),
    )
    counts: dict[Cadence, int] = dict(
        session.execute(
            select(Subscriber.cadence, func.count()).where(*reachable).group_by(Subscriber.cadence)
        ).all()
    )
    first = session.scalars(
        select(Subscriber.email)
        .where(*reachable, Subscriber.cadence == Cadence.IMMEDIATE)
        .order_by(Subscriber.email)
        .limit(sample)
    )
    immediate = counts.pop(Cadence.IMMEDIATE, 0)
    return Audience(list(first), immediate, sum(counts.values()))
