"""End to end: a real Celery worker process on Redis, PostgreSQL and a real SMTP server.

The test process plays the web app and the CLI: it creates tags, subscribers and
posts, and its after-commit hook hands `post_published` to Redis. A separate
`celery worker` process plans and sends; an aiosmtpd server in the test process
receives the mail. What each reader should get is worked out here from the fixture
data alone, then held against every message that arrived, message by message.
"""

from __future__ import annotations

import ast
import datetime as dt
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import kombu.pools
import pytest
import redis
from celery import Celery
from sqlalchemy import func, select

from newsletter import db
from newsletter.models import Delivery, DeliveryPost, DeliveryStatus, Digest, Post
from newsletter.outbox import OutboxServer, Received
from newsletter.posts import PostInput, add_post
from newsletter.tags import get_or_create_tags, parse_tag_names
from subscribers.models import Subscriber
from subscribers.services import SubscriberInput, add_subscriber
from tests.conftest import BASE_ENV, REDIS_URL, ScriptedHandler, apply_env, truncate
from worker import app as celery_app

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_START_TIMEOUT = 30.0
DEADLINE = 30.0


# --- fixture data -----------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    email: str
    tags: str
    cadence: str
    timezone: str = "UTC"
    confirmed: bool = True
    # None: subscribed before any post; n: subscribes just before POSTS[n] arrives.
    joins_before_post: int | None = None


@dataclass(frozen=True)
class PostSpec:
    title: str
    tags: str
    # Reached the pipeline before anybody subscribed: nobody may get it.
    backdated: bool = False


TAGS = "Politics, Health, Climate, Sports"

READERS = [
    Reader("ana@example.org", "politics", "immediate"),
    Reader("ben@example.org", "politics, health", "immediate"),
    Reader("carla@example.org", "health", "daily", "Europe/Lisbon"),
    Reader("dan@example.org", "Health", "daily", "America/New_York"),
    Reader("emi@example.org", "climate; politics", "weekly", "Asia/Tokyo"),
    # Follows a tag no post carries: due every day, never mailed.
    Reader("fay@example.org", "sports", "daily", "Europe/Lisbon"),
    # Never confirmed: follows a busy tag but must get nothing.
    Reader("gus@example.org", "health", "immediate", confirmed=False),
    # Subscribes between posts: gets only what arrives after that.
    Reader("hal@example.org", "politics", "daily", joins_before_post=3),
]

POSTS = [
    PostSpec("Archive: an old budget speech", "politics, health", backdated=True),
    PostSpec("Parliament passes the budget", "Politics"),
    PostSpec("Hospital waiting lists shrink", "HEALTH"),
    PostSpec("Health minister resigns", "politics; health"),
    PostSpec("Floods reach the delta", "Climate"),
    PostSpec("Telescope finds water vapour", "Science"),
    PostSpec("Carbon tax debate heats up", "Climate, Politics, Economy"),
]


def slugs(tags: str) -> set[str]:
    return {part.strip().lower() for part in re.split(r"[,;]", tags) if part.strip()}


def expected_posts(reader: Reader) -> list[int]:
    """Indexes into POSTS this reader must get: a followed tag, arrived after they joined."""
    if not reader.confirmed:
        return []
    first = reader.joins_before_post or 0
    return [
        index
        for index, post in enumerate(POSTS)
        if not post.backdated and index >= first and slugs(post.tags) & slugs(reader.tags)
    ]


def expected_messages(reader: Reader) -> list[list[int]]:
    """Immediate readers: one message per post; daily and weekly: one digest with all."""
    posts = expected_posts(reader)
    if reader.cadence == "immediate":
        return [[index] for index in posts]
    return [posts] if posts else []


# --- helpers ----------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def reset_broker_pools(app: Celery) -> None:
    """Forget pooled broker connections so a changed broker_url takes effect.

    Celery caches its connection and producer pools on first use; an earlier test
    in the session may have made them for another broker.
    """
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None and amqp._producer_pool is not None:
        amqp._producer_pool.force_close_all()
        amqp._producer_pool = None
    # kombu keeps its pools in a registry keyed by broker URL: a closed pool left
    # there would be handed to the next test on the same broker.
    kombu.pools.reset()


def broker_idle(client: redis.Redis) -> bool:
    """No task waiting in the queue and none taken but unacknowledged (running).

    Read in one transaction: a task publishes its follow-up before it acks, so a
    snapshot never shows both lists empty while work is still pending.
    """
    with client.pipeline(transaction=True) as pipe:
        pipe.llen("celery")
        pipe.hlen("unacked")
        queued, unacked = pipe.execute()
    return int(queued) == 0 and int(unacked) == 0


def wait_idle(client: redis.Redis, settle: float = 0.6) -> None:
    """Wait until the broker has been idle for `settle` seconds in a row."""
    deadline = time.monotonic() + DEADLINE
    idle_since: float | None = None
    while True:
        now = time.monotonic()
        if broker_idle(client):
            idle_since = idle_since or now
            if now - idle_since >= settle:
                return
        else:
            idle_since = None
        if now > deadline:
            raise AssertionError("the worker never went idle")
        time.sleep(0.05)


