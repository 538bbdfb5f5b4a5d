"""A scriptable SMTP server: refusals in patterns, dropped connections, late replies.

The handler keeps what it accepted (as `OutboxHandler` does) and counts every
transaction each recipient saw, so a test can hold the ledger's `attempts` against
what was really tried. The server can be stopped and started again on its port.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, syntax

from newsletter.outbox import Received, free_port
from tests.conftest import ScriptedHandler

DROP = "drop"


@dataclass
class Pattern:
    """Every `every`-th transaction seen at one stage (counted over the server's life)."""

    every: int
    reply: str
    # While False the pattern is off: the fault is over.
    active: bool = True
    seen: int = 0
    hits: int = 0

    def next_reply(self) -> str | None:
        self.seen += 1
        if self.active and self.seen % self.every == 0:
            self.hits += 1
            return self.reply
        return None


@dataclass
class Script:
    """What the server does to whom; a test edits it before or during a run."""

    # Per stage: "rcpt" and "data" (the end of DATA) answer with the pattern's reply;
    # "drop" patterns (reply DROP) close the connection after a message's first line.
    patterns: dict[str, list[Pattern]] = field(default_factory=dict)
    # Reply at the end of DATA for one recipient, every time (e.g. "554 5.7.1 spam").
    data_replies: dict[str, str] = field(default_factory=dict)
    # Seconds the server takes before each DATA reply: paces a send so faults land mid-batch.
    pace: float = 0.0
    # Accepted at once but the 250 comes this late: every `late_every`-th message.
    late_every: int = 0
    late_by: float = 0.0


class FaultyHandler(ScriptedHandler):
    """`ScriptedHandler` (per-address RCPT replies) plus patterns over all traffic."""

    def __init__(self) -> None:
        super().__init__()
        self.script = Script()
        self.tries: Counter[str] = Counter()
        self.late = 0
        self.refused_data: Counter[str] = Counter()
        self._data_seen = 0
        self._guard = threading.Lock()

    def accepted(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def _pattern_reply(self, stage: str) -> str | None:
        with self._guard:
            replies = [p.next_reply() for p in self.script.patterns.get(stage, [])]
        return next((r for r in replies if r), None)

    def faults(self) -> int:
        """How many refusals, drops and late replies the script has dealt out."""
        with self._guard:
            hits = sum(p.hits for patterns in self.script.patterns.values() for p in patterns)
        refused = sum(self.attempts.values()) + sum(self.refused_data.values())
        return hits + refused + self.late

    def stop_faults(self) -> None:
        """The fault is over: patterns off, no more late replies or refusals."""
        with self._guard:
            for patterns in self.script.patterns.values():
                for pattern in patterns:
                    pattern.active = False
            self.script.late_every = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        with self._guard:
            self.tries[address] += 1
        reply = self._pattern_reply("rcpt")
        if reply is not None:
            return reply
        status: str = await super().handle_RCPT(server, session, envelope, address, options)
        return status

    def drop_now(self) -> bool:
        """Asked by the server as DATA starts: should this one be cut off mid-message?"""
        return self._pattern_reply("drop") == DROP

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        script = self.script
        if script.pace:
            await asyncio.sleep(script.pace)
        recipient = envelope.rcpt_tos[0]
        refusal = script.data_replies.get(recipient)
        if refusal is not None:
            self.refused_data[recipient] += 1
            return refusal
        refusal = self._pattern_reply("data")
        if refusal is not None:
            return refusal
        with self._guard:
            self._data_seen += 1
            late = bool(script.late_every) and self._data_seen % script.late_every == 0
        status: str = await super().handle_DATA(server, session, envelope)
        if late:
            # The message is kept (queued, as a real server would), the reply is late.
            self.late += 1
            await asyncio.sleep(script.late_by)
        return status


class FaultySMTP(SMTP):
    """Closes the connection after a 421, and can cut a message off mid-DATA."""

    async def push(self, status: Any) -> None:
        await super().push(status)
        text = status.decode() if isinstance(status, bytes) else str(status)
        if text.startswith("421") and self.transport is not None:
            self.transport.close()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        handler = self.event_handler
        ready = self.envelope is not None and self.envelope.rcpt_tos and not arg
        if ready and isinstance(handler, FaultyHandler) and handler.drop_now():
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readuntil(b"\r\n")
            assert self.transport is not None
            self.transport.close()
            return
        await super().smtp_DATA(arg)


class _Controller(Controller):  # type: ignore[misc]
    def factory(self) -> SMTP:
        return FaultySMTP(self.handler, **self.SMTP_kwargs)


class FaultyServer:
    """The SMTP server on a fixed port; `stop()` and `start()` for an outage."""

    def __init__(self, handler: FaultyHandler, timeout: float) -> None:
        self.handler = handler
        self.port = free_port()
        # The client's command timeout: how long it waits for any reply.
        self.timeout = timeout
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}?timeout={self.timeout:g}"

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        assert self._controller is None
        controller = _Controller(self.handler, hostname="127.0.0.1", port=self.port)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
