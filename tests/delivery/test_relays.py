"""Several SMTP relays: parsing NEWSLETTER_SMTP_URL, weighted choice, cooldowns, failover."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from newsletter.delivery.mime import OutgoingMessage
from newsletter.delivery.relays import (
    MAX_COOLDOWN,
    Relay,
    RelayPool,
    parse_relays,
    pool_for,
)
from newsletter.delivery.smtp import ConnectionLost, SmtpConfig, SmtpTransport
from newsletter.errors import InvalidInput
from newsletter.outbox import OutboxHandler, OutboxServer, free_port


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- parsing -----------------------------------------------------------------------


def test_one_url_is_one_relay_as_before() -> None:
    url = "smtp://user:pa%40ss@Mail.Example.org:2525?starttls=1&timeout=7"
    [relay] = parse_relays(url)
    assert relay.config == SmtpConfig.from_url(url)
    assert relay.name == "user@mail.example.org:2525"
    assert relay.weight == 1.0
    assert relay.rate is None


def test_several_relays_with_weights_and_rates() -> None:
    relays = parse_relays(
        " smtp://a.example:587?starttls=1&weight=3&rate=50 ,"
        "smtps://u:p@b.example?rate=0.5, smtp://[::1]:2525?weight=0.25"
    )
    assert [(r.name, r.weight, r.rate) for r in relays] == [
        ("a.example:587", 3.0, 50.0),
        ("u@b.example:465", 1.0, 0.5),
        ("[::1]:2525", 0.25, None),
    ]
    assert relays[0].config.starttls
    assert relays[1].config.implicit_tls
    assert relays[1].config.password == "p"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "names no SMTP relay"),
        ("   ", "names no SMTP relay"),
        ("smtp://a.example,", "relay 2 is empty"),
        ("smtp://a.example,,smtp://b.example", "relay 2 is empty"),
        ("smtp://u:s3cret@a.example?weight=0", "weight= must be a positive number"),
        ("smtp://u:s3cret@a.example?weight=-2", "weight= must be a positive number"),
        ("smtp://u:s3cret@a.example?weight=heavy", "weight= must be a positive number"),
        ("smtp://u:s3cret@a.example?weight=inf", "weight= must be a positive number"),
        ("smtp://u:s3cret@a.example?weight=nan", "weight= must be a positive number"),
        ("smtp://u:s3cret@a.example?weight=", "weight= must be a positive number"),
        ("smtp://u:s3cret@a.example?weight=1&weight=2", "weight= given 2 times"),
        ("smtp://u:s3cret@a.example?rate=0", "rate= must be a positive number"),
        ("smtp://u:s3cret@a.example?rate=fast", "rate= must be a positive number"),
        ("smtp://u:s3cret@a.example?wieght=2", "unknown option 'wieght'"),
        ("http://u:s3cret@a.example", "SMTP URL must look like"),
        ("smtp://u:s3cret@", "SMTP URL must look like"),
        ("smtp://u:s3cret@a.example:port", "SMTP URL must look like"),
        ("smtp://u:s3cret@a.example:99999", "SMTP URL must look like"),
        ("smtp://u:s3cret@a.example,smtp://u:other@A.example:25", "listed twice"),
        ("smtp://a.example:25,smtp://b.example,smtp://a.example", "listed twice"),
    ],
)
def test_bad_relay_lists_are_refused_clearly_and_never_show_a_password(
    value: str, expected: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_relays(value)
    message = str(caught.value)
    assert expected in message
    assert "s3cret" not in message
    assert "other" not in message
    if "u:" in value and "empty" not in expected:
        assert "[redacted]" in message or "u@" in message


def test_the_bad_entry_is_named() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_relays("smtp://good.example,smtp://bad.example?rate=-1")
    assert "bad.example" in str(caught.value)
    assert "good.example" not in str(caught.value)


def test_same_host_with_another_user_is_another_relay() -> None:
    relays = parse_relays("smtp://one:x@relay.example,smtp://two:y@relay.example")
    assert [r.name for r in relays] == ["one@relay.example:25", "two@relay.example:25"]


# --- choosing ----------------------------------------------------------------------


def two_relays(weights: tuple[float, float] = (1.0, 1.0)) -> list[Relay]:
    return parse_relays(
        f"smtp://a.example?weight={weights[0]:g},smtp://b.example?weight={weights[1]:g}"
    )


def test_pick_follows_the_weights() -> None:
    light, heavy = two_relays((1, 3))
    pool = RelayPool([light, heavy], rng=random.Random(1234))
    counts = Counter(pool.pick().name for _ in range(8000))
    share = counts[heavy.name] / 8000
    assert 0.72 < share < 0.78, counts


def test_pick_leaves_out_the_excluded_while_another_is_up() -> None:
    a, b = two_relays()
    pool = RelayPool([a, b], rng=random.Random(5))
    assert {pool.pick(exclude={a}) for _ in range(200)} == {b}
    # Every relay excluded: one that is up beats none at all.
    assert pool.pick(exclude={a, b}) in {a, b}


def test_cooldown_starts_at_5s_doubles_and_stops_at_5_minutes() -> None:
    clock = FakeClock()
    a, b = two_relays()
    pool = RelayPool([a, b], clock=clock, rng=random.Random(3))
    lengths = []
    for _ in range(9):
        lengths.append(pool.mark_down(a, "refused"))
        clock.now += 4.9
        assert {pool.pick() for _ in range(50)} == {b}, "a down relay was picked"
        clock.now += lengths[-1] - 4.9  # the cooldown is over: a is tried again
        assert pool.cooldown_left(a) == 0
        assert a in {pool.pick() for _ in range(50)}
    assert lengths == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert MAX_COOLDOWN == 300
    pool.mark_up(a)
    assert pool.mark_down(a, "refused again") == 5


def test_a_second_failure_within_the_cooldown_is_the_same_outage() -> None:
    clock = FakeClock()
    a, b = two_relays()
    pool = RelayPool([a, b], clock=clock)
    assert pool.mark_down(a) == 5
    clock.now += 1
    assert pool.mark_down(a) == pytest.approx(4)  # not lengthened to 10
    clock.now += 4
    assert pool.mark_down(a) == 10


def test_when_every_relay_is_down_pick_gives_the_one_back_soonest() -> None:
    clock = FakeClock()
    a, b = two_relays()
    pool = RelayPool([a, b], clock=clock)
    pool.mark_down(a)
    clock.now += 5  # a is back; fail it again: 10 s
    pool.mark_down(a)
    pool.mark_down(b)  # 5 s, ends before a's 10 s
    assert pool.pick() == b
    assert pool.pick(exclude={b}) == b  # down everywhere: the soonest, excluded or not
    assert pool.cooldown_left(b) == 5


def test_unknown_relay_is_a_caller_error() -> None:
    a, b = two_relays()
    pool = RelayPool([a])
    with pytest.raises(ValueError, match="not in this pool"):
        pool.mark_down(b)


def test_an_empty_pool_is_refused() -> None:
    with pytest.raises(InvalidInput):
        RelayPool([])


def test_pool_for_is_one_pool_per_url_in_a_process() -> None:
    url = "smtp://a.example,smtp://b.example?weight=2"
    assert pool_for(url) is pool_for(url)
    assert [r.name for r in pool_for(url).relays] == ["a.example:25", "b.example:25"]


def test_many_threads_share_one_pool() -> None:
    clock = FakeClock()
    relays = parse_relays(",".join(f"smtp://r{n}.example" for n in range(4)))
    pool = RelayPool(relays, clock=clock)
    errors: list[BaseException] = []

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(2000):
                relay = pool.pick(exclude={rng.choice(relays)})
                if rng.random() < 0.3:
                    pool.mark_down(relay, "refused")
                else:
                    pool.mark_up(relay)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for relay in relays:
        assert 0 <= pool.cooldown_left(relay) <= MAX_COOLDOWN


# --- failover through real connections --------------------------------------------


def connect_with_failover(pool: RelayPool, tried: list[Relay]) -> tuple[Relay, SmtpTransport]:
    """The loop a sender runs for each new connection (at most one try per relay)."""
    relay = pool.pick()
    for _ in range(len(pool.relays)):
        tried.append(relay)
        transport = SmtpTransport(relay.config)
        try:
            transport.open()
        except ConnectionLost as exc:
            pool.mark_down(relay, str(exc))
            relay = pool.pick(exclude={relay})
            continue
        pool.mark_up(relay)
        return relay, transport
    raise ConnectionLost("every relay refused")


def test_failover_from_a_refusing_relay_to_a_live_one() -> None:
    handler = OutboxHandler()
    clock = FakeClock()
    with OutboxServer(handler) as server:
        dead_port = free_port()  # nothing listens here: connections are refused
        dead, live = parse_relays(
            f"smtp://127.0.0.1:{dead_port}?weight=1000,smtp://127.0.0.1:{server.port}"
        )
        pool = RelayPool([dead, live], clock=clock, rng=random.Random(42))

        tried: list[Relay] = []
        relay, transport = connect_with_failover(pool, tried)
        with transport:
            transport.send(
                OutgoingMessage(
                    sender="digest@news.example.org",
                    recipient="reader@example.com",
                    data=b"Subject: hello\r\n\r\nbody\r\n",
                    message_id="<1@news.example.org>",
                )
            )
        assert tried == [dead, live]
        assert relay == live
        assert [m.recipients for m in handler.messages] == [["reader@example.com"]]

        # During its cooldown the dead relay is never offered, for all its weight.
        clock.now += 4.9
        for _ in range(20):
            tried = []
            relay, transport = connect_with_failover(pool, tried)
            transport.close()
            assert tried == [live]

        # Its cooldown over, it is tried again, refuses, and is out for twice as long.
        clock.now += 0.1
        tried = []
        relay, transport = connect_with_failover(pool, tried)
        transport.close()
        assert tried == [dead, live]
        assert pool.cooldown_left(dead) == 10