def post_planned(post_id: int) -> bool:
    with db.session_scope() as session:
        return session.scalar(select(Post.planned_at).where(Post.id == post_id)) is not None


def text_part(message: Received) -> str:
    body = message.parsed().get_body(("plain",))
    assert body is not None, "message has no text part"
    return str(body.get_content())


def html_part(message: Received) -> str:
    body = message.parsed().get_body(("html",))
    assert body is not None, "message has no HTML part"
    return str(body.get_content())


def titles_in(text: str) -> list[int]:
    """Indexes of the POSTS whose titles appear in a message body."""
    return [index for index, post in enumerate(POSTS) if post.title in text]


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    hostname: str

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"celery worker exited with {self.proc.returncode}")
            if celery_app.control.ping(destination=[self.hostname], timeout=0.5):
                return
        raise AssertionError(f"celery worker not ready after {WORKER_START_TIMEOUT:.0f} s")

    def result_of(self, task_id: str) -> dict[str, Any] | None:
        """The logged return value of a finished task, None while it has not finished."""
        log = self.log()
        if f"[{task_id}] raised" in log:
            raise AssertionError(f"task {task_id} raised in the worker")
        found = re.search(rf"\[{re.escape(task_id)}\] succeeded in \S+s: (.*)$", log, re.M)
        if found is None:
            return None
        value = ast.literal_eval(found.group(1))
        assert isinstance(value, dict)
        return value

    def wait_result(self, task_id: str) -> dict[str, Any]:
        wait_until(lambda: self.result_of(task_id) is not None, f"task {task_id}")
        result = self.result_of(task_id)
        assert result is not None
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # warm shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@contextmanager
def celery_worker(log_path: Path) -> Iterator[WorkerProcess]:
    """A `celery worker` subprocess sharing this process's NEWSLETTER_* environment."""
    hostname = f"e2e-{uuid.uuid4().hex[:8]}@localhost"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "worker",
        "--pool=solo",
        "--loglevel=INFO",
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        f"--hostname={hostname}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    worker = WorkerProcess(proc, log_path, hostname)
    try:
        worker.wait_ready()
        yield worker
    except BaseException:
        print(f"----- celery worker log ({log_path}) -----\n{worker.log()}")
        raise
    finally:
        worker.stop()


@dataclass
class E2E:
    database_url: str
    smtp: ScriptedHandler
    redis: redis.Redis


