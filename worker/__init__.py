"""Celery app, tasks and beat schedule.

Run with `celery -A worker worker` and `celery -A worker beat`.
"""

from worker import tasks  # noqa: F401  (registers the tasks on `app`)
from worker.celery_app import app

__all__ = ["app"]
