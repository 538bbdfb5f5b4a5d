"""A real SMTP server (aiosmtpd) on a free loopback port that keeps what it receives.

`newsletter demo` uses it so a first run needs no mail server: every message lands
in `./outbox/` as an `.eml` file plus an `.html` copy to open in a browser.
"""

from __future__ import annotations

import email
import email.policy
import re
import socket
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class Received:
    sender: str
    recipients: list[str]
    data: bytes

    def parsed(self) -> EmailMessage:
        message = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message


class OutboxHandler:
    """Keeps every message in memory and, given a folder, on disk."""

    pipelining = True

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.messages: list[Received] = []
        self._lock = threading.Lock()

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        """Offer PIPELINING, as Postfix and every large relay do (aiosmtpd reads
        pipelined commands line by line but does not say so); `pipelining = False`
        gives a server without it."""
        session.host_name = hostname
        if self.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        received = Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        with self._lock:
            self.messages.append(received)
            number = len(self.messages)
        if self.directory is not None:
            self._write(number, received)
        return "250 Message accepted for delivery"

    def _write(self, number: int, received: Received) -> None:
        assert self.directory is not None
        stem = f"{number:04d}-" + re.sub(r"[^A-Za-z0-9@._-]+", "_", received.recipients[0])
        (self.directory / f"{stem}.eml").write_bytes(received.data)
        html = received.parsed().get_body(("html",))
        if html is not None:
            (self.directory / f"{stem}.html").write_text(str(html.get_content()), encoding="utf-8")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class OutboxServer:
    """Start and stop the SMTP server; `url` is what NEWSLETTER_SMTP_URL should say."""

    def __init__(self, handler: Any, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.handler = handler
        self.host = host
        self.port = port or free_port(host)
        self._controller = Controller(handler, hostname=host, port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def __enter__(self) -> OutboxServer:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()
