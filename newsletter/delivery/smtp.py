"""SMTP transport: one connection per batch, and every reply sorted into its outcome.

Every message, whatever built it (a digest copy, a confirmation or welcome, a console
test copy), is sealed in `SmtpTransport.send` on its way to the wire (`Sealer`): its
envelope sender set to the bounce address and its DKIM signatures added. The
connections `sending.smtp_transport_factory` makes, the only ones mail is sent over,
all carry the sealer.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, unquote

import dkim as dkimpy  # type: ignore[import-untyped]

from newsletter.config import Settings
from newsletter.delivery import verp
from newsletter.delivery.dkim import Signer, signer_for
from newsletter.delivery.mime import (
    OutgoingMessage,
    Unsendable,
    dot_lines_doubled,
    wire_address,
)
from newsletter.errors import InvalidInput
from newsletter.redaction import redact_url
from newsletter.urls import split_url


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    implicit_tls: bool = False
    starttls: bool = False
    # Seconds for connecting and for each command's reply...
    timeout: float = 30.0
    # ... but the reply to the end of DATA gets RFC 5321's 10 minutes (section
    # 4.5.3.2): a server may take long to accept, and a client that gives up early
    # and sends again makes a duplicate.
    data_timeout: float = 600.0

    @classmethod
    def from_url(cls, url: str) -> SmtpConfig:
        """`smtp://user:pass@host:port`, `smtps://...`, `smtp://...?starttls=1&timeout=10`."""
        try:
            parts = split_url(url, "SMTP URL")
        except InvalidInput:
            parts = None
        if parts is None or parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
            shown = redact_url(url)
            raise InvalidInput(f"SMTP URL must look like smtp://user:pass@host:port, got {shown!r}")
        query = parse_qs(parts.query)
        flag = query.get("starttls", ["0"])[0].lower() in {"1", "true", "yes"}
        try:
            port = parts.port or (465 if parts.scheme == "smtps" else 25)
            timeout = float(query.get("timeout", ["30"])[0])
        except ValueError as exc:
            raise InvalidInput(f"bad SMTP URL {redact_url(url)!r}: {exc}") from None
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=parts.scheme == "smtps",
            starttls=flag,
            timeout=timeout,
        )


@dataclass(frozen=True)
class Sealer:
    """The last step of every message before the wire: the envelope sender that brings
    its bounces back (`verp`: the delivery's token, or the bare bounce address for
    mail that is no delivery; the From address while no bounce address is set) and
    the DKIM signatures (none while DKIM is off)."""

    settings: Settings
    signer: Signer | None

    def seal(self, message: OutgoingMessage) -> OutgoingMessage:
        sender, utf8 = message.sender, False
        bounce = verp.envelope_sender(self.settings, message.delivery_id)
        if bounce is not None:
            sender, utf8 = wire_address(bounce)
        data, wire = message.data, message.wire
        if self.signer is not None:
            try:
                data = self.signer.sign(data)
            except dkimpy.DKIMException as exc:
                raise Unsendable(f"cannot sign the message: {exc}") from None
            # The signature goes before the message, which stays as it was: its
            # stuffed form takes the same header lines (none starts with a dot).
            added = len(data) - len(message.data)
            if wire is not None:
                wire = data[:added] + wire if data.endswith(message.data) else None
        return replace(
            message, sender=sender, data=data, wire=wire, smtputf8=message.smtputf8 or utf8
        )


def sealer_for(settings: Settings) -> Sealer:
    """The sealer the settings ask for; raises DkimKeyError for a DKIM key that cannot be
    used, so a send stops before it starts rather than fail every message."""
    return Sealer(settings, signer_for(settings))


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
    """The server went away, never answered, or said 421: reconnect before going on."""


class OutcomeUnknown(Exception):
    """The whole message went out but no reply to its end came in time: it may have been
    delivered, so it must not be sent again blindly. The connection is gone."""


def dot_stuffed(payload: bytes) -> bytes:
    """The message as DATA carries it: a leading dot doubled on every line (RFC 5321
    section 4.5.2), ending in CRLF, then the lone dot that ends it."""
    return b"".join(_data_parts(payload))


# A line that starts with a dot. The regular expression finds one in a 24 KB message
# in a third of the time `b"\n." in payload` takes (8 against 21 microseconds).
_DOT_LINE = re.compile(rb"\n\.")


def _data_parts(payload: bytes, wire: bytes | None = None) -> tuple[bytes, bytes]:
    """`dot_stuffed` as the message and its ending, so the message, 24 KB or more,
    is written as it is rather than copied; a message whose stuffed form its builder
    made (`wire`) is not even scanned."""
    if wire is not None:
        payload = wire
    elif payload.startswith(b".") or _DOT_LINE.search(payload):
        payload = dot_lines_doubled(payload)
    return payload, b".\r\n" if payload.endswith(b"\r\n") else b"\r\n.\r\n"


def _write(smtp: smtplib.SMTP, parts: tuple[bytes, ...]) -> None:
    """Every part in one write where the socket allows it (plain TCP: `sendmsg`
    gathers them), without joining them into one copy first."""
    sock = smtp.sock
    if sock is None:
        raise smtplib.SMTPServerDisconnected("please run connect() first")
    try:
        if isinstance(sock, ssl.SSLSocket):
            sock.sendall(b"".join(parts))
            return
        sent = sock.sendmsg(parts)
        if sent < sum(len(part) for part in parts):
            sock.sendall(b"".join(parts)[sent:])
    except OSError as exc:
        smtp.close()
        raise smtplib.SMTPServerDisconnected(f"Server not connected: {exc}") from exc


class _Replies:
    """SMTP replies read straight off the socket, each read parsed for every reply it
    holds: the three answers to a pipelined MAIL, RCPT and DATA come in one packet.

    smtplib's own `getreply` reads line by line through a file object, a read and
    several Python frames per line. Raises what `getreply` raises, so callers sort
    the outcomes the same way; only used between commands smtplib does not send, so
    its own buffer never holds a reply meant for this one.
    """

    # Longest reply line accepted (smtplib's limit too).
    MAX_LINE = 8192

    def __init__(self) -> None:
        self._buffer = b""

    def read(self, smtp: smtplib.SMTP) -> tuple[int, bytes]:
        lines: list[bytes] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.MAX_LINE:
                    smtp.close()
                    raise smtplib.SMTPResponseException(500, "Line too long.")
                self._buffer += self._receive(smtp)
                continue
            line, self._buffer = self._buffer[: end + 1], self._buffer[end + 1 :]
            text = line[4:].strip(b" \t\r\n")
            lines.append(text)
            if line[3:4] != b"-":
                try:
                    code = int(line[:3])
                except ValueError:
                    code = -1
                return code, b"\n".join(lines)

    def clear(self) -> None:
        self._buffer = b""

    @staticmethod
    def _receive(smtp: smtplib.SMTP) -> bytes:
        sock = smtp.sock
        if sock is None:
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        try:
            data = sock.recv(65536)
        except OSError as exc:
            smtp.close()
            raise smtplib.SMTPServerDisconnected(f"Connection unexpectedly closed: {exc}") from exc
        if not data:
            smtp.close()
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return data


def _await_end_of_data(
    smtp: smtplib.SMTP, wait: float, replies: _Replies | None = None
) -> tuple[int, bytes]:
    """The reply to the end of DATA, waiting `wait` seconds (not the command timeout)."""
    if smtp.sock is not None:
        smtp.sock.settimeout(wait)
    try:
        return smtp.getreply() if replies is None else replies.read(smtp)
    except smtplib.SMTPServerDisconnected as exc:
        # smtplib turns a read timeout into "disconnected". Only a timeout leaves the
        # message maybe delivered (the server may still be working on it); a server
        # that closed the connection before its reply took no responsibility for the
        # message (RFC 5321 section 6.1), so that one is sent again.
        if isinstance(exc.__context__, TimeoutError):
            raise OutcomeUnknown(f"no reply to the end of DATA within {wait:g} s") from None
        raise
    finally:
        if smtp.sock is not None:
            smtp.sock.settimeout(smtp.timeout)


def _end_of_data(smtp: smtplib.SMTP, msg: bytes | str, wait: float) -> tuple[int, bytes]:
    """smtplib's `data()`, waiting `wait` seconds (not the command timeout) for the last reply."""
    smtp.putcmd("data")
    code, reply = smtp.getreply()
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    payload = msg.encode("ascii") if isinstance(msg, str) else bytes(msg)
    _write(smtp, _data_parts(payload))
    return _await_end_of_data(smtp, wait)


