"""Tasks: thin wrappers that call into `newsletter`; arguments are ids and plain JSON."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from newsletter import transactional
from newsletter.bounces import mailbox
from newsletter.db import database_unavailable, session_scope, utcnow
from newsletter.delivery import ledger, pipeline, planning, sending
from newsletter.delivery.smtp import ConnectionLost, TemporaryFailure
from newsletter.dispatch import send_task
from newsletter.errors import InvalidInput, NotFound
from newsletter.feeds import services as feeds
from subscribers import bulk
from worker.celery_app import app

log = logging.getLogger(__name__)

# Redis redelivers a delayed task that stays unacknowledged past the visibility
# timeout (3600 s here); longer waits are left to the sweeper instead.
MAX_COUNTDOWN = 3000
# While the database is unreachable, a task waits this long (seconds) and runs again.
DATABASE_RETRY_COUNTDOWN = 10
# A console job still queued this long after it was created has lost its task.
STALE_JOB_AGE = dt.timedelta(minutes=10)


def _retry_when_database_is_down(task: Any, exc: Exception) -> None:
    """Retry `task` later if `exc` says the database is unreachable; otherwise return.

    The database coming back is the common case (a restart): waiting here resumes
    within seconds, instead of leaving the work to the sweeper.
    """
    if task.request.is_eager or not database_unavailable(exc):
        return
    log.warning(
        "%s: database unreachable, retrying in %d s: %s", task.name, DATABASE_RETRY_COUNTDOWN, exc
    )
    raise task.retry(countdown=DATABASE_RETRY_COUNTDOWN, exc=exc) from None


@app.task(name="worker.tasks.post_published", bind=True, acks_late=True, max_retries=None)
def post_published(self: Any, post_id: int) -> dict[str, Any]:
    """A post was committed: plan its immediate readers and hand their mail to senders
    chunk by chunk, as each chunk is committed (sending starts while planning goes on,
    and no list of every reader's delivery is held)."""
    batches = 0

    def hand_on(delivery_ids: list[int]) -> None:
        nonlocal batches
        batches += pipeline.dispatch(delivery_ids)

    try:
        report = planning.plan_for_post(post_id, on_chunk=hand_on)
    except Exception as exc:
        _retry_when_database_is_down(self, exc)
        raise
    return {"deliveries": report.planned, "batches": batches, **report.skipped}


@app.task(name="worker.tasks.plan_due_digests", acks_late=True)
def plan_due_digests(now_iso: str | None = None) -> dict[str, Any]:
    """Beat's job: sweep lost work, then plan daily/weekly readers whose hour has come."""
    now = dt.datetime.fromisoformat(now_iso) if now_iso else None
    summary = pipeline.run_due(now)
    return dict(summary.rows())


@app.task(name="worker.tasks.send_batch", bind=True, acks_late=True, max_retries=None)
def send_batch(self: Any, delivery_ids: list[int]) -> dict[str, Any]:
    """Send one batch over one SMTP connection; retry the deferred ones with backoff."""
    try:
        report = sending.send_batch(delivery_ids)
    except Exception as exc:
        _retry_when_database_is_down(self, exc)
        raise
    if report.deferred and not self.request.is_eager and report.retry_in <= MAX_COUNTDOWN:
        raise self.retry(args=[report.deferred], countdown=report.retry_in)
    # Otherwise the deferred rows wait, queued with next_attempt_at, for the sweeper
    # in plan_due_digests (in-process runs: the next `digests run`).
    return {
        "sent": report.sent,
        "failed": report.failed,
        "deferred": len(report.deferred),
        "unknown": report.unknown,
    }


@app.task(name="worker.tasks.sweep", acks_late=True)
def sweep() -> dict[str, Any]:
    """Beat's frequent job, without the planning pass: posts whose task was lost, queued
    deliveries whose task was lost or whose retry is due, and batches whose sender died
    (lease expired) go back to workers. A duplicate task finds nothing to claim."""
    posts = planning.unplanned_posts(utcnow())
    for post_id in posts:
        send_task("post_published", post_id)
    stranded = planning.stranded_deliveries()
    return {
        "posts": len(posts),
        "deliveries": len(stranded),
        "batches": pipeline.dispatch(stranded),
    }


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


@app.task(name="worker.tasks.run_console_job", bind=True, acks_late=True, max_retries=None)
def run_console_job(self: Any, job_id: int) -> dict[str, Any]:
    """A console job (a bulk action, a CSV import) run to its end. A duplicate does
    nothing; one cut short (a killed worker, the database gone) resumes after its last
    committed chunk."""
    try:
        status = bulk.run_job(job_id)
    except Exception as exc:
        _retry_when_database_is_down(self, exc)
        raise
    return {"job": job_id, "status": status}


@app.task(name="worker.tasks.resume_console_jobs", acks_late=True)
def resume_console_jobs() -> dict[str, Any]:
    """Queue again the console jobs whose task was lost (the broker was down when they
    were created); a job runs once, however many tasks it gets."""
    with session_scope() as session:
        stale = bulk.stale_jobs(session, STALE_JOB_AGE)
    for job_id in stale:
        send_task("run_console_job", job_id)
    return {"jobs": len(stale)}


@app.task(name="worker.tasks.compact_ledger", acks_late=True)
def compact_ledger() -> dict[str, Any]:
    """Beat's hourly job: settle what readers can no longer be promised again, and
    drop the guard rows it covers, so the ledger grows with deliveries, not posts."""
    report = ledger.compact()
    return {"readers": report.readers, "advanced": report.advanced, "deleted": report.deleted}


@app.task(name="worker.tasks.poll_bounce_mailbox", acks_late=True)
def poll_bounce_mailbox() -> dict[str, Any]:
    """Beat's job while NEWSLETTER_BOUNCE_MAILBOX_URL is set: read the bounce mailbox
    once. A mailbox that cannot be read is logged and tried again at the next beat
    (its messages wait there); no retry piles up meanwhile."""
    try:
        report = mailbox.poll()
    except (mailbox.MailboxError, InvalidInput) as exc:
        log.warning("%s", exc)
        return {"error": str(exc)}
    return {**dict(report.rows()), "errors": report.errors}