@pytest.fixture
def e2e(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Iterator[E2E]:
    """PostgreSQL, Redis db 15 (flushed) and an SMTP server, wired into the settings."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    handler = ScriptedHandler()
    try:
        with OutboxServer(handler) as server:
            apply_env(
                monkeypatch,
                **{
                    **BASE_ENV,
                    "NEWSLETTER_DATABASE_URL": pg_url,
                    "NEWSLETTER_BROKER_URL": REDIS_URL,
                    "NEWSLETTER_SMTP_URL": server.url,
                },
            )
            reset_broker_pools(celery_app)
            assert not celery_app.conf.task_always_eager
            yield E2E(pg_url, handler, client)
    finally:
        # Back to in-process tasks for whatever runs next in this session.
        reset_broker_pools(celery_app)
        apply_env(monkeypatch, **BASE_ENV)
        truncate(pg_url)
        client.flushdb()
        client.close()


# --- the test ---------------------------------------------------------------------


@pytest.mark.e2e
def test_worker_plans_and_sends_every_digest_exactly_once(e2e: E2E, tmp_path: Path) -> None:
    smtp = e2e.smtp
    start = db.utcnow()
    joined_at = start - dt.timedelta(minutes=5)
    subscriber_ids: dict[str, int] = {}
    post_ids: list[int] = []

    def subscribe(reader: Reader, now: dt.datetime) -> None:
        with db.session_scope() as session:
            data = SubscriberInput(
                email=reader.email,
                tags=reader.tags,
                cadence=reader.cadence,
                timezone=reader.timezone,
                confirmed=reader.confirmed,
            )
            subscriber_ids[reader.email] = add_subscriber(session, data, now=now).id

    with celery_worker(tmp_path / "worker.log") as worker:
        # 1. Tags and the readers who are there from the start.
        with db.session_scope() as session:
            get_or_create_tags(session, parse_tag_names(TAGS))
        for reader in READERS:
            if reader.joins_before_post is None:
                subscribe(reader, joined_at)

        # 2. Posts, one transaction each; after commit, `post_published` goes to Redis
        #    and the worker plans and sends the immediate readers' mail. Waiting for
        #    each post to be planned makes "one message per post" deterministic.
        for index, spec in enumerate(POSTS):
            for reader in READERS:
                if reader.joins_before_post == index:
                    subscribe(reader, db.utcnow())
            received = joined_at - dt.timedelta(hours=1) if spec.backdated else None
            with db.session_scope() as session:
                url = f"https://news.example.org/posts/{index}"
                post = add_post(session, PostInput(spec.title, url, spec.tags), now=received)
                post_ids.append(post.id)
            wait_until(partial(post_planned, post_ids[-1]), f"post {index} to be planned")

        immediate = sum(len(expected_messages(r)) for r in READERS if r.cadence == "immediate")
        wait_until(lambda: len(smtp.messages) >= immediate, f"{immediate} immediate messages")
        wait_idle(e2e.redis)
        assert len(smtp.messages) == immediate

        # 3. Daily and weekly: at the latest next_digest_at every one of them is due.
        with db.session_scope() as session:
            due_at = session.scalar(select(func.max(Subscriber.next_digest_at)))
        assert due_at is not None
        iso = due_at.isoformat()
        planned = worker.wait_result(
            celery_app.send_task("worker.tasks.plan_due_digests", args=[iso]).id
        )
        scheduled = [r for r in READERS if r.cadence != "immediate" and r.confirmed]
        with_mail = [r for r in scheduled if expected_posts(r)]
        assert planned["subscribers due"] == len(scheduled)
        assert planned["deliveries planned"] == len(with_mail)
        assert planned["readers skipped: nothing new for them"] == len(scheduled) - len(with_mail)
        assert planned["posts planned late (missed by an earlier run)"] == 0

        total = sum(len(expected_messages(r)) for r in READERS)
        wait_until(lambda: len(smtp.messages) >= total, f"{total} messages in all")
        wait_idle(e2e.redis)
        assert len(smtp.messages) == total

        # 4. Message by message: who got which posts.
        by_reader: dict[str, list[list[int]]] = {r.email: [] for r in READERS}
        message_ids: list[tuple[str, str]] = []
        for message in smtp.messages:
            parsed = message.parsed()
            assert len(message.recipients) == 1, message.recipients
            (recipient,) = message.recipients
            assert recipient in by_reader, f"mail to a stranger: {recipient}"
            assert recipient in str(parsed["To"])
            text = text_part(message)
            posts = titles_in(text)
            assert posts, f"a message to {recipient} names no post:\n{text}"
            # Every post block ends in its link: no post we did not recognise.
            assert text.count("Read more: ") == len(posts), text
            html = html_part(message)
            for index in posts:
                assert POSTS[index].title in html
                assert f"https://news.example.org/posts/{index}" in text
            subject = str(parsed["Subject"])
            if len(posts) == 1:
                assert subject == POSTS[posts[0]].title
            else:
                assert subject.startswith(f"{len(posts)} new posts in "), subject
            message_ids.append((recipient, str(parsed["Message-ID"])))
            by_reader[recipient].append(posts)

        for reader in READERS:
            got = by_reader[reader.email]
            flat = [index for posts in got for index in posts]
            assert len(flat) == len(set(flat)), f"{reader.email} got a post twice: {got}"
            for index in flat:
                assert slugs(POSTS[index].tags) & slugs(reader.tags), (
                    f"{reader.email} got {POSTS[index].title!r}, which they do not follow"
                )
            assert sorted(got) == sorted(expected_messages(reader)), reader.email
        assert by_reader["fay@example.org"] == []
        assert by_reader["gus@example.org"] == []
        # Readers with the same posts in the same cadence share one rendering.
        shared = {(r.cadence, tuple(posts)) for r in READERS for posts in expected_messages(r)}
        with db.session_scope() as session:
            assert session.scalar(select(func.count()).select_from(Digest)) == len(shared)
        assert len({mid for _, mid in message_ids}) == len(message_ids), "a Message-ID repeated"

        # 5. A second run at the same instant, and a retried post_published, send nothing.
        again = celery_app.send_task("worker.tasks.plan_due_digests", args=[iso]).id
        retried = celery_app.send_task("worker.tasks.post_published", args=[post_ids[3]]).id
        replanned = worker.wait_result(again)
        assert replanned["subscribers due"] == 0
        assert replanned["deliveries planned"] == 0
        assert replanned["deliveries resumed after an interrupted run"] == 0
        assert worker.wait_result(retried)["deliveries"] == 0
        wait_idle(e2e.redis)
        time.sleep(1.0)
        assert len(smtp.messages) == total

        # 6. The ledger agrees with the mailbox.
        with db.session_scope() as session:
            deliveries = list(session.scalars(select(Delivery)))
            rows = session.execute(select(DeliveryPost.subscriber_id, DeliveryPost.post_id))
            promised = {(subscriber_id, post_id) for subscriber_id, post_id in rows}
        assert len(deliveries) == total
        assert {d.status for d in deliveries} == {DeliveryStatus.SENT}
        assert all(d.sent_at is not None for d in deliveries)
        # Each message is the one its delivery row was planned for.
        email_of = {sid: email for email, sid in subscriber_ids.items()}
        assert {(email_of[d.subscriber_id], d.message_id) for d in deliveries} == set(message_ids)
        assert promised == {
            (subscriber_ids[r.email], post_ids[index])
            for r in READERS
            for index in expected_posts(r)
        }
        assert "Traceback" not in worker.log()
