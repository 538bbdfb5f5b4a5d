"""The planner as it was before planning became set-based: object by object, a
reader at a time. Kept as the reference the bulk planner is compared with
(tests/delivery/test_bulk_planning.py); only its imports changed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from secrets import token_hex
from typing import TypeVar

from sqlalchemy import ColumnElement, and_, exists, insert, select, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from newsletter.config import get_settings
from newsletter.db import session_scope, utcnow
from newsletter.delivery.mime import new_message_id
from newsletter.delivery.planning import unplanned_grace
from newsletter.delivery.rendering import content_key, render_digest
from newsletter.models import (
    Cadence,
    Delivery,
    DeliveryPost,
    DeliveryStatus,
    Digest,
    Post,
    post_tags,
)
from newsletter.posts import SOURCE_BACKLOG
from newsletter.text import one_line
from subscribers.cadence import next_slot
from subscribers.models import Subscriber, SubscriberStatus, subscriber_tags
from subscribers.suppression import suppressed_among

log = logging.getLogger(__name__)


T = TypeVar("T")

# The database itself is unreachable or busy: nothing else could be planned either,
# so these end the run and the sweeper's next run picks the work up again.
DATABASE_DOWN = (OperationalError, InterfaceError)


def chunked(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


@dataclass
class PlanReport:
    """What a planning run did; skips are counted by name, never dropped silently."""

    subscribers: int = 0
    deliveries: list[int] = field(default_factory=list)
    digests_rendered: int = 0
    digests_reused: int = 0
    posts_swept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    # Posts that could not be rendered even alone: post id -> reason.
    failed_posts: dict[int, str] = field(default_factory=dict)
    # Readers whose digest could not be rendered although each post could.
    failed_deliveries: int = 0
    # Chunks or swept posts whose planning raised something else.
    planning_errors: int = 0
    # One line per failure of any kind, for the logs and the CLI summary.
    failures: list[str] = field(default_factory=list)

    def merge(self, other: PlanReport) -> None:
        self.subscribers += other.subscribers
        self.deliveries.extend(other.deliveries)
        self.digests_rendered += other.digests_rendered
        self.digests_reused += other.digests_reused
        self.posts_swept += other.posts_swept
        self.skipped.update(other.skipped)
        self.failed_posts.update(other.failed_posts)
        self.failed_deliveries += other.failed_deliveries
        self.planning_errors += other.planning_errors
        self.failures.extend(other.failures)

    def fail(self, message: str, exc: BaseException | None = None) -> None:
        """Record a failure that planning went past; logged at ERROR so it alerts."""
        log.error("%s", message, exc_info=exc)
        self.failures.append(message)


class RenderFailed(Exception):
    """A digest could not be rendered; `reason` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe(exc: BaseException) -> str:
    """An exception as one short line: its type and message."""
    return one_line(f"{type(exc).__name__}: {exc}", 300)


def eligible_posts() -> ColumnElement[bool]:
    """The posts planning may promise to anyone: eligible posts exclude held and failed
    ones. Every planning path (immediate, daily, weekly, the sweeper) and the preview of
    "what X would get" go through this one condition."""
    return and_(
        # A feed's backlog was imported as already published: never mailed.
        Post.source != SOURCE_BACKLOG,
        # A post that could not be rendered waits, unpromised, for an edit.
        Post.failed_at.is_(None),
        # A held post waits, unpromised, for an editor to release it; who is eligible
        # for it (by arrival) does not change, so the release sends it to them.
        Post.held_at.is_(None),
    )


