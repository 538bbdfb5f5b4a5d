"""Hand work to Celery only after the transaction that made it has committed.

A worker must never look for a row that was rolled back or is not yet visible, so
tasks are collected on the session and sent from its after-commit hook; a rollback
drops them. If the broker is down at that moment the row is already committed and
the sweeper in `plan_due_digests` finds it: nothing is lost.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from newsletter.redaction import redact

log = logging.getLogger(__name__)

_KEY = "newsletter.after_commit_tasks"


def enqueue_after_commit(session: Session, task: str, *args: Any) -> None:
    """Queue `worker.tasks.<task>(*args)` to run once `session` commits."""
    session.info.setdefault(_KEY, []).append((task, args))


def tasks_run_in_process() -> bool:
    from worker.celery_app import app as celery_app

    return bool(celery_app.conf.task_always_eager)


def _described(task: str, args: tuple[Any, ...]) -> str:
    """The task call for a log line, with link tokens hidden (a confirm URL is a key)."""
    return redact(f"{task}{args!r}")


def send_task(task: str, *args: Any) -> None:
    """Run a task now: on the broker if one is configured, else in this process.

    In-process failures are logged, not raised: the caller's transaction has already
    committed, and the sweeper retries whatever was left undone.
    """
    from worker import app as celery_app

    name = f"worker.tasks.{task}"
    if celery_app.conf.task_always_eager:
        try:
            celery_app.tasks[name].apply(args=list(args)).get()
        except Exception as exc:
            log.warning(
                "%s did not finish: %s",
                _described(task, args),
                redact(str(exc)),
                exc_info=not isinstance(exc, ValueError),
            )
        return
    try:
        celery_app.send_task(name, args=list(args))
    except Exception:
        # The work is committed; the sweeper picks it up on its next run.
        log.exception("could not enqueue %s; the sweeper will retry it", _described(task, args))


@event.listens_for(Session, "after_commit")
def _send_after_commit(session: Session) -> None:
    tasks = session.info.pop(_KEY, [])
    for task, args in tasks:
        send_task(task, *args)


@event.listens_for(Session, "after_soft_rollback")
def _drop_on_rollback(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:
        session.info.pop(_KEY, None)
