"""Send-rate limits per relay and per recipient domain, held across workers and hosts.

Each limit is a token bucket: `rate` tokens a second, at most `burst` saved up, one
token per message. With a Redis broker the buckets live in Redis and one Lua script
reads, refills and takes from them, so every process on every host draws from the
same bucket, timed by the Redis server's clock alone. Without Redis (SQLite, tasks
in-process) the buckets live in the process.

A message is admitted only when all its limits (its relay's and its recipient
domain's) have a token; then it takes one from each, atomically, or none at all, so
waiting on one limit never spends another's tokens.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Protocol

import idna
import redis

from newsletter.config import Settings
from newsletter.delivery.relays import Relay
from newsletter.errors import InvalidInput
from newsletter.redaction import redact_url

log = logging.getLogger(__name__)

KEY_PREFIX = "newsletter:rate:"
# While Redis is unreachable the buckets are kept in the process, and Redis is tried
# again this often (seconds). Sending goes on meanwhile, each process to the full
# rate: a short overshoot is better than a stopped send.
REDIS_RETRY_AFTER = 30.0
# A Redis that does not answer within this many seconds counts as unreachable.
REDIS_TIMEOUT = 2.0

# KEYS: the buckets. ARGV: rate and burst for each, in KEYS' order. Returns "0" after
# taking one token from every bucket, or the seconds until all of them hold one
# (as a string: Redis would cut a Lua number to an integer), having taken nothing.
_TOKEN_BUCKETS = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local tokens, stamps, wait = {}, {}, 0
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local saved = redis.call('HMGET', key, 'tokens', 'ts')
  local level, ts = tonumber(saved[1]), tonumber(saved[2])
  if level == nil or ts == nil then
    level, ts = burst, now
  elseif now > ts then
    level, ts = math.min(burst, level + (now - ts) * rate), now
  end
  level = math.min(level, burst)
  tokens[i], stamps[i] = level, ts
  if level < 1 then wait = math.max(wait, (1 - level) / rate) end
end
if wait > 0 then return string.format('%.17g', wait) end
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  -- %.17g: tostring keeps 14 digits, which would round the time to 0.1 ms and
  -- hand out that much extra refill on every call.
  redis.call('HSET', key, 'tokens', string.format('%.17g', tokens[i] - 1),
    'ts', string.format('%.17g', stamps[i]))
  -- A bucket left alone refills in burst / rate seconds; by then it equals no key.
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
end
return '0'
"""


def default_burst(rate: float) -> float:
    """A tenth of a second's worth, at least one message: a 1 s window never sees much
    above `rate` after an idle spell, yet sleep granularity and several connections
    taking turns do not waste the tokens that fall due while they are busy."""
    return max(1.0, rate / 10.0)


@dataclass(frozen=True)
class Limit:
    """One bucket a message must draw from: `rate` tokens a second, `burst` at most."""

    key: str
    rate: float
    burst: float

    @classmethod
    def of(cls, key: str, rate: float, burst: float | None = None) -> Limit:
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"rate limit {key!r}: rate must be a positive number, got {rate!r}")
        chosen = default_burst(rate) if burst is None else burst
        if not math.isfinite(chosen) or chosen < 1:
            raise ValueError(f"rate limit {key!r}: burst must be at least 1, got {chosen!r}")
        return cls(key, float(rate), float(chosen))


class RateLimiter(Protocol):
    def acquire(self, key: str, rate: float, burst: float | None = None) -> float: ...

    def acquire_all(self, limits: Sequence[Limit]) -> float: ...

    def wait(self, keys_and_rates: Mapping[str, float]) -> float: ...


class _Waiting:
    """`acquire` and the blocking `wait`, on top of a subclass's `acquire_all`."""

    _sleep: Callable[[float], None]

    def acquire_all(self, limits: Sequence[Limit]) -> float:
        raise NotImplementedError

    def acquire(self, key: str, rate: float, burst: float | None = None) -> float:
        """0 after taking a token from `key`'s bucket, else the seconds to wait (nothing taken)."""
        return self.acquire_all([Limit.of(key, rate, burst)])

    def wait(self, keys_and_rates: Mapping[str, float]) -> float:
        """Sleep until every limit admits one message, take a token from each; returns
        the seconds slept. An empty mapping admits at once."""
        limits = [Limit.of(key, rate) for key, rate in keys_and_rates.items()]
        if not limits:
            return 0.0
        slept = 0.0
        while (pause := self.acquire_all(limits)) > 0:
            self._sleep(pause)
            slept += pause
        return slept


@dataclass
class _Bucket:
    level: float
    stamp: float


