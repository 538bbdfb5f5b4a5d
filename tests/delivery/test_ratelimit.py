"""Send-rate limits: token buckets in Redis (one Lua script) or in the process.

The limit is proven where it matters: two separate worker processes draw from one
Redis bucket while sending through a real SMTP server, and the server's own arrival
times never show more in any 1 s window than the bucket can give.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from newsletter.config import get_settings
from newsletter.delivery.ratelimit import (
    KEY_PREFIX,
    Limit,
    LocalRateLimiter,
    RedisRateLimiter,
    default_burst,
    domain_limits,
    limiter_for,
    message_limits,
    parse_domain_rates,
)
from newsletter.delivery.relays import parse_relays
from newsletter.errors import InvalidInput
from newsletter.outbox import OutboxHandler, OutboxServer, free_port
from tests.conftest import BASE_ENV, REDIS_URL, apply_env

REPO_ROOT = Path(__file__).resolve().parents[2]

# Tests that use Redis run on one xdist worker with the end-to-end tests, which flush
# the shared test database: a bucket flushed mid-test would refill at once.
redis_test = pytest.mark.xdist_group("broker")


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def redis_limiter(client: redis.Redis) -> Iterator[RedisRateLimiter]:
    """A limiter under a key prefix of its own; its keys are removed afterwards."""
    prefix = f"{KEY_PREFIX}test-{uuid.uuid4().hex[:8]}:"
    yield RedisRateLimiter(client, prefix=prefix)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)


# --- the bucket, in Redis and in the process ----------------------------------------


@redis_test
def test_redis_bucket_gives_its_burst_then_waits_without_taking(
    redis_limiter: RedisRateLimiter, client: redis.Redis
) -> None:
    # 0.5 a second: the next token is 2 s away, far longer than these calls take.
    assert [redis_limiter.acquire("k", 0.5, burst=3) for _ in range(3)] == [0, 0, 0]
    waits = [redis_limiter.acquire("k", 0.5, burst=3) for _ in range(50)]
    # A wait takes nothing: were tokens owed, each wait would be 2 s longer than the last.
    assert all(0 < w <= 2.0 for w in waits), waits
    key = next(iter(client.scan_iter(match="*test-*:k")))
    tokens = float(client.hget(key, "tokens") or b"nan")
    assert 0 <= tokens < 1
    # The key goes away once a full bucket would be no different from no key.
    assert 0 < client.pttl(key) <= (3 / 0.5) * 1000 + 1000


@redis_test
def test_redis_bucket_takes_from_every_limit_or_from_none(
    redis_limiter: RedisRateLimiter, client: redis.Redis
) -> None:
    relay = Limit.of("relay", 0.5, burst=2)
    gmail = Limit.of("gmail", 0.5, burst=1)
    assert redis_limiter.acquire_all([relay, gmail]) == 0
    assert redis_limiter.acquire_all([relay, gmail]) > 0  # gmail is empty...
    # ... and the relay's second token is still there for another domain.
    assert redis_limiter.acquire_all([relay, Limit.of("yahoo", 0.5, burst=1)]) == 0
    assert redis_limiter.acquire_all([relay]) > 0


@redis_test
def test_redis_wait_admits_at_the_rate(redis_limiter: RedisRateLimiter) -> None:
    started = time.monotonic()
    slept = [redis_limiter.wait({"w": 20.0}) for _ in range(12)]
    # Burst 2 at 20/s: the other 10 waited about 0.5 s in all. Only the lower bound is
    # held (the limit), never how fast this machine got through it.
    assert time.monotonic() - started >= 10 / 20 - 0.05
    assert slept[:2] == [0, 0]
    assert sum(slept) > 0


def test_local_bucket_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock, sleep=clock.sleep)
    assert [limiter.acquire("k", 4, burst=2) for _ in range(2)] == [0, 0]
    assert limiter.acquire("k", 4, burst=2) == pytest.approx(0.25)
    assert limiter.acquire("k", 4, burst=2) == pytest.approx(0.25)  # nothing owed
    clock.now += 0.25
    assert limiter.acquire("k", 4, burst=2) == 0
    clock.now += 100  # idle: refills to the burst, not beyond
    assert [limiter.acquire("k", 4, burst=2) for _ in range(3)] == [0, 0, pytest.approx(0.25)]


def test_local_wait_sleeps_until_every_limit_admits() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock=clock, sleep=clock.sleep)
    limits = {"relay:r": 20.0, "domain:slow.example": 2.0}  # bursts: 2 and 1
    assert limiter.wait(limits) == 0
    both = [Limit.of(key, rate) for key, rate in limits.items()]
    assert limiter.acquire_all(both) == pytest.approx(0.5)  # the slower limit decides...
    assert limiter.wait({"relay:r": 20.0}) == 0  # ... and the relay's token was not spent
    assert limiter.wait(limits) == pytest.approx(0.5)
    assert limiter.wait({}) == 0


def test_local_bucket_is_shared_by_threads() -> None:
    clock = FakeClock()  # frozen: only the burst is there to be had
    limiter = LocalRateLimiter(clock=clock)
    taken: list[float] = []
    lock = threading.Lock()

    def grab() -> None:
        for _ in range(500):
            wait = limiter.acquire("k", 1.0, burst=25)
            with lock:
                taken.append(wait)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert taken.count(0) == 25


def test_burst_defaults_to_a_tenth_of_a_second_and_at_least_one() -> None:
    assert default_burst(50) == 5
    assert default_burst(2) == 1
    assert default_burst(0.1) == 1
    with pytest.raises(ValueError):
        Limit.of("k", 0)
    with pytest.raises(ValueError):
        Limit.of("k", 5, burst=0.5)


# --- configuration ----------------------------------------------------------------


def test_domain_rates_are_parsed() -> None:
    assert parse_domain_rates("") == {}
    assert parse_domain_rates(" Gmail.com = 50 , yahoo.com=20,bücher.de=0.5 ") == {
        "gmail.com": 50.0,
        "yahoo.com": 20.0,
        "xn--bcher-kva.de": 0.5,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("gmail.com", "should look like gmail.com=50"),
        ("gmail.com=50,yahoo.com", "'yahoo.com' should look like"),
        ("gmail.com=fast", "must be a positive number"),
        ("gmail.com=0", "must be a positive number"),
        ("gmail.com=-5", "must be a positive number"),
        ("gmail.com=inf", "must be a positive number"),
        ("gmail.com=", "must be a positive number"),
        ("=50", "does not name a mail domain"),
        ("user@gmail.com=50", "does not name a mail domain"),
        ("gmail com=50", "does not name a mail domain"),
        ("gmail.com=50,GMAIL.com=10", "'gmail.com' is listed twice"),
        ("gmail.com=50,", "should look like"),
    ],
)
def test_bad_domain_rates_are_refused_clearly(value: str, expected: str) -> None:
    with pytest.raises(InvalidInput, match="NEWSLETTER_DOMAIN_RATES") as caught:
        parse_domain_rates(value)
    assert expected in str(caught.value)


def test_domain_limits_reads_the_settings(
    monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str]
) -> None:
    apply_env(monkeypatch, NEWSLETTER_DOMAIN_RATES="gmail.com=50,yahoo.com=20")
    assert domain_limits(get_settings()) == {"gmail.com": 50.0, "yahoo.com": 20.0}


def test_message_limits_name_the_relay_and_the_recipient_domain() -> None:
    limited, free = parse_relays("smtp://a.example?rate=30,smtp://b.example")
    domains = {"gmail.com": 50.0}
    assert message_limits(limited, "x@Gmail.COM", domains) == {
        "relay:a.example:25": 30.0,
        "domain:gmail.com": 50.0,
    }
    assert message_limits(limited, "x@example.org", domains) == {"relay:a.example:25": 30.0}
    assert message_limits(free, "x@example.org", domains) == {}


def test_limiter_for_keeps_buckets_in_the_process_without_redis(
    monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str]
) -> None:
    assert isinstance(limiter_for(get_settings()), LocalRateLimiter)
    apply_env(monkeypatch, NEWSLETTER_BROKER_URL="sqla+sqlite:///broker.db")
    limiter = limiter_for(get_settings())
    assert isinstance(limiter, LocalRateLimiter)
    assert limiter_for(get_settings()) is limiter  # one per process: shared buckets


@redis_test
def test_limiter_for_uses_redis_when_the_broker_is_redis(
    monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str], client: redis.Redis
) -> None:
    apply_env(monkeypatch, NEWSLETTER_BROKER_URL=REDIS_URL)
    limiter = limiter_for(get_settings())
    assert isinstance(limiter, RedisRateLimiter)
    key = f"test-{uuid.uuid4().hex[:8]}"
    try:
        assert limiter.acquire(key, 1.0) == 0
        assert client.exists(KEY_PREFIX + key)
    finally:
        client.delete(KEY_PREFIX + key)


def test_unreachable_redis_falls_back_to_the_process_and_keeps_limiting(
    monkeypatch: pytest.MonkeyPatch,
    settings_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    apply_env(monkeypatch, NEWSLETTER_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    limiter = limiter_for(get_settings())
    assert isinstance(limiter, RedisRateLimiter)
    with caplog.at_level(logging.WARNING, logger="newsletter.delivery.ratelimit"):
        assert limiter.acquire("k", 0.5, burst=1) == 0  # sending goes on
        assert limiter.acquire("k", 0.5, burst=1) > 0  # still limited, in the process
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once, not once per message
    assert "Redis is unreachable" in warnings[0]


# --- two worker processes, one limit -------------------------------------------------

# A worker in miniature: the settings from the environment, the limiter and limits
# the sender uses, then one SMTP connection; it waits for "go" so both start together.
WORKER = """
import json, sys
from newsletter.config import get_settings
from newsletter.delivery.mime import OutgoingMessage
from newsletter.delivery.ratelimit import domain_limits, limiter_for, message_limits
from newsletter.delivery.relays import parse_relays
from newsletter.delivery.smtp import SmtpTransport