class _SMTP(smtplib.SMTP):
    data_timeout = 600.0

    def data(self, msg: bytes | str) -> tuple[int, bytes]:  # type: ignore[override]
        return _end_of_data(self, msg, self.data_timeout)


class _SMTP_SSL(smtplib.SMTP_SSL):
    data_timeout = 600.0

    def data(self, msg: bytes | str) -> tuple[int, bytes]:  # type: ignore[override]
        return _end_of_data(self, msg, self.data_timeout)


def _reply(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


class SmtpTransport:
    """A context manager around one SMTP session; `send` raises one of the three outcomes."""

    def __init__(self, config: SmtpConfig, sealer: Sealer | None = None) -> None:
        self.config = config
        # None sends messages as they are built (a check of the connection alone).
        self.sealer = sealer
        self._smtp: _SMTP | _SMTP_SSL | None = None
        self._replies = _Replies()
        # The message whose MAIL, RCPT and DATA went out with the previous one's end,
        # sealed, and its MAIL options: the next `send` reads their replies.
        self._ahead: tuple[OutgoingMessage, OutgoingMessage, list[str]] | None = None

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
            smtp: _SMTP | _SMTP_SSL
            if c.implicit_tls:
                smtp = _SMTP_SSL(
                    c.host, c.port, timeout=c.timeout, context=ssl.create_default_context()
                )
            else:
                smtp = _SMTP(c.host, c.port, timeout=c.timeout)
                if c.starttls:
                    smtp.starttls(context=ssl.create_default_context())
            smtp.data_timeout = c.data_timeout
            if c.username:
                smtp.login(c.username, c.password or "")
            # The server's extensions (SMTPUTF8) are known before the first message.
            smtp.ehlo_or_helo_if_needed()
        except smtplib.SMTPAuthenticationError as exc:
            raise ConnectionLost(
                f"SMTP login refused: {exc.smtp_code} {_reply(exc.smtp_error)}"
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise ConnectionLost(f"cannot connect to {c.host}:{c.port}: {exc}") from exc
        self._smtp = smtp
        self._replies.clear()
        self._ahead = None

    @property
    def connected(self) -> bool:
        """False once the session is gone (a 421, a failed reset): reconnect to go on."""
        return self._smtp is not None and self._smtp.sock is not None

    def close(self) -> None:
        if self._smtp is not None:
            if self._ahead is not None:
                # The server waits for a message after DATA: QUIT would be read as
                # part of it. Closing without the end of data discards it.
                self._smtp.close()
            else:
                try:
                    self._smtp.quit()
                except (OSError, smtplib.SMTPException):
                    self._smtp.close()
            self._smtp = None
        self._ahead = None

    def send(self, message: OutgoingMessage, following: OutgoingMessage | None = None) -> None:
        """Send one message; raises PermanentFailure, TemporaryFailure, ConnectionLost,
        OutcomeUnknown or Unsendable (this message can never go through this server).

        `following`, the message the caller sends next on this session, has its
        envelope written right after this message (RFC 2920 lets MAIL, RCPT and DATA
        follow the end of data in one write): one round trip per message instead of
        two. The next call must then be for `following`."""
        if self._smtp is None:
            raise ConnectionLost("not connected")
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] is not message:
            # Its DATA was sent and cannot be taken back: only the session can go.
            self._smtp.close()
            self._smtp = None
            raise ConnectionLost("a pipelined transaction was left for another message")
        sealed, options = ahead[1:] if ahead is not None else self._sealed(message)
        if self._smtp.has_extn("pipelining"):
            self._send_pipelined(sealed, options, ahead is not None, following)
            return
        try:
            refused = self._smtp.sendmail(
                sealed.sender, [sealed.recipient], sealed.data, mail_options=options
            )
        except OutcomeUnknown:
            self._smtp = None
            raise
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

    def _sealed(self, message: OutgoingMessage) -> tuple[OutgoingMessage, list[str]]:
        """The message as it goes out (sealed), and its MAIL options."""
        assert self._smtp is not None
        if self.sealer is not None:
            message = self.sealer.seal(message)
        options: list[str] = []
        if message.smtputf8:
            if not self._smtp.has_extn("smtputf8"):
                raise Unsendable(
                    f"{message.recipient} has a non-ASCII local part and the SMTP server "
                    "does not offer SMTPUTF8"
                )
            options.append("SMTPUTF8")
        return message, options

    def _send_pipelined(
        self,
        message: OutgoingMessage,
        options: list[str],
        envelope_sent: bool,
        following: OutgoingMessage | None,
    ) -> None:
        """MAIL, RCPT and DATA in one write, then the message with the next message's
        MAIL, RCPT and DATA (RFC 2920): one round trip per message. Replies are sorted
        into the same outcomes as the plain path."""
        smtp = self._smtp
        assert smtp is not None
        replies = self._replies
        try:
            if not envelope_sent:
                _write(smtp, (_envelope(message, options),))
            mail, rcpt, data = (replies.read(smtp) for _ in range(3))
            refusal = next((r for r in (mail, rcpt) if r[0] not in (250, 251)), None)
            if data[0] == 354 and refusal is not None:
                # DATA accepted with nobody to deliver to: end it empty (RFC 2920
                # section 3.1) and report the refusal that came first.
                _write(smtp, (b".\r\n",))
                replies.read(smtp)
            elif data[0] == 354:
                parts: tuple[bytes, ...] = _data_parts(message.data, message.wire)
                if following is not None:
                    try:
                        sealed, more = self._sealed(following)
                    except Unsendable:
                        pass  # refused when it is sent, on its own
                    else:
                        parts += (_envelope(sealed, more),)
                        self._ahead = (following, sealed, more)
                _write(smtp, parts)
                refusal = _await_end_of_data(smtp, smtp.data_timeout, replies)
                if refusal[0] == 250:
                    return
            else:
                refusal = refusal or data
        except OutcomeUnknown:
            self._smtp = None
            self._ahead = None
            raise
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._smtp = None
            self._ahead = None
            raise ConnectionLost(str(exc) or type(exc).__name__) from None
        code, text = refusal[0], _reply(refusal[1])
        if code == 421 or code == -1:
            smtp.close()
            self._smtp = None
            self._ahead = None
            raise ConnectionLost(f"{code} {text}")
        if self._ahead is None:
            # A refused transaction leaves the session in an unknown state; reset it.
            # (Refused at its end, it is over: the next one may already be on its way.)
            self._reset()
        raise _classify(code, text)

    def _reset(self) -> None:
        assert self._smtp is not None
        try:
            self._smtp.rset()
        except (OSError, smtplib.SMTPException):
            self._smtp = None


def _envelope(message: OutgoingMessage, options: list[str]) -> bytes:
    extra = "".join(f" {option}" for option in options)
    return (
        f"MAIL FROM:<{message.sender}>{extra}\r\nRCPT TO:<{message.recipient}>\r\nDATA\r\n"
    ).encode("utf-8" if message.smtputf8 else "ascii")


def _classify(code: int, reply: str) -> PermanentFailure | TemporaryFailure | ConnectionLost:
    if 500 <= code < 600:
        return PermanentFailure(code, reply)
    if code == 421:
        # 421: the server is closing the channel; nothing more goes over it.
        return ConnectionLost(f"{code} {reply}")
    return TemporaryFailure(code, reply)