class LocalRateLimiter(_Waiting):
    """Buckets in this process, shared by its threads: for a send without Redis."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire_all(self, limits: Sequence[Limit]) -> float:
        with self._lock:
            now = self._clock()
            buckets = []
            wait = 0.0
            for limit in limits:
                bucket = self._buckets.setdefault(limit.key, _Bucket(limit.burst, now))
                if now > bucket.stamp:
                    bucket.level += (now - bucket.stamp) * limit.rate
                    bucket.stamp = now
                bucket.level = min(bucket.level, limit.burst)
                if bucket.level < 1:
                    wait = max(wait, (1 - bucket.level) / limit.rate)
                buckets.append(bucket)
            if wait > 0:
                return wait
            for bucket in buckets:
                bucket.level -= 1
            return 0.0


@dataclass
class _Fallback:
    local: LocalRateLimiter = field(default_factory=LocalRateLimiter)
    until: float = 0.0


class RedisRateLimiter(_Waiting):
    """Buckets in Redis, shared by every process and host that uses the same Redis.

    If Redis stops answering, the limiter keeps the buckets in the process (with a
    warning) and tries Redis again every REDIS_RETRY_AFTER seconds.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = KEY_PREFIX,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._sleep = sleep
        self._clock = clock
        self._script = client.register_script(_TOKEN_BUCKETS)
        self._fallback = _Fallback(LocalRateLimiter(clock=clock, sleep=sleep))
        self._lock = threading.Lock()

    def acquire_all(self, limits: Sequence[Limit]) -> float:
        if not limits:
            return 0.0
        with self._lock:
            local = self._clock() < self._fallback.until
        if not local:
            keys = [self._prefix + limit.key for limit in limits]
            args: list[Any] = []
            for limit in limits:
                args += [repr(limit.rate), repr(limit.burst)]
            try:
                return float(self._script(keys=keys, args=args))
            except redis.RedisError as exc:
                self._fall_back(exc)
        return self._fallback.local.acquire_all(limits)

    def _fall_back(self, exc: redis.RedisError) -> None:
        with self._lock:
            first = self._fallback.until == 0.0
            self._fallback.until = self._clock() + REDIS_RETRY_AFTER
        log.warning(
            "rate limits: Redis is unreachable (%s); limiting in this process alone%s, "
            "trying Redis again in %.0f s",
            type(exc).__name__,
            " (each process to the full rate)" if first else "",
            REDIS_RETRY_AFTER,
        )


def _domain(raw: str, entry: str) -> str:
    name = raw.strip().lower().rstrip(".")
    if not name or "@" in name or any(c.isspace() or c in "/:" for c in name):
        raise InvalidInput(f"NEWSLETTER_DOMAIN_RATES: {entry[:80]!r} does not name a mail domain")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise InvalidInput(
                f"NEWSLETTER_DOMAIN_RATES: {entry[:80]!r} is not a valid domain ({exc})"
            ) from None
    return name


def parse_domain_rates(value: str) -> dict[str, float]:
    """`gmail.com=50,yahoo.com=20` as {domain: messages per second}; blank: no limits.
    Domains are matched exactly (lower case, IDNA A-labels), as on the wire."""
    rates: dict[str, float] = {}
    if not value.strip():
        return rates
    for raw in value.split(","):
        entry = raw.strip()
        name, eq, number = entry.partition("=")
        if not eq:
            raise InvalidInput(
                f"NEWSLETTER_DOMAIN_RATES: {entry[:80]!r} should look like gmail.com=50"
            )
        domain = _domain(name, entry)
        try:
            rate = float(number)
        except ValueError:
            rate = math.nan
        if not math.isfinite(rate) or rate <= 0:
            raise InvalidInput(
                f"NEWSLETTER_DOMAIN_RATES: the rate of {domain!r} must be a positive number "
                f"of messages per second, got {number.strip()[:30]!r}"
            )
        if domain in rates:
            raise InvalidInput(f"NEWSLETTER_DOMAIN_RATES: {domain!r} is listed twice")
        rates[domain] = rate
    return rates


def domain_limits(settings: Settings) -> Mapping[str, float]:
    """NEWSLETTER_DOMAIN_RATES, parsed once per value (it is asked for every message)."""
    return _domain_rates(settings.domain_rates)


@lru_cache(maxsize=8)
def _domain_rates(value: str) -> Mapping[str, float]:
    return MappingProxyType(parse_domain_rates(value))


def relay_key(relay: Relay) -> str:
    return f"relay:{relay.name}"


def domain_key(domain: str) -> str:
    return f"domain:{domain}"


def message_limits(relay: Relay, recipient: str, domains: Mapping[str, float]) -> dict[str, float]:
    """The limits one message to `recipient` (a wire address) through `relay` must
    pass, ready for `wait`: the relay's rate, and its recipient domain's if listed."""
    limits: dict[str, float] = {}
    if relay.rate is not None:
        limits[relay_key(relay)] = relay.rate
    domain = recipient.rpartition("@")[2].lower().rstrip(".")
    if domain in domains:
        limits[domain_key(domain)] = domains[domain]
    return limits


@lru_cache(maxsize=4)
def _limiter(broker_url: str | None) -> RedisRateLimiter | LocalRateLimiter:
    if broker_url and broker_url.startswith(("redis://", "rediss://")):
        try:
            client = redis.Redis.from_url(
                broker_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
            )
        except ValueError as exc:
            log.warning(
                "rate limits: cannot use broker %s (%s); limiting in this process alone",
                redact_url(broker_url),
                exc,
            )
            return LocalRateLimiter()
        return RedisRateLimiter(client)
    return LocalRateLimiter()


def limiter_for(settings: Settings) -> RedisRateLimiter | LocalRateLimiter:
    """The process's limiter: in Redis when the broker is Redis, else in the process.
    One per broker URL, so every batch and thread of a worker shares its buckets."""
    return _limiter(settings.broker_url)