def pending_posts(
    session: Session, subscriber_ids: Sequence[int], now: dt.datetime
) -> dict[int, list[int]]:
    """For each subscriber, the matching posts that reached us after they subscribed and
    that were never promised to them."""
    st, pt = subscriber_tags, post_tags
    query = (
        select(st.c.subscriber_id, Post.id)
        .join(pt, pt.c.tag_id == st.c.tag_id)
        .join(Post, Post.id == pt.c.post_id)
        .join(Subscriber, Subscriber.id == st.c.subscriber_id)
        .where(
            st.c.subscriber_id.in_(subscriber_ids),
            Post.received_at >= Subscriber.subscribed_at,
            Post.received_at >= st.c.created_at,
            Post.received_at <= now,
            eligible_posts(),
            ~exists().where(
                DeliveryPost.subscriber_id == st.c.subscriber_id, DeliveryPost.post_id == Post.id
            ),
        )
        .distinct()
    )
    result: dict[int, list[int]] = defaultdict(list)
    for subscriber_id, post_id in session.execute(query):
        result[subscriber_id].append(post_id)
    return {sid: sorted(ids) for sid, ids in result.items()}


def _digest_for(
    session: Session, cadence: Cadence, post_ids: Sequence[int], report: PlanReport
) -> int:
    """The id of the digest with this content, rendering it only if nobody has yet."""
    key = content_key(cadence, post_ids)
    existing = session.scalar(select(Digest.id).where(Digest.content_key == key))
    if existing is not None:
        report.digests_reused += 1
        return existing
    posts = list(session.scalars(select(Post).where(Post.id.in_(post_ids))))
    try:
        rendered = render_digest(posts, cadence)
    except Exception as exc:
        raise RenderFailed(describe(exc)) from exc
    try:
        with session.begin_nested():
            digest = Digest(
                content_key=key,
                cadence=cadence,
                post_ids=list(post_ids),
                subject=rendered.subject,
                html=rendered.html,
                text=rendered.text,
            )
            session.add(digest)
            session.flush()
    except IntegrityError:
        # Another planner rendered the same content a moment ago: use theirs.
        report.digests_reused += 1
        return session.scalars(select(Digest.id).where(Digest.content_key == key)).one()
    report.digests_rendered += 1
    return digest.id


def _plan_group(
    session: Session,
    cadence: Cadence,
    post_ids: Sequence[int],
    members: Sequence[Subscriber],
    stamp: dt.datetime,
    report: PlanReport,
    renders_alone: set[tuple[Cadence, int]],
) -> None:
    """Promise these posts to these readers in one digest.

    If the digest cannot be rendered, each post is rendered alone: those that fail
    are recorded as failed and the rest are planned again without them, so readers
    still get the good posts now. If every post renders alone, the group itself is
    recorded as failed.
    """
    while True:
        ids = [p for p in post_ids if p not in report.failed_posts]
        if not ids:
            report.skipped["only_failed_posts"] += len(members)
            return
        try:
            digest_id = _digest_for(session, cadence, ids, report)
        except RenderFailed as exc:
            if _find_failed_posts(session, cadence, ids, stamp, report, renders_alone):
                continue
            _fail_group(session, cadence, ids, members, exc.reason, stamp, report)
            return
        report.deliveries.extend(
            _promise(session, digest_id, ids, members, stamp, DeliveryStatus.QUEUED)
        )
        return


def _find_failed_posts(
    session: Session,
    cadence: Cadence,
    post_ids: Sequence[int],
    stamp: dt.datetime,
    report: PlanReport,
    renders_alone: set[tuple[Cadence, int]],
) -> bool:
    """Render each post alone and record those that fail; True if any did."""
    found = False
    for post in session.scalars(select(Post).where(Post.id.in_(post_ids)).order_by(Post.id)):
        if (cadence, post.id) in renders_alone:
            continue
        try:
            render_digest([post], cadence)
        except Exception as exc:
            reason = describe(exc)
            post.failed_at = stamp
            post.failed_reason = reason
            report.failed_posts[post.id] = reason
            report.fail(f"post {post.id} could not be rendered and was left out: {reason}")
            found = True
        else:
            renders_alone.add((cadence, post.id))
    return found


