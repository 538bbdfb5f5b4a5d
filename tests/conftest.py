"""Shared fixtures: real databases (SQLite and PostgreSQL), a real SMTP server, settings.

Every test that touches the database runs once per backend. The schema is made by
the Alembic migrations, once per backend per session; each test leaves the tables
empty for the next.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from newsletter import db
from newsletter.config import get_settings
from newsletter.outbox import OutboxHandler, OutboxServer

PG_ADMIN_DSN = os.environ.get("NEWSLETTER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("NEWSLETTER_TEST_REDIS", "redis://127.0.0.1:6379/15")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the items
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`-n`, `--dist loadgroup`) tests that share a service run on
    one worker, one after another: the end-to-end tests share the Redis database they
    flush, and the fault tests, which start, kill and load whole services, run apart
    from each other. Every other test is spread freely: each worker has its own
    databases."""
    for item in items:
        if item.get_closest_marker("faults"):
            item.add_marker(pytest.mark.xdist_group("faults"))
        elif item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.xdist_group("broker"))


@pytest.fixture(autouse=True)
def no_count_warm_up(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """An app started in a test does not count the dashboard's figures in the
    background: a late count could land in the cache of the next test's data. The
    warm-up itself is tested where it is asked for (`warm_up` marker)."""
    if request.node.get_closest_marker("warm_up"):
        return
    from newsletter import stats

    monkeypatch.setattr(stats, "warm_up", lambda: None)


@pytest.fixture(autouse=True)
def cheap_password_hashing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Staff passwords are hashed with argon2id at the lowest cost in tests: the real
    cost (about 0.13 s a hash or check) would spend minutes across the console's
    sign-ins. The production cost is pinned by a test marked `real_password_cost`."""
    if request.node.get_closest_marker("real_password_cost"):
        return
    from argon2 import PasswordHasher

    from newsletter.console import services

    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    monkeypatch.setattr(services, "_hasher", lambda: cheap)
    monkeypatch.setattr(services, "_dummy_hash", lambda: cheap.hash("no such account"))


TABLES = [
    "bounce_events",
    "delivery_posts",
    "deliveries",
    "digests",
    "post_tags",
    "subscriber_tags",
    "posts",
    "feeds",
    "subscribers",
    "suppressions",
    "signup_attempts",
    "api_tokens",
    "tags",
    "audit_entries",
    "staff_sessions",
    "staff_login_attempts",
    "staff_users",
    "suppression_events",
    "console_jobs",
]

BASE_ENV = {
    "NEWSLETTER_ENV": "development",
    "NEWSLETTER_SECRET_KEY": "test-secret-key-0123456789",
    "NEWSLETTER_BASE_URL": "https://news.example.org",
    "NEWSLETTER_FROM": "digest@news.example.org",
    "NEWSLETTER_BROKER_URL": "",
    "NEWSLETTER_SMTP_URL": "",
}


def apply_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Set NEWSLETTER_* variables and make every cached consumer see them."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    from worker.celery_app import app, configure

    configure(app)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    name = f"newsletter_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    db.upgrade(url)
    yield url
    db.dispose_engines()
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "newsletter.db"
    url = f"sqlite:///{path}"
    db.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An empty database with no schema (SQLite or PostgreSQL), for migration tests."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('mig')}/m.db"
        return
    name = f"newsletter_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    yield url
    db.get_engine(url).dispose()
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def truncate(url: str) -> None:
    engine = db.get_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Base settings with no database: for tests that need none."""
    apply_env(monkeypatch, **BASE_ENV)
    return dict(BASE_ENV)


@pytest.fixture
def app_env(
    monkeypatch: pytest.MonkeyPatch, database_url: str, settings_env: dict[str, str]
) -> Iterator[str]:
    """Settings pointing at an empty, migrated database (SQLite or PostgreSQL)."""
    apply_env(monkeypatch, NEWSLETTER_DATABASE_URL=database_url)
    yield database_url
    truncate(database_url)


class ScriptedHandler(OutboxHandler):
    """A real SMTP server that can refuse chosen recipients the way real servers do.

    `replies[address]` is a list of RCPT replies used one per attempt (the last one
    repeats), e.g. ["451 4.3.0 try later", "250 OK"] or ["550 5.1.1 no such user"].
    """

    def __init__(self) -> None:
        super().__init__()
        self.replies: dict[str, list[str]] = {}
        self.attempts: dict[str, int] = {}

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        script = self.replies.get(address)
        if script:
            n = self.attempts.get(address, 0)
            self.attempts[address] = n + 1
            reply = script[min(n, len(script) - 1)]
            if not reply.startswith("250"):
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def smtp(
    monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str]
) -> Iterator[ScriptedHandler]:
    """A real SMTP server (aiosmtpd) on a free loopback port, wired into the settings."""
    handler = ScriptedHandler()
    with OutboxServer(handler) as server:
        apply_env(monkeypatch, NEWSLETTER_SMTP_URL=server.url)
        yield handler


@pytest.fixture
def t0() -> dt.datetime:
    """A fixed instant in the past: tests move the clock forward from here."""
    return dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)  # a Monday