settings = get_settings()
[relay] = parse_relays(settings.smtp_url)
limiter = limiter_for(settings)
domains = domain_limits(settings)
slept = {}
with SmtpTransport(relay.config) as smtp:
    print("ready", flush=True)
    sys.stdin.readline()
    for n, recipient in enumerate(json.loads(sys.argv[1])):
        domain = recipient.rpartition("@")[2]
        slept[domain] = slept.get(domain, 0.0) + limiter.wait(
            message_limits(relay, recipient, domains)
        )
        smtp.send(OutgoingMessage(
            sender="digest@news.example.org",
            recipient=recipient,
            data=b"Subject: digest\\r\\n\\r\\nHello\\r\\n",
            message_id=f"<{n}@news.example.org>",
        ))
print(json.dumps(slept), flush=True)
"""


class ArrivalHandler(OutboxHandler):
    """Notes when each message reached the server, by the server's clock."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.arrivals.append((time.monotonic(), envelope.rcpt_tos[0]))
        return await super().handle_DATA(server, session, envelope)


def run_workers(env: dict[str, str], recipient_lists: list[list[str]]) -> list[dict[str, float]]:
    """Start one process per list, let them go at once, and return what each slept."""
    full_env = {**os.environ, **BASE_ENV, **env}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(recipients)],
            cwd=REPO_ROOT,
            env=full_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for recipients in recipient_lists
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", proc.communicate(timeout=30)[1]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        slept = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            slept.append(json.loads(out.strip().splitlines()[-1]))
        return slept
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def busiest_second(times: list[float]) -> int:
    """The most arrivals in any window of 1 s, windows starting at each arrival."""
    times = sorted(times)
    return max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))