def _fail_group(
    session: Session,
    cadence: Cadence,
    post_ids: Sequence[int],
    members: Sequence[Subscriber],
    reason: str,
    stamp: dt.datetime,
    report: PlanReport,
) -> None:
    """Every post renders alone but not together (a template problem, say): record the
    readers' deliveries as failed, with their posts promised, so no run retries them."""
    digest = Digest(
        # A key no planner computes: nobody else is ever handed this empty digest.
        content_key=token_hex(32),
        cadence=cadence,
        post_ids=list(post_ids),
        subject="",
        html="",
        text="",
    )
    session.add(digest)
    session.flush()
    error = f"digest could not be rendered: {reason}"
    failed = _promise(session, digest.id, post_ids, members, stamp, DeliveryStatus.FAILED, error)
    report.failed_deliveries += len(failed)
    report.fail(
        f"digest of post(s) {', '.join(map(str, post_ids))} could not be rendered for "
        f"{len(members)} reader(s): {reason}"
    )


def _promise(
    session: Session,
    digest_id: int,
    post_ids: Sequence[int],
    members: Sequence[Subscriber],
    stamp: dt.datetime,
    status: DeliveryStatus,
    error: str | None = None,
) -> list[int]:
    """Write a Delivery per reader and a DeliveryPost per post promised; the new ids."""
    sender = get_settings().from_
    rows = [
        {
            "subscriber_id": s.id,
            "digest_id": digest_id,
            "status": status,
            "attempts": 0,
            "last_error": error,
            "message_id": new_message_id(sender),
            "created_at": stamp,
            "updated_at": stamp,
        }
        for s in members
    ]
    created = session.execute(
        insert(Delivery).returning(Delivery.id, Delivery.subscriber_id), rows
    ).all()
    session.execute(
        insert(DeliveryPost),
        [
            {"subscriber_id": subscriber_id, "post_id": post_id, "delivery_id": delivery_id}
            for delivery_id, subscriber_id in created
            for post_id in post_ids
        ],
    )
    return [delivery_id for delivery_id, _ in created]


def _plan_chunk(
    session: Session, subscribers: Sequence[Subscriber], now: dt.datetime
) -> PlanReport:
    report = PlanReport(subscribers=len(subscribers))
    # Row timestamps never lie in the future, even for a run at a future --now, so
    # the sweeper's staleness checks keep working on the real clock.
    stamp = min(now, utcnow())
    pending = pending_posts(session, [s.id for s in subscribers], now)
    blocked = suppressed_among(session, [s.email for s in subscribers])
    groups: dict[tuple[Cadence, tuple[int, ...]], list[Subscriber]] = defaultdict(list)
    for subscriber in subscribers:
        posts = pending.get(subscriber.id)
        if subscriber.email in blocked:
            report.skipped["suppressed"] += 1
            continue
        if not posts:
            report.skipped["nothing_new"] += 1
            continue
        groups[(subscriber.cadence, tuple(posts))].append(subscriber)

    renders_alone: set[tuple[Cadence, int]] = set()
    for (cadence, post_ids), members in groups.items():
        _plan_group(session, cadence, post_ids, members, stamp, report, renders_alone)

    # Daily and weekly readers move on to their next slot whether or not they got
    # anything: a post arriving later waits for that slot, as the reader chose.
    for subscriber in subscribers:
        if subscriber.cadence is not Cadence.IMMEDIATE:
            subscriber.next_digest_at = next_slot(
                subscriber.cadence,
                subscriber.timezone,
                subscriber.send_hour,
                subscriber.send_weekday,
                now,
            )
    return report


