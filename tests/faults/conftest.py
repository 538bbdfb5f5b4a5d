"""The fault rig: real workers, a Redis, a PostgreSQL and an SMTP server to break.

Every service here belongs to the suite, so a test can kill, stop and restart it
without touching what other tests use. Timings that decide recovery (the sending
lease, how often the sweeper looks, the pause before reconnecting) are set short, so a run heals in
seconds; the 2-minute recovery target is checked as a bound, not as a speed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu.pools
import psycopg
import pytest
import redis
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from newsletter import db
from newsletter.models import Delivery, DeliveryStatus, Post
from newsletter.posts import PostInput, add_post
from newsletter.tags import get_or_create_tags, parse_tag_names
from subscribers.models import Subscriber
from subscribers.services import SubscriberInput, add_subscriber
from tests.conftest import BASE_ENV, apply_env, truncate
from tests.faults.ledger import Outcome, agree
from tests.faults.services import PgCluster, RedisServer
from tests.faults.smtp import FaultyHandler, FaultyServer
from tests.worker.test_e2e import WorkerProcess, celery_worker, reset_broker_pools
from worker import app as celery_app

REPO_ROOT = Path(__file__).resolve().parents[2]
FIGURES = REPO_ROOT / "test-artifacts" / "faults.json"

READERS = 300
TAG = "faults"
# Every due reader mailed within this long of the fault's end (DESIGN.md, invariant 7).
RECOVERY_TARGET = 120.0
# The client's SMTP command timeout in these runs (the late-reply case outlasts it).
SMTP_TIMEOUT = 2.0
# How often the test's stand-in for beat's sweep entry asks for a sweep (seconds).
TICK = 1.0

# Short timings so recovery takes seconds; each is a NEWSLETTER_* setting. A lease
# of 10 s is renewed every 3 s while a batch is sent; a dead worker's batch is free
# 10 s after its last renewal.
FAST_ENV = {
    "NEWSLETTER_SEND_BATCH_SIZE": "50",
    "NEWSLETTER_PLAN_CHUNK_SIZE": "50",
    "NEWSLETTER_PLAN_INTERVAL": "10",
    "NEWSLETTER_SWEEP_INTERVAL": "5",
    "NEWSLETTER_SENDING_LEASE": "10",
    "NEWSLETTER_SMTP_RECONNECT_PAUSE": "0.05",
    "NEWSLETTER_UNPLANNED_GRACE": "2",
    "NEWSLETTER_STALE_QUEUED": "3",
    "NEWSLETTER_RETRY_BACKOFF": "1",
}


def reset_pools() -> None:
    """Forget every pooled broker connection, the control mailbox's cached one too.

    kombu keeps pools per broker URL for the whole process, and the control mailbox
    keeps the producer pool it first used; once closed, a later test's `ping` would
    fail on them.
    """
    reset_broker_pools(celery_app)
    kombu.pools.reset()
    celery_app.control.mailbox.__dict__.pop("producer_pool", None)


def _lost(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError | psycopg.OperationalError)


class Ticker:
    """Beat's sweep entry, run from the test: ask for a sweep every TICK seconds.

    Publishing fails while the broker is down; the next tick tries again, as beat does.
    """

    def __init__(self, task: str = "worker.tasks.sweep") -> None:
        self.task = task
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            try:
                celery_app.send_task(self.task)
            except Exception:
                continue

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@dataclass
class Rig:
    pg: PgCluster
    broker: RedisServer
    smtp: FaultyHandler
    server: FaultyServer
    database_url: str
    tmp_path: Path
    figures: dict[str, dict[str, Any]]
    case: str
    monkeypatch: pytest.MonkeyPatch
    emails: list[str] = field(default_factory=list)
    workers: int = 0
    beats: int = 0
    _ticker: Ticker | None = None

    # --- processes --------------------------------------------------------------

    def worker(self) -> AbstractContextManager[WorkerProcess]:
        """A `celery worker` process on this rig (ends when the `with` block does)."""
        self.workers += 1
        return celery_worker(self.tmp_path / f"worker-{self.workers}.log")

    def worker_logs(self) -> str:
        return "".join(
            (self.tmp_path / f"worker-{n}.log").read_text(errors="replace")
            for n in range(1, self.workers + 1)
        )

    def setenv(self, **env: str) -> None:
        """Change settings for this test (workers started afterwards see them too)."""
        apply_env(self.monkeypatch, **env)
        reset_pools()

    def ticker(self) -> Ticker:
        """The sweeper on a short timer; `quiesce()` stops it."""
        self._ticker = Ticker()
        return self._ticker

    @contextmanager
    def beat(self) -> Iterator[subprocess.Popen[bytes]]:
        """A real `celery beat` process with its own schedule file."""
        self.beats += 1
        stem = self.tmp_path / f"beat-{self.beats}"
        command = [
            sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel=INFO",
            f"--schedule={stem}.schedule", f"--pidfile={stem}.pid",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with Path(f"{stem}.log").open("wb") as log:
            proc = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def beat_log(self, n: int) -> str:
        return (self.tmp_path / f"beat-{n}.log").read_text(errors="replace")

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.broker.url, socket_timeout=5)

    # --- data -------------------------------------------------------------------

    def add_readers(self, n: int = READERS, cadence: str = "immediate") -> list[str]:
        """n confirmed readers of TAG, subscribed a minute ago."""
        joined = db.utcnow() - dt.timedelta(minutes=1)
        emails = [f"reader{i:04d}@example.org" for i in range(n)]
        with db.session_scope() as session:
            get_or_create_tags(session, parse_tag_names(TAG))
            for email in emails:
                add_subscriber(session, SubscriberInput(email, TAG, cadence), now=joined)
        self.emails = emails
        return emails

    def make_due(self) -> None:
        """Daily readers' slot has come: the next planning run mails them."""
        with db.session_scope() as session:
            session.execute(
                update(Subscriber).values(next_digest_at=db.utcnow() - dt.timedelta(seconds=1))
            )

    def publish(self, title: str = "The fault suite's post") -> int:
        """A post of TAG: committed, then `post_published` goes to the broker."""
        data = PostInput(title, f"https://news.example.org/{uuid.uuid4().hex}", TAG)
        with db.session_scope() as session:
            return add_post(session, data).id

    def post_planned(self, post_id: int) -> bool:
        with db.session_scope() as session:
            planned = session.scalar(select(Post.planned_at).where(Post.id == post_id))
        return planned is not None

    @staticmethod
    def planned_in(output: str) -> int:
        """The "deliveries planned" figure from a `digests run` summary."""
        found = re.search(r"deliveries planned\D+(\d+)", output)
        assert found is not None, output
        return int(found.group(1))

    # --- waiting ----------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """Poll until true; a database that is down counts as "not yet"."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if predicate():
                    return
            except Exception as exc:
                if not _lost(exc):
                    raise
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.05)

    def wait_accepted(self, n: int) -> None:
        """Wait until the SMTP server has accepted n messages: the send is under way."""
        self.wait_for(lambda: len(self.smtp.messages) >= n, f"{n} accepted messages")

    def settled(self) -> bool:
        """Every reader has a delivery and none is waiting or being sent."""
        with db.session_scope() as session:
            total = session.scalar(select(func.count()).select_from(Delivery))
            open_rows = session.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.status.in_([DeliveryStatus.QUEUED, DeliveryStatus.SENDING]))
            )
        return total == len(self.emails) and open_rows == 0

    def recover(self, fault_end: float) -> float:
        """Wait for the ledger to settle; seconds since the fault ended.

        Waits up to twice the target, so a miss is measured (and then fails the
        verdict) rather than cut off.
        """
        self.wait_for(self.settled, "every due reader to be mailed", 2 * RECOVERY_TARGET)
        return time.monotonic() - fault_end

    def quiesce(self) -> None:
        """Stop the sweeper, then wait until no task is queued or running, so no late
        copy can still arrive. (Retries scheduled for later may stay reserved: every
        row is settled, so they find nothing to claim.)"""
        if self._ticker is not None:
            self._ticker.__exit__()
        client = self.redis_client()
        try:
            quiet: list[bool] = []

            def idle() -> bool:
                active = celery_app.control.inspect(timeout=0.5).active() or {}
                quiet.append(client.llen("celery") == 0 and not any(active.values()))
                return quiet[-2:] == [True, True]

            self.wait_for(idle, "the workers to go idle")
        finally:
            client.close()

    # --- verdict ----------------------------------------------------------------

    def unknown_outcomes(self) -> int:
        """Deliveries recorded as "outcome unknown" (sent, by the default policy)."""
        with db.session_scope() as session:
            count = session.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.last_error.contains("outcome unknown"))
            )
        return int(count or 0)

    def verdict(
        self,
        recovery: float,
        faults: int,
        fail: dict[str, str] | None = None,
        extra_allowed: int = 0,
        cut_connections: int = 0,
        note: str = "",
    ) -> Outcome:
        """The ledger and the SMTP server agree; the figures go to the run's record."""
        outcome = agree(self.smtp, self.emails, fail or {}, extra_allowed, cut_connections)
        self.figures[self.case] = {
            "readers": len(self.emails),
            "faults": faults,
            "sent": outcome.sent,
            "failed": outcome.failed,
            "duplicates": outcome.duplicates,
            "lost": 0,
            "recovery_s": round(recovery, 1),
            "within_target": recovery <= RECOVERY_TARGET,
            "note": note,
        }
        assert recovery <= RECOVERY_TARGET, (
            f"every reader was mailed, but {recovery:.1f} s after the fault ended "
            f"(target {RECOVERY_TARGET:.0f} s)"
        )
        return outcome


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def fault_pg() -> Iterator[PgCluster]:
    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        db.dispose_engines()
        cluster.destroy()