# Between a token and its message's arrival at the server lies a little network and
# scheduling time, which can bring two messages granted apart closer together.
JITTER = 1


@redis_test
def test_relay_rate_holds_across_two_worker_processes() -> None:
    rate, per_worker = 10.0, 20
    burst = default_burst(rate)
    handler = ArrivalHandler()
    with OutboxServer(handler) as server:
        slept = run_workers(
            {
                "NEWSLETTER_BROKER_URL": REDIS_URL,
                "NEWSLETTER_SMTP_URL": f"{server.url}?rate={rate:g}",
                "NEWSLETTER_DOMAIN_RATES": "",
            },
            [[f"w{w}-{n}@example.org" for n in range(per_worker)] for w in range(2)],
        )
    times = [t for t, _ in handler.arrivals]
    assert len(times) == 2 * per_worker
    # Each process alone would be allowed `rate`; together they were held to it.
    assert busiest_second(times) <= rate + burst + JITTER
    assert max(times) - min(times) >= (len(times) - burst) / rate - 0.5
    assert all(s["example.org"] > 0 for s in slept)  # both had to wait their turn


@redis_test
def test_only_the_limited_domain_is_slowed() -> None:
    slow, fast = f"slow-{uuid.uuid4().hex[:6]}.example", "fast.example"
    rate, per_worker = 4.0, 8
    burst = default_burst(rate)
    handler = ArrivalHandler()
    with OutboxServer(handler) as server:
        slept = run_workers(
            {
                "NEWSLETTER_BROKER_URL": REDIS_URL,
                # The relay's own limit is far above what these send: every message
                # goes through the bucket script, and only the slow domain's limit bites.
                "NEWSLETTER_SMTP_URL": f"{server.url}?rate=1000",
                "NEWSLETTER_DOMAIN_RATES": f"{slow}={rate:g},other.example=1",
            },
            [
                [f"w{w}-{n}@{domain}" for n in range(per_worker) for domain in (slow, fast)]
                for w in range(2)
            ],
        )
    slow_times = [t for t, rcpt in handler.arrivals if rcpt.endswith("@" + slow)]
    fast_times = [t for t, rcpt in handler.arrivals if rcpt.endswith("@" + fast)]
    assert len(slow_times) == len(fast_times) == 2 * per_worker
    assert busiest_second(slow_times) <= rate + burst + JITTER
    assert max(slow_times) - min(slow_times) >= (len(slow_times) - burst) / rate - 0.5
    for worker in slept:
        assert worker[slow] > 0
        assert worker[fast] == 0  # never waited for a token