def plan_subscribers(subscriber_ids: Sequence[int], now: dt.datetime | None = None) -> PlanReport:
    """Plan a digest for each of these subscribers that has anything new, chunk by chunk.

    A chunk that fails is rolled back, logged and counted, and the next one goes on;
    only an unreachable database ends the run (nothing else could be planned).
    """
    now = now or utcnow()
    report = PlanReport()
    for chunk in chunked(sorted(set(subscriber_ids)), get_settings().plan_chunk_size):
        try:
            report.merge(_plan_ids(chunk, now))
        except DATABASE_DOWN:
            raise
        except Exception as exc:
            report.planning_errors += 1
            report.fail(
                f"planning {len(chunk)} reader(s) (ids {chunk[0]} to {chunk[-1]}) failed: "
                f"{describe(exc)}",
                exc,
            )
    return report


def _plan_ids(chunk: Sequence[int], now: dt.datetime) -> PlanReport:
    """Plan one chunk in one transaction, again if it raced with another planner."""
    for attempt in range(3):
        try:
            with session_scope() as session:
                subscribers = list(
                    session.scalars(
                        select(Subscriber).where(
                            Subscriber.id.in_(chunk),
                            Subscriber.status == SubscriberStatus.ACTIVE,
                        )
                    )
                )
                report = _plan_chunk(session, subscribers, now)
            return report
        except IntegrityError:
            # A concurrent planner promised some of these posts first; the
            # retry sees its rows and plans only what is still missing.
            log.info("planning chunk raced with another planner (try %d)", attempt + 1)
    raise RuntimeError("planning kept racing with another planner")


def plan_for_post(post_id: int, now: dt.datetime | None = None) -> PlanReport:
    """Plan immediate readers who follow any of the post's tags, then mark it planned."""
    now = now or utcnow()
    with session_scope() as session:
        post = session.get(Post, post_id)
        if post is None:
            report = PlanReport()
            report.skipped["post_missing"] += 1
            return report
        received_at = post.received_at
        tag_ids = [t.id for t in post.tags]
        subscriber_ids = list(
            session.scalars(
                select(Subscriber.id)
                .join(subscriber_tags, subscriber_tags.c.subscriber_id == Subscriber.id)
                .where(
                    subscriber_tags.c.tag_id.in_(tag_ids),
                    Subscriber.cadence == Cadence.IMMEDIATE,
                    Subscriber.status == SubscriberStatus.ACTIVE,
                    Subscriber.subscribed_at <= received_at,
                )
                .distinct()
            )
        )
    # Failures inside are recorded in the report; the post is marked planned all the
    # same, so the sweeper does not meet it again on every run.
    report = plan_subscribers(subscriber_ids, max(now, received_at))
    _mark_planned(post_id, now)
    return report


def _mark_planned(post_id: int, now: dt.datetime) -> None:
    with session_scope() as session:
        session.execute(
            update(Post).where(Post.id == post_id, Post.planned_at.is_(None)).values(planned_at=now)
        )


def unplanned_posts(now: dt.datetime) -> list[int]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(Post.id)
                .where(
                    Post.planned_at.is_(None),
                    Post.received_at <= now - unplanned_grace(),
                    eligible_posts(),
                )
                .order_by(Post.id)
            )
        )


def due_subscribers(now: dt.datetime) -> list[int]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(Subscriber.id).where(
                    Subscriber.status == SubscriberStatus.ACTIVE,
                    Subscriber.cadence.in_([Cadence.DAILY, Cadence.WEEKLY]),
                    Subscriber.next_digest_at <= now,
                )
            )
        )


def plan_due(now: dt.datetime | None = None) -> PlanReport:
    """Sweep posts whose task was lost, then plan every daily/weekly reader whose slot came."""
    now = now or utcnow()
    report = PlanReport()
    for post_id in unplanned_posts(now):
        try:
            report.merge(plan_for_post(post_id, now))
        except DATABASE_DOWN:
            raise
        except Exception as exc:
            report.planning_errors += 1
            report.fail(f"planning swept post {post_id} failed: {describe(exc)}", exc)
            _mark_planned(post_id, now)
        report.posts_swept += 1
    report.merge(plan_subscribers(due_subscribers(now), now))
    return report
