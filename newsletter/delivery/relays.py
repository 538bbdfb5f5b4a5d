"""Several SMTP relays: weighted choice between them, and failover when one refuses.

NEWSLETTER_SMTP_URL holds one relay URL or several, comma-separated, each with
optional `weight=` (share of the connections it gets) and `rate=` (messages per
second, shared by every worker and host through the rate limiter):

    smtp://a.example:587?starttls=1&weight=3&rate=50,smtps://user:pass@b.example

A relay that refuses connections is left out for a cooldown that doubles with each
failure in a row, so a dead relay costs one refused connection per cooldown, not one
per message.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from urllib.parse import parse_qs

from newsletter.delivery.smtp import ConnectionLost, SmtpConfig, SmtpTransport
from newsletter.errors import InvalidInput
from newsletter.redaction import redact, redact_url
from newsletter.urls import split_url

log = logging.getLogger(__name__)

# The query keys a relay URL may carry: SmtpConfig's own and the pool's. Anything
# else is refused, so a misspelt `wieght=` cannot pass silently.
_KNOWN_KEYS = frozenset({"starttls", "timeout", "weight", "rate"})

FIRST_COOLDOWN = 5.0
MAX_COOLDOWN = 300.0


@dataclass(frozen=True)
class Relay:
    """One SMTP relay. `name` (`host:port`, or `user@host:port`; never a password)
    is stable across processes and hosts: logs show it and rate limits are keyed on it."""

    name: str
    config: SmtpConfig
    weight: float = 1.0
    # Messages per second across every sender; None: no limit of its own.
    rate: float | None = None


def _positive(entry: str, key: str, values: list[str]) -> float:
    """The one positive, finite number `key=` holds in the relay URL `entry`."""
    shown = redact_url(entry)
    if len(values) != 1:
        raise InvalidInput(f"SMTP relay {shown!r}: {key}= given {len(values)} times")
    try:
        number = float(values[0])
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise InvalidInput(
            f"SMTP relay {shown!r}: {key}= must be a positive number, got {values[0][:30]!r}"
        )
    return number


def _relay_name(config: SmtpConfig) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    user = f"{config.username}@" if config.username else ""
    return f"{user}{host}:{config.port}"


def parse_relay(entry: str) -> Relay:
    """One relay URL, with its `weight=` and `rate=`."""
    config = SmtpConfig.from_url(entry)  # refuses a bad scheme, host or port, redacted
    query = parse_qs(split_url(entry, "SMTP URL").query, keep_blank_values=True)
    unknown = sorted(set(query) - _KNOWN_KEYS)
    if unknown:
        raise InvalidInput(
            f"SMTP relay {redact_url(entry)!r}: unknown option {unknown[0][:30]!r} "
            f"(known: {', '.join(sorted(_KNOWN_KEYS))})"
        )
    weight = _positive(entry, "weight", query["weight"]) if "weight" in query else 1.0
    rate = _positive(entry, "rate", query["rate"]) if "rate" in query else None
    return Relay(name=_relay_name(config), config=config, weight=weight, rate=rate)


def parse_relays(value: str) -> list[Relay]:
    """NEWSLETTER_SMTP_URL: one relay URL or several, comma-separated, in order.

    A password holding a comma must be written %2C, as any reserved character in a URL.
    """
    if not value.strip():
        raise InvalidInput("NEWSLETTER_SMTP_URL names no SMTP relay")
    relays: list[Relay] = []
    seen: dict[str, str] = {}
    for number, raw in enumerate(value.split(","), start=1):
        entry = raw.strip()
        if not entry:
            raise InvalidInput(f"NEWSLETTER_SMTP_URL: relay {number} is empty (a stray comma?)")
        relay = parse_relay(entry)
        if relay.name in seen:
            raise InvalidInput(
                f"NEWSLETTER_SMTP_URL: relay {redact_url(entry)!r} is listed twice "
                f"(same server and user as {seen[relay.name]!r})"
            )
        seen[relay.name] = redact_url(entry)
        relays.append(relay)
    return relays


@dataclass
class _Health:
    failures: int = 0
    down_until: float = 0.0


class RelayPool:
    """Picks a relay for each new connection: weighted at random among those up.

    Failover, as a sender uses it: a connection that raises ConnectionLost ->
    `mark_down(relay, reason)`, then `pick(exclude={relay})` for the next try; a
    connection that works -> `mark_up(relay)`. Thread-safe: one pool serves every
    connection thread of a process (see `pool_for`).
    """

    def __init__(
        self,
        relays: Sequence[Relay],
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not relays:
            raise InvalidInput("no SMTP relay to send through")
        self.relays: tuple[Relay, ...] = tuple(relays)
        self._clock = clock
        self._rng = rng or random.Random()
        self._health = {relay.name: _Health() for relay in self.relays}
        self._lock = threading.Lock()

    def _state(self, relay: Relay) -> _Health:
        try:
            return self._health[relay.name]
        except KeyError:
            raise ValueError(f"SMTP relay {relay.name} is not in this pool") from None

    def pick(self, exclude: Collection[Relay] = frozenset()) -> Relay:
        """A relay that is up and not excluded, chosen by weight. Failing that, one that
        is up though excluded; and when every relay is down, the one back soonest, so
        the caller's reconnect pause (not a busy loop here) paces the next attempt."""
        with self._lock:
            now = self._clock()
            up = [r for r in self.relays if self._health[r.name].down_until <= now]
            choice = [r for r in up if r not in exclude] or up
            if choice:
                return self._rng.choices(choice, weights=[r.weight for r in choice])[0]
            return min(self.relays, key=lambda r: (self._health[r.name].down_until, r in exclude))

    def mark_down(self, relay: Relay, reason: str = "") -> float:
        """Leave `relay` out for a cooldown; returns its length in seconds.

        A failure seen while the relay is already out (another thread's connection
        that was under way) is the same outage and does not lengthen it.
        """
        with self._lock:
            state = self._state(relay)
            now = self._clock()
            if state.down_until > now:
                return state.down_until - now
            cooldown = min(MAX_COOLDOWN, FIRST_COOLDOWN * 2.0**state.failures)
            state.failures += 1
            state.down_until = now + cooldown
        log.warning(
            "SMTP relay %s is down, left out for %.0f s (failure %d in a row)%s",
            relay.name,
            cooldown,
            state.failures,
            f": {redact(reason)}" if reason else "",
        )
        return cooldown

    def mark_up(self, relay: Relay) -> None:
        """A connection through `relay` worked: forget its failures."""
        with self._lock:
            state = self._state(relay)
            recovered = state.failures > 0
            state.failures = 0
            state.down_until = 0.0
        if recovered:
            log.info("SMTP relay %s is back", relay.name)

    def cooldown_left(self, relay: Relay) -> float:
        """Seconds until `relay` is tried again; 0 when it is up."""
        with self._lock:
            return max(0.0, self._state(relay).down_until - self._clock())