@pytest.fixture(scope="session")
def fault_db(fault_pg: PgCluster) -> str:
    with psycopg.connect(fault_pg.admin_url, autocommit=True) as conn:
        conn.execute('CREATE DATABASE "newsletter_faults"')
    url = fault_pg.url("newsletter_faults")
    db.upgrade(url)
    return url


@pytest.fixture(scope="session")
def fault_broker() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def fault_figures() -> Iterator[dict[str, dict[str, Any]]]:
    """Figures of this run, merged into test-artifacts/faults.json for docs/RELIABILITY.md."""
    figures: dict[str, dict[str, Any]] = {}
    yield figures
    if figures:
        FIGURES.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
        FIGURES.write_text(json.dumps({**old, **figures}, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def rig(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fault_pg: PgCluster,
    fault_db: str,
    fault_broker: RedisServer,
    fault_figures: dict[str, dict[str, Any]],
) -> Iterator[Rig]:
    """Everything wired through NEWSLETTER_* settings; services restored after the test."""
    handler = FaultyHandler()
    server = FaultyServer(handler, SMTP_TIMEOUT)
    server.start()
    apply_env(
        monkeypatch,
        **{
            **BASE_ENV,
            **FAST_ENV,
            "NEWSLETTER_DATABASE_URL": fault_db,
            "NEWSLETTER_BROKER_URL": fault_broker.url,
            "NEWSLETTER_SMTP_URL": server.url,
        },
    )
    reset_pools()
    name = request.node.nodeid
    rig = Rig(
        fault_pg,
        fault_broker,
        handler,
        server,
        fault_db,
        tmp_path,
        fault_figures,
        name,
        monkeypatch,
    )
    try:
        yield rig
    finally:
        server.stop()
        if not fault_broker.running:
            fault_broker.start()
        if not _pg_up(fault_pg):
            fault_pg.start()
        reset_pools()
        apply_env(monkeypatch, **BASE_ENV)
        db.dispose_engines()
        truncate(fault_db)
        client = rig.redis_client()
        client.flushall()
        client.close()


def _pg_up(cluster: PgCluster) -> bool:
    try:
        with psycopg.connect(cluster.admin_url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False
