"""Celery app, tasks and beat schedule. Run with `celery -A worker worker` / `celery -A worker beat`."""

from worker.celery_app import app
from worker import tasks  # noqa: F401  (registers the tasks on `app`)

__all__ = ["app"]