@lru_cache(maxsize=8)
def pool_for(smtp_url: str) -> RelayPool:
    """The process's pool for this NEWSLETTER_SMTP_URL: every batch and connection
    of a worker shares it, so a relay found down stays out for the next batch too."""
    return RelayPool(parse_relays(smtp_url))


class RelayTransport(SmtpTransport):
    """An SMTP session on one of the pool's relays, chosen by weight when it opens; a
    relay that refuses the connection is left out for its cooldown and the next one
    is tried, so one dead relay never stops a send while another is up."""

    def __init__(self, pool: RelayPool, data_timeout: float) -> None:
        super().__init__(pool.relays[0].config)
        self._pool = pool
        self._data_timeout = data_timeout
        self.relay: Relay | None = None

    def open(self) -> None:
        tried: set[Relay] = set()
        errors: list[str] = []
        while True:
            relay = self._pool.pick(exclude=tried)
            if relay in tried:
                raise ConnectionLost("; ".join(errors))
            self.config = replace(relay.config, data_timeout=self._data_timeout)
            try:
                super().open()
            except ConnectionLost as exc:
                self._pool.mark_down(relay, str(exc))
                tried.add(relay)
                errors.append(str(exc))
                continue
            self._pool.mark_up(relay)
            self.relay = relay
            return
