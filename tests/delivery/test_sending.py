"""The send path's parts that the other send tests take for granted: several relays with
failover, the rate limit through whole send tasks in two processes, and servers with
and without PIPELINING."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select

from newsletter.db import session_scope
from newsletter.delivery import planning
from newsletter.delivery.ratelimit import default_burst
from newsletter.delivery.relays import pool_for
from newsletter.delivery.smtp import SmtpTransport
from newsletter.models import Delivery, DeliveryStatus
from newsletter.outbox import OutboxHandler, OutboxServer, free_port
from subscribers.models import Subscriber
from tests.conftest import REDIS_URL, ScriptedHandler, apply_env
from tests.delivery.test_ratelimit import JITTER, REPO_ROOT, ArrivalHandler, busiest_second
from tests.factories import make_post, make_subscriber

HOUR = dt.timedelta(hours=1)


def statuses() -> Counter[DeliveryStatus]:
    with session_scope() as session:
        return Counter(session.scalars(select(Delivery.status)))


@pytest.mark.usefixtures("app_env")
def test_a_relay_that_refuses_connections_is_passed_over(
    monkeypatch: pytest.MonkeyPatch, t0: dt.datetime
) -> None:
    """The dead relay is first in line (weight 1000) and refuses every connection; all
    mail goes through the live one, and the dead one is left out for its cooldown."""
    live = OutboxHandler()
    dead = f"smtp://127.0.0.1:{free_port()}"
    with OutboxServer(live) as server:
        url = f"{dead}?weight=1000,{server.url}"
        apply_env(monkeypatch, NEWSLETTER_SMTP_URL=url, NEWSLETTER_SMTP_CONNECTIONS="3")
        emails = [f"r{n}@example.org" for n in range(9)]
        for address in emails:
            make_subscriber(address, "politics", now=t0)
        make_post("politics", now=t0 + HOUR)
    assert Counter(r for m in live.messages for r in m.recipients) == dict.fromkeys(emails, 1)
    assert statuses() == {DeliveryStatus.SENT: 9}
    pool = pool_for(url)
    dead_relay = next(r for r in pool.relays if r.config.port != server.port)
    assert pool.cooldown_left(dead_relay) > 0


@pytest.mark.usefixtures("app_env")
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
def test_refusals_sort_the_same_with_and_without_pipelining(
    monkeypatch: pytest.MonkeyPatch, t0: dt.datetime, pipelining: bool
) -> None:
    handler = ScriptedHandler()
    handler.pipelining = pipelining
    handler.replies["gone@example.org"] = ["550 5.1.1 no such user"]
    handler.replies["busy@example.org"] = ["451 4.3.0 try later"]
    with OutboxServer(handler) as server:
        apply_env(monkeypatch, NEWSLETTER_SMTP_URL=server.url)
        for address in ("gone@example.org", "busy@example.org", "ok@example.org"):
            make_subscriber(address, "politics", now=t0)
        make_post("politics", now=t0 + HOUR)
    assert [r for m in handler.messages for r in m.recipients] == ["ok@example.org"]
    with session_scope() as session:
        rows = dict(
            session.execute(
                select(Delivery.message_id, Delivery.status).order_by(Delivery.id)
            ).all()
        )
    assert sorted(rows.values()) == sorted(
        [DeliveryStatus.FAILED, DeliveryStatus.QUEUED, DeliveryStatus.SENT]
    )


class EndOfDataHandler(ScriptedHandler):
    """Answers the end of DATA for chosen recipients as scripted, and counts sessions."""

    def __init__(self, replies: dict[str, str]) -> None:
        super().__init__()
        self.data_replies = replies
        self.sessions = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions += 1
        return await super().handle_EHLO(server, session, envelope, hostname, responses)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self.data_replies.get(envelope.rcpt_tos[0])
        if reply is not None:
            return reply
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.usefixtures("app_env")
def test_each_envelope_follows_the_message_before_it(
    monkeypatch: pytest.MonkeyPatch, t0: dt.datetime
) -> None:
    """On one connection, each message's MAIL, RCPT and DATA go out with the previous
    message's end (one round trip per message). A message refused at its end, or a
    421 that closes the session with the next envelope already sent, is that message's
    outcome alone: the next one goes out once, on a new session if need be."""
    handler = EndOfDataHandler(
        {
            "bad@example.org": "554 5.7.1 message refused",
            "later@example.org": "451 4.3.0 try again later",
            "drop@example.org": "421 4.3.2 closing the connection",
        }
    )
    followed: list[bool] = []
    real_send = SmtpTransport.send

    def send(self: SmtpTransport, message: Any, following: Any = None) -> None:
        followed.append(following is not None)
        real_send(self, message, following)

    monkeypatch.setattr(SmtpTransport, "send", send)
    names = ["a0", "bad", "a1", "later", "a2", "drop", "a3", "a4", "a5"]
    with OutboxServer(handler) as server:
        apply_env(
            monkeypatch,
            NEWSLETTER_SMTP_URL=server.url,
            NEWSLETTER_SMTP_CONNECTIONS="1",
            NEWSLETTER_SMTP_RECONNECT_PAUSE="0",
        )
        for name in names:
            make_subscriber(f"{name}@example.org", "politics", now=t0)
        make_post("politics", now=t0 + HOUR)
    got = Counter(r for m in handler.messages for r in m.recipients)
    assert got == {f"{n}@example.org": 1 for n in names if n.startswith("a")}
    # Every message but the last carried the next one's envelope.
    assert followed == [True] * (len(names) - 1) + [False]
    assert handler.sessions == 2  # the 421 closed the first
    with session_scope() as session:
        rows = dict(
            session.execute(
                select(Subscriber.email, Delivery.status).join(
                    Subscriber, Subscriber.id == Delivery.subscriber_id
                )
            ).all()
        )
    assert rows.pop("bad@example.org") == DeliveryStatus.FAILED
    assert rows.pop("later@example.org") == DeliveryStatus.QUEUED
    assert rows.pop("drop@example.org") == DeliveryStatus.QUEUED
    assert set(rows.values()) == {DeliveryStatus.SENT}


SEND = """
import datetime as dt, json, sys
from newsletter.delivery import sending
report = sending.send_batch(json.loads(sys.argv[1]), dt.datetime.fromisoformat(sys.argv[2]))
print(json.dumps({"sent": report.sent, "failed": report.failed}), flush=True)
"""


@pytest.mark.xdist_group("broker")
@pytest.mark.usefixtures("app_env")
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_relay_rate_holds_across_two_worker_processes(
    monkeypatch: pytest.MonkeyPatch, t0: dt.datetime
) -> None:
    """Two processes each send a batch through the whole engine (claim, copies, four
    connections each) to one relay with `rate=8`: the server never sees more than the
    bucket gives in any second."""
    rate = 8.0
    for n in range(32):
        make_subscriber(f"r{n}@example.org", "politics", "daily", t0)
    make_post("politics", now=t0 + HOUR)
    day = t0 + 24 * HOUR
    ids = planning.plan_due(day).deliveries
    assert len(ids) == 32
    handler = ArrivalHandler()
    with OutboxServer(handler) as server:
        env = {
            **os.environ,
            "NEWSLETTER_SMTP_URL": f"{server.url}?rate={rate:g}",
            "NEWSLETTER_BROKER_URL": REDIS_URL,
        }
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", SEND, json.dumps(part), day.isoformat()],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for part in (ids[::2], ids[1::2])
        ]
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["sent"] for r in reports] == [16, 16]
    times = sorted(t for t, _ in handler.arrivals)
    assert len(times) == 32
    burst = default_burst(rate)
    assert busiest_second(times) <= rate + burst + JITTER
    assert times[-1] - times[0] >= (len(times) - burst) / rate - 0.5
    assert statuses() == {DeliveryStatus.SENT: 32}
