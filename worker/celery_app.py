"""The Celery app: Redis when NEWSLETTER_BROKER_URL is set, in-process otherwise."""

from __future__ import annotations

from typing import Any

from celery import Celery

from newsletter.config import Settings, get_settings, settings_or_exit


def configure(app: Celery, settings: Settings | None = None) -> Celery:
    """(Re)apply settings; tests call it after changing the environment."""
    settings = settings or get_settings()
    eager = settings.broker_url is None
    schedule: dict[str, dict[str, Any]] = {
        "plan-due-digests": {
            "task": "worker.tasks.plan_due_digests",
            "schedule": float(settings.plan_interval),
        },
        # Lost tasks and expired claims, found within a minute or two of a fault.
        "sweep": {
            "task": "worker.tasks.sweep",
            "schedule": float(settings.sweep_interval),
        },
        # Each feed has its own interval; this is how often beat looks for due ones.
        "poll-due-feeds": {
            "task": "worker.tasks.poll_due_feeds",
            "schedule": float(settings.feed_check_interval),
        },
        # The ledger's guard rows for settled posts go (docs/storage.md).
        "compact-ledger": {
            "task": "worker.tasks.compact_ledger",
            "schedule": 3600.0,
        },
        # Console jobs (bulk actions, imports) whose task was lost are queued again.
        "resume-console-jobs": {
            "task": "worker.tasks.resume_console_jobs",
            "schedule": float(settings.plan_interval),
        },
    }
    if settings.bounce_mailbox_url:
        # Bounces and complaints mailed back to the bounce address.
        schedule["poll-bounce-mailbox"] = {
            "task": "worker.tasks.poll_bounce_mailbox",
            "schedule": float(settings.bounce_poll_interval),
        }
    app.conf.update(
        broker_url=settings.broker_url or "memory://",
        # No broker: every task runs in the calling process, same code path.
        task_always_eager=eager,
        task_eager_propagates=True,
        task_ignore_result=True,
        # Acknowledge after the task ran, so a killed worker's task is redelivered;
        # the ledger's claim makes the second run send nothing twice.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 3600},
        # A broker that is down must not hang a web request or the CLI for long:
        # the committed row is swept up later.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        timezone="UTC",
        enable_utc=True,
        beat_schedule=schedule,
    )
    return app


# Bad settings stop the worker and beat at start-up with a clear message.
app = configure(Celery("newsletter", include=["worker.tasks"]), settings_or_exit())
