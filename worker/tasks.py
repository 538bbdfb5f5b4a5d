"""Tasks: thin wrappers that call into `newsletter`; arguments are ids and plain JSON."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from newsletter import pipeline, planning, sending, transactional
from newsletter.dispatch import send_task
from newsletter.errors import NotFound
from newsletter.feeds import services as feeds
from newsletter.transport import ConnectionLost, TemporaryFailure
from worker.celery_app import app

log = logging.getLogger(__name__)

# Redis redelivers a delayed task that stays unacknowledged past the visibility
# timeout (3600 s here); longer waits are left to the sweeper instead.
MAX_COUNTDOWN = 3000


def _dispatch(delivery_ids: list[int]) -> int:
    batches = planning.batches(delivery_ids)
    for batch in batches:
        send_task("send_batch", batch)
    return len(batches)


@app.task(name="worker.tasks.post_published", acks_late=True)
def post_published(post_id: int) -> dict[str, Any]:
    """A post was committed: plan its immediate readers and hand their mail to senders."""
    report = planning.plan_for_post(post_id)
    batches = _dispatch(report.deliveries)
    return {"deliveries": len(report.deliveries), "batches": batches, **report.skipped}


@app.task(name="worker.tasks.plan_due_digests", acks_late=True)
def plan_due_digests(now_iso: str | None = None) -> dict[str, Any]:
    """Beat's job: sweep lost work, then plan daily/weekly readers whose hour has come."""
    now = dt.datetime.fromisoformat(now_iso) if now_iso else None
    summary = pipeline.run_due(now)
    return dict(summary.rows())


@app.task(name="worker.tasks.send_batch", bind=True, acks_late=True, max_retries=None)
def send_batch(self: Any, delivery_ids: list[int]) -> dict[str, Any]:
    """Send one batch over one SMTP connection; retry the deferred ones with backoff."""
    report = sending.send_batch(delivery_ids)
    if report.deferred and not self.request.is_eager and report.retry_in <= MAX_COUNTDOWN:
        raise self.retry(args=[report.deferred], countdown=report.retry_in)
    # Otherwise the deferred rows wait, queued with next_attempt_at, for the sweeper
    # in plan_due_digests (in-process runs: the next `digests run`).
    return {"sent": report.sent, "failed": report.failed, "deferred": len(report.deferred)}


@app.task(
    name="worker.tasks.send_transactional",
    bind=True,
    acks_late=True,
    max_retries=5,
    autoretry_for=(ConnectionLost, TemporaryFailure),
    retry_backoff=30,
)
def send_transactional(
    self: Any, kind: str, subscriber_id: int, extra: dict[str, Any] | None = None
) -> str:
    """A confirmation, welcome or notice email; transport trouble is retried with backoff."""
    return transactional.send_transactional(kind, subscriber_id, extra)


@app.task(name="worker.tasks.poll_due_feeds", acks_late=True)
def poll_due_feeds() -> dict[str, Any]:
    """Beat's job: hand every feed whose own poll interval has passed to a poll task."""
    due = feeds.due_feeds()
    for feed_id in due:
        send_task("poll_feed", feed_id)
    return {"feeds": len(due)}


@app.task(name="worker.tasks.poll_feed", acks_late=True)
def poll_feed(feed_id: int) -> dict[str, Any]:
    """Poll one feed if it is still due (the claim makes a duplicate task a no-op)."""
    try:
        report = feeds.poll_feed(feed_id, force=False)
    except NotFound:
        return {"feed": feed_id, "missing": True}
    return {
        "feed": feed_id,
        "status": report.status,
        "new": len(report.new),
        "backlog": report.backlog,
        "updated": report.updated,
        "error": report.error,
        **report.skipped,
    }
