"""Adding feeds and polling them: new entries become posts, known ones are never news again.

Identity is the entry's guid (its link when it has none). An entry whose guid we
already hold is never a new post, however the feed reorders, re-dates or edits it:
an edit updates the stored post and mails nobody. A feed's first poll imports its
backlog as already published (source "backlog", see `newsletter.posts`), except
the `mail_newest` newest entries, which are announced like any new post.

Network I/O happens outside any transaction; each poll's posts, ETag and
Last-Modified are committed together, so a failed poll leaves the feed to be read
in full next time.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.db import session_scope, utcnow
from newsletter.errors import InvalidInput, NotFound
from newsletter.feeds.fetching import FetchError, FetchResult, check_feed_url, fetch_feed
from newsletter.feeds.parsing import FeedEntry, parse_feed
from newsletter.models import Feed, Post
from newsletter.posts import SOURCE_BACKLOG, PostInput, add_post, update_post
from newsletter.tags import get_or_create_tags, parse_tag_names, slugify

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 900
MIN_INTERVAL = 60
MAX_INTERVAL = 7 * 24 * 3600
MAX_MAIL_NEWEST = 100

Fetcher = Callable[..., FetchResult]


@dataclass
class PollReport:
    """What one poll (or one file import) did; skips are counted by reason."""

    feed_id: int | None
    url: str
    status: int | None = None
    first: bool = False
    not_modified: bool = False
    new: list[int] = field(default_factory=list)
    backlog: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _check_options(interval: int, mail_newest: int) -> None:
    if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
        raise InvalidInput(
            f"poll interval must be between {MIN_INTERVAL} and {MAX_INTERVAL} seconds, "
            f"got {interval}"
        )
    if not 0 <= mail_newest <= MAX_MAIL_NEWEST:
        raise InvalidInput(f"--mail-newest must be between 0 and {MAX_MAIL_NEWEST}")


def add_feed(
    session: Session,
    url: str,
    tags: str = "",
    interval: int = DEFAULT_INTERVAL,
    mail_newest: int = 0,
    now: dt.datetime | None = None,
) -> Feed:
    """Register a feed, due for its first poll at once; raises InvalidInput on bad options."""
    now = now or utcnow()
    if "://" not in url:
        raise InvalidInput(
            f"a feed URL must be an absolute http(s) URL, got {url!r} "
            "(to import a feed saved as a file, use `newsletter feeds import FILE`)"
        )
    url = check_feed_url(url)
    _check_options(interval, mail_newest)
    names = parse_tag_names(tags)
    extra = ", ".join(names.values())
    if len(extra) > 1000:
        raise InvalidInput("too many extra tags for one feed")
    if session.scalar(select(Feed.id).where(Feed.url == url)) is not None:
        raise InvalidInput(f"feed {url} is already registered")
    # The extra tags exist at once, so readers can follow them before the first post.
    get_or_create_tags(session, names)
    feed = Feed(
        url=url,
        extra_tags=extra,
        poll_interval=interval,
        mail_newest=mail_newest,
        next_poll_at=now,
    )
    session.add(feed)
    session.flush()
    return feed


def find_feed(session: Session, ref: str | int) -> Feed:
    """A feed by id or by URL."""
    text = str(ref).strip()
    feed = (
        session.get(Feed, int(text))
        if text.isdigit()
        else session.scalar(select(Feed).where(Feed.url == text))
    )
    if feed is None:
        raise NotFound(f"no feed {text!r} (see `newsletter feeds list`)")
    return feed


def list_feeds(session: Session) -> list[Feed]:
    return list(session.scalars(select(Feed).order_by(Feed.id)))


def remove_feed(session: Session, ref: str | int) -> str:
    """Forget a feed; its posts stay (their feed_id becomes NULL)."""
    feed = find_feed(session, ref)
    url = feed.url
    session.delete(feed)
    session.flush()
    return url


def due_feeds(now: dt.datetime | None = None) -> list[int]:
    now = now or utcnow()
    with session_scope() as session:
        return list(
            session.scalars(
                select(Feed.id)
                .where(or_(Feed.next_poll_at.is_(None), Feed.next_poll_at <= now))
                .order_by(Feed.next_poll_at, Feed.id)
            )
        )


def poll_due(now: dt.datetime | None = None, fetcher: Fetcher = fetch_feed) -> list[PollReport]:
    """Poll every feed whose next poll time has come (each claimed, so never twice at once)."""
    now = now or utcnow()
    return poll_many(due_feeds(now), now, force=False, fetcher=fetcher)


def poll_many(
    feed_ids: Sequence[int],
    now: dt.datetime | None = None,
    *,
    force: bool = True,
    fetcher: Fetcher = fetch_feed,
) -> list[PollReport]:
    """Poll each feed in turn; one that fails in any way is recorded and the rest go on."""
    now = now or utcnow()
    reports: list[PollReport] = []
    for feed_id in feed_ids:
        try:
            reports.append(poll_feed(feed_id, now, force=force, fetcher=fetcher))
        except NotFound:
            continue  # removed since the list was read
        except Exception as exc:
            log.exception("polling feed #%d failed unexpectedly", feed_id)
            reports.append(_unexpected_failure(feed_id, now, exc))
    return reports


def _unexpected_failure(feed_id: int, now: dt.datetime, exc: Exception) -> PollReport:
    """A report (and the feed's last error) for a failure no check foresaw."""
    report = PollReport(feed_id, "", error=f"unexpected error: {type(exc).__name__}: {exc}"[:500])
    try:
        with session_scope() as session:
            feed = session.get(Feed, feed_id)
            if feed is not None:
                report.url = feed.url
                _apply_status(feed, now, report)
    except Exception:
        log.exception("could not record the failure of feed #%d", feed_id)
    return report


def poll_feed(
    feed_id: int,
    now: dt.datetime | None = None,
    *,
    force: bool = True,
    fetcher: Fetcher = fetch_feed,
) -> PollReport:
    """Fetch a feed (conditionally) and store what is new or edited.

    Without `force`, the poll first claims the feed by moving its next poll time,
    and does nothing if it was not due or another poller claimed it first. Errors
    (refused address, HTTP error, not a feed) are recorded on the feed and in the
    report, never raised; no post is written then.
    """
    now = now or utcnow()
    with session_scope() as session:
        feed = session.get(Feed, feed_id)
        if feed is None:
            raise NotFound(f"no feed #{feed_id}")
        report = PollReport(feed_id, feed.url, first=feed.first_polled_at is None)
        claim = update(Feed).where(Feed.id == feed_id)
        if not force:
            claim = claim.where(or_(Feed.next_poll_at.is_(None), Feed.next_poll_at <= now))
        claimed = session.execute(
            claim.values(next_poll_at=now + dt.timedelta(seconds=feed.poll_interval))
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            report.skipped["not_due"] += 1
            return report
        url, etag, last_modified = feed.url, feed.etag, feed.last_modified

    try:
        result = fetcher(url, etag=etag, last_modified=last_modified)
        report.status = result.status
        parsed = (
            None if result.not_modified else parse_feed(result.content, url, result.content_type)
        )
    except InvalidInput as exc:
        report.status = exc.status if isinstance(exc, FetchError) else report.status
        report.error = str(exc)
        log.warning("polling feed %s failed: %s", url, exc)
        _record(feed_id, now, report)
        return report

    if parsed is None:
        report.not_modified = True
        log.info("feed %s not modified", url)
        _record(feed_id, now, report)
        return report

    try:
        with session_scope() as session:
            feed = session.get(Feed, feed_id)
            if feed is None:
                raise NotFound(f"feed #{feed_id} was removed while it was polled")
            report.skipped.update(parsed.skipped)
            store_entries(
                session,
                parsed.entries,
                feed_id=feed_id,
                extra_tags=feed.extra_tags,
                first=feed.first_polled_at is None,
                mail_newest=feed.mail_newest,
                now=now,
                report=report,
            )
            feed.title = parsed.title or feed.title
            feed.etag = _header(result.etag, 500)
            feed.last_modified = _header(result.last_modified, 100)
            feed.first_polled_at = feed.first_polled_at or now
            _apply_status(feed, now, report)
    except IntegrityError:
        # Another poller stored one of these guids first; the next poll sees it.
        report.error = "raced with another poll of the same posts; nothing stored this time"
        report.new.clear()
        _record(feed_id, now, report)
    log.info(
        "feed %s: %d new, %d backlog, %d updated, %d unchanged",
        url,
        len(report.new),
        report.backlog,
        report.updated,
        report.unchanged,
    )
    return report


def _header(value: str | None, limit: int) -> str | None:
    # A validator longer than the column cannot be stored; without it we just refetch.
    return value if value and len(value) <= limit else None


def _apply_status(feed: Feed, now: dt.datetime, report: PollReport) -> None:
    feed.last_polled_at = now
    feed.last_status = report.status
    feed.last_error = report.error


def _record(feed_id: int, now: dt.datetime, report: PollReport) -> None:
    with session_scope() as session:
        feed = session.get(Feed, feed_id)
        if feed is not None:
            _apply_status(feed, now, report)


def import_document(
    content: bytes,
    name: str,
    tags: str = "",
    mail_newest: int = 0,
    now: dt.datetime | None = None,
) -> PollReport:
    """Import a saved feed document once, as backlog (the newest N announced).

    Entries whose guid is already known are left alone. Raises InvalidInput for a
    document that is not a feed, before anything is written.
    """
    now = now or utcnow()
    _check_options(MIN_INTERVAL, mail_newest)
    extra = ", ".join(parse_tag_names(tags).values())
    parsed = parse_feed(content, name)
    report = PollReport(None, name, first=True)
    report.skipped.update(parsed.skipped)
    with session_scope() as session:
        store_entries(
            session,
            parsed.entries,
            feed_id=None,
            extra_tags=extra,
            first=True,
            mail_newest=mail_newest,
            now=now,
            report=report,
            source="import",
        )
    return report


def _newest_first(entries: Sequence[FeedEntry]) -> list[FeedEntry]:
    """By date, newest first; undated entries after dated ones, in document order."""
    dated = sorted(
        (e for e in entries if e.published_at is not None),
        key=lambda e: (-(e.published_at or dt.datetime.min).timestamp(), e.position),
    )
    return dated + [e for e in entries if e.published_at is None]


def _readable_names(names: Sequence[str]) -> dict[str, str]:
    """{slug: display name}, preferring a spelling that says more than its slug does
    ("Public Services" over "public-services", "Saúde" over "saude")."""
    best: dict[str, str] = {}
    for name in names:
        slug = slugify(name)
        if slug and (slug not in best or (best[slug] == slug and name != slug)):
            best[slug] = name
    return best


def store_entries(
    session: Session,
    entries: Sequence[FeedEntry],
    *,
    feed_id: int | None,
    extra_tags: str,
    first: bool,
    mail_newest: int,
    now: dt.datetime,
    report: PollReport,
    source: str = "feed",
) -> None:
    """New entries become posts (announced, or backlog on a first poll); known ones are
    updated in place when this same feed brought them, and left alone otherwise."""
    known: dict[str, Post] = {}
    guids = [e.guid for e in entries]
    for start in range(0, len(guids), 500):
        chunk = guids[start : start + 500]
        known.update((p.guid, p) for p in session.scalars(select(Post).where(Post.guid.in_(chunk))))
    extra = list(parse_tag_names(extra_tags).values())
    # Create this document's new tags under their most readable spelling first.
    get_or_create_tags(session, _readable_names([n for e in entries for n in e.tags] + extra))

    fresh = [e for e in entries if e.guid not in known]
    announced = {e.guid for e in (_newest_first(fresh)[:mail_newest] if first else fresh)}

    # Oldest first, so ids grow with age as they would had we polled all along.
    for entry in sorted(entries, key=lambda e: -e.position):
        data = PostInput(
            title=entry.title,
            url=entry.url,
            tags=entry.tags + extra,
            summary=entry.summary,
            body_html=entry.body_html,
            author=entry.author,
            published_at=entry.published_at,
            guid=entry.guid,
        )
        try:
            post = known.get(entry.guid)
            if post is not None:
                if feed_id is None or post.feed_id != feed_id:
                    report.skipped["known_from_elsewhere"] += 1
                elif update_post(session, post, data):
                    report.updated += 1
                else:
                    report.unchanged += 1
                continue
            announce = entry.guid in announced
            added = add_post(
                session,
                data,
                now,
                source=source if announce else SOURCE_BACKLOG,
                feed_id=feed_id,
                announce=announce,
            )
        except InvalidInput as exc:
            log.warning("feed %s: entry %r skipped: %s", report.url, entry.guid, exc)
            report.skipped["invalid_entry"] += 1
            continue
        if announce:
            report.new.append(added.id)
        else:
            report.backlog += 1
