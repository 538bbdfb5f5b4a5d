"""Who is due, which posts each of them gets, and one rendering per distinct digest.

Planning writes the ledger (a Delivery per reader and digest, a DeliveryPost per
post promised) in bounded chunks, one transaction each. The primary key of
DeliveryPost (subscriber, post) makes a second promise of the same post impossible,
so a re-run, a retried task or two planners racing can only ever add nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import and_, exists, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.config import get_settings
from newsletter.db import session_scope, utcnow
from newsletter.mail import new_message_id
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
from newsletter.rendering import content_key, render_digest
from subscribers.cadence import next_slot
from subscribers.models import Subscriber, SubscriberStatus, subscriber_tags
from subscribers.suppression import suppressed_among

log = logging.getLogger(__name__)

# A post not planned this long after it arrived is taken to have lost its task
# (broker down at commit, worker killed) and is planned by the sweeper.
UNPLANNED_GRACE = dt.timedelta(minutes=2)
# A queued delivery untouched this long has lost its send task; re-enqueue it.
STALE_QUEUED = dt.timedelta(minutes=10)
# A claim older than this belongs to a worker that died mid-batch.
SENDING_LEASE = dt.timedelta(minutes=15)

T = TypeVar("T")


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

    def merge(self, other: PlanReport) -> None:
        self.subscribers += other.subscribers
        self.deliveries.extend(other.deliveries)
        self.digests_rendered += other.digests_rendered
        self.digests_reused += other.digests_reused
        self.posts_swept += other.posts_swept
        self.skipped.update(other.skipped)


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
            # A feed's backlog was imported as already published: never mailed.
            Post.source != SOURCE_BACKLOG,
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
    rendered = render_digest(posts, cadence)
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


def _plan_chunk(
    session: Session, subscribers: Sequence[Subscriber], now: dt.datetime
) -> PlanReport:
    report = PlanReport(subscribers=len(subscribers))
    settings = get_settings()
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

    for (cadence, post_ids), members in groups.items():
        digest_id = _digest_for(session, cadence, post_ids, report)
        rows = [
            {
                "subscriber_id": s.id,
                "digest_id": digest_id,
                "status": DeliveryStatus.QUEUED,
                "attempts": 0,
                "message_id": new_message_id(settings.from_),
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
        report.deliveries.extend(delivery_id for delivery_id, _ in created)

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
    """Plan a digest for each of these subscribers that has anything new, chunk by chunk."""
    now = now or utcnow()
    report = PlanReport()
    for chunk in chunked(sorted(set(subscriber_ids)), get_settings().plan_chunk_size):
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
                    chunk_report = _plan_chunk(session, subscribers, now)
                report.merge(chunk_report)
                break
            except IntegrityError:
                # A concurrent planner promised some of these posts first; the
                # retry sees its rows and plans only what is still missing.
                log.info("planning chunk raced with another planner (try %d)", attempt + 1)
        else:
            raise RuntimeError("planning kept racing with another planner")
    return report


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
    report = plan_subscribers(subscriber_ids, max(now, received_at))
    with session_scope() as session:
        session.execute(
            update(Post).where(Post.id == post_id, Post.planned_at.is_(None)).values(planned_at=now)
        )
    return report


def unplanned_posts(now: dt.datetime) -> list[int]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(Post.id)
                .where(Post.planned_at.is_(None), Post.received_at <= now - UNPLANNED_GRACE)
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
        report.merge(plan_for_post(post_id, now))
        report.posts_swept += 1
    report.merge(plan_subscribers(due_subscribers(now), now))
    return report


def stranded_deliveries(now: dt.datetime | None = None) -> list[int]:
    """Deliveries whose send task was lost, whose retry is due, or whose worker died."""
    now = now or utcnow()
    with session_scope() as session:
        return list(
            session.scalars(
                select(Delivery.id)
                .where(
                    or_(
                        and_(
                            Delivery.status == DeliveryStatus.QUEUED,
                            or_(
                                Delivery.next_attempt_at <= now,
                                and_(
                                    Delivery.next_attempt_at.is_(None),
                                    Delivery.created_at <= now - STALE_QUEUED,
                                ),
                            ),
                        ),
                        and_(
                            Delivery.status == DeliveryStatus.SENDING,
                            Delivery.claimed_at <= now - SENDING_LEASE,
                        ),
                    )
                )
                .order_by(Delivery.id)
            )
        )


def batches(delivery_ids: Iterable[int]) -> list[list[int]]:
    """Delivery ids cut into send batches (one task and one SMTP connection each)."""
    return list(chunked(list(delivery_ids), get_settings().send_batch_size))
