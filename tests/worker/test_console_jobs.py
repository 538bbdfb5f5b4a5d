"""Console jobs as Celery tasks: a duplicate task does nothing, a job whose task was
lost is queued again, and, end to end, a real worker process runs a bulk action that
the console queued on Redis while the job page follows it to "done"."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from newsletter.console.models import ConsoleJob
from newsletter.db import session_scope, utcnow
from subscribers import bulk
from subscribers.lists import import_csv
from subscribers.models import Subscriber, SubscriberStatus, SuppressionEvent
from tests.console.conftest import ADMIN, make_user, signed_in
from tests.factories import make_subscriber
from tests.worker.test_e2e import E2E, celery_worker, e2e, wait_until  # noqa: F401
from worker import tasks

# More than two chunks' worth, so the worker commits several times.
READERS = 2 * bulk.CHUNK + 100


@pytest.fixture
def clean_jobs() -> Iterator[None]:
    """Jobs and suppression history are not in the shared truncate list (yet)."""
    yield
    with session_scope() as session:
        session.execute(delete(ConsoleJob))
        session.execute(delete(SuppressionEvent))


def queued_job(action: bulk.BulkAction, created_at: dt.datetime | None = None) -> int:
    with session_scope() as session:
        selection = bulk.Selection(upto=bulk.highest_id(session))
        job = bulk.create_bulk_job(session, action, selection, created_by=ADMIN)
        if created_at is not None:
            job.created_at = created_at
        return job.id


def statuses() -> dict[str, SubscriberStatus]:
    with session_scope() as session:
        rows = session.execute(select(Subscriber.email, Subscriber.status))
        return {email: status for email, status in rows}


def job_row(job_id: int) -> ConsoleJob:
    with session_scope() as session:
        job = session.get(ConsoleJob, job_id)
        assert job is not None
        return job


@pytest.mark.usefixtures("app_env", "clean_jobs")
def test_the_task_runs_a_job_once_and_a_duplicate_does_nothing() -> None:
    make_subscriber("ana@example.org", "news")
    make_subscriber("ben@example.org", "news")
    job_id = queued_job(bulk.BulkAction.PAUSE)
    result = tasks.run_console_job.apply(args=[job_id]).get()
    assert result == {"job": job_id, "status": "done"}
    assert set(statuses().values()) == {SubscriberStatus.PAUSED}
    with session_scope() as session:
        session.execute(update(Subscriber).values(status=SubscriberStatus.ACTIVE))
    assert tasks.run_console_job.apply(args=[job_id]).get()["status"] == "done"
    assert set(statuses().values()) == {SubscriberStatus.ACTIVE}
    assert job_row(job_id).done == 2


@pytest.mark.usefixtures("app_env", "clean_jobs")
def test_a_job_whose_task_was_lost_is_queued_again() -> None:
    make_subscriber("ana@example.org", "news")
    stale = queued_job(bulk.BulkAction.PAUSE, utcnow() - 2 * tasks.STALE_JOB_AGE)
    fresh = queued_job(bulk.BulkAction.UNSUBSCRIBE)
    # In-process (no broker), the re-sent task runs at once.
    assert tasks.resume_console_jobs.apply().get() == {"jobs": 1}
    assert job_row(stale).status == "done" and job_row(fresh).status == "queued"
    assert statuses() == {"ana@example.org": SubscriberStatus.PAUSED}
    assert tasks.resume_console_jobs.apply().get() == {"jobs": 0}


@pytest.mark.e2e
@pytest.mark.usefixtures("clean_jobs")
def test_a_worker_runs_a_bulk_action_queued_by_the_console(e2e: E2E, tmp_path: Path) -> None:  # noqa: F811
    rows = [f"r{n:04d}@example.org,,news,daily,UTC" for n in range(READERS)]
    rows += ["out1@example.org,,news,daily,UTC,unsubscribed", "other@example.org,,sport,daily,UTC"]
    with session_scope() as session:
        header = "email,name,tags,cadence,timezone,status\n"
        report = import_csv(session, header + "\n".join(rows) + "\n", create_tags=True)
        assert report.created == READERS + 2
    make_user(ADMIN, "admin")

    with celery_worker(tmp_path / "worker.log") as worker:
        c = signed_in(ADMIN)
        confirm = c.get("/admin/subscribers/bulk?tag=news&action=pause")
        assert confirm.status_code == 200
        assert "in the background" in confirm.text
        form = confirm.text[confirm.text.index('action="/admin/subscribers/bulk"') :]
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form))
        response = c.post("/admin/subscribers/bulk", data=fields, follow_redirects=False)
        assert response.status_code == 303
        job_url = response.headers["location"]
        # Queued for the worker, not run in the request.
        first = c.get(job_url).text
        assert re.search(r'data-status="(queued|running|done)"', first)

        def finished() -> bool:
            return 'data-status="done"' in c.get(job_url).text

        wait_until(finished, "the job page to say done", timeout=60)
        assert "run_console_job" in worker.log() and "succeeded" in worker.log()

    page = c.get(job_url).text
    assert f'<dd id="job-done">{READERS}</dd>' in page and '<dd id="job-failed">1</dd>' in page
    assert "is unsubscribed, so there is nothing to pause" in page
    assert "http-equiv" not in page
    now = statuses()
    assert all(now[f"r{n:04d}@example.org"] is SubscriberStatus.PAUSED for n in range(READERS))
    assert now["out1@example.org"] is SubscriberStatus.UNSUBSCRIBED
    assert now["other@example.org"] is SubscriberStatus.ACTIVE
    job_id = int(job_url.rsplit("/", 1)[1])
    job = job_row(job_id)
    assert (job.total, job.done, job.failed, job.status) == (READERS + 1, READERS, 1, "done")
