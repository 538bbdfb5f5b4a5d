"""SMTP transport: one connection per batch, and every reply sorted into its outcome."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit

from newsletter.errors import InvalidInput
from newsletter.mail import OutgoingMessage


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    implicit_tls: bool = False
    starttls: bool = False
    timeout: float = 30.0

    @classmethod
    def from_url(cls, url: str) -> SmtpConfig:
        """`smtp://user:pass@host:port`, `smtps://...`, `smtp://...?starttls=1&timeout=10`."""
        parts = urlsplit(url)
        if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
            raise InvalidInput(f"SMTP URL must look like smtp://user:pass@host:port, got {url!r}")
        query = parse_qs(parts.query)
        flag = query.get("starttls", ["0"])[0].lower() in {"1", "true", "yes"}
        try:
            port = parts.port or (465 if parts.scheme == "smtps" else 25)
            timeout = float(query.get("timeout", ["30"])[0])
        except ValueError as exc:
            raise InvalidInput(f"bad SMTP URL {url!r}: {exc}") from None
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=parts.scheme == "smtps",
            starttls=flag,
            timeout=timeout,
        )


class PermanentFailure(Exception):
    """A 5xx reply for this recipient: do not try again."""

    def __init__(self, code: int, reply: str) -> None:
        super().__init__(f"{code} {reply}")
        self.code = code


class TemporaryFailure(Exception):
    """A 4xx reply for this recipient: try again later; the connection is still usable."""

    def __init__(self, code: int, reply: str) -> None:
        super().__init__(f"{code} {reply}")
        self.code = code


class ConnectionLost(Exception):
    """The server went away or never answered: this and the rest of the batch wait."""


def _reply(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


class SmtpTransport:
    """A context manager around one SMTP session; `send` raises one of the three outcomes."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._smtp: smtplib.SMTP | None = None

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        c = self.config
        try:
            if c.implicit_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    c.host, c.port, timeout=c.timeout, context=ssl.create_default_context()
                )
            else:
                smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
                if c.starttls:
                    smtp.starttls(context=ssl.create_default_context())
            if c.username:
                smtp.login(c.username, c.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise ConnectionLost(
                f"SMTP login refused: {exc.smtp_code} {_reply(exc.smtp_error)}"
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise ConnectionLost(f"cannot connect to {c.host}:{c.port}: {exc}") from exc
        self._smtp = smtp

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                self._smtp.close()
            self._smtp = None

    def send(self, message: OutgoingMessage) -> None:
        if self._smtp is None:
            raise ConnectionLost("not connected")
        try:
            refused = self._smtp.sendmail(message.sender, [message.recipient], message.data)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            raise _classify(code, _reply(reply)) from None
        except smtplib.SMTPResponseException as exc:
            if isinstance(exc, smtplib.SMTPServerDisconnected):
                raise ConnectionLost(str(exc)) from None
            # A failed MAIL/DATA leaves the session in an unknown state; reset it.
            self._reset()
            raise _classify(exc.smtp_code, _reply(exc.smtp_error)) from None
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._smtp = None
            raise ConnectionLost(str(exc) or type(exc).__name__) from None
        if refused:
            code, reply = next(iter(refused.values()))
            raise _classify(code, _reply(reply))

    def _reset(self) -> None:
        assert self._smtp is not None
        try:
            self._smtp.rset()
        except (OSError, smtplib.SMTPException):
            self._smtp = None


def _classify(code: int, reply: str) -> PermanentFailure | TemporaryFailure | ConnectionLost:
    if 500 <= code < 600:
        return PermanentFailure(code, reply)
    if code == 421:
        # 421: the server is closing the channel; nothing more goes over it.
        return ConnectionLost(f"{code} {reply}")
    return TemporaryFailure(code, reply)
