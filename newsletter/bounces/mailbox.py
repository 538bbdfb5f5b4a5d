"""The bounce mailbox poller: reads the mailbox the bounce address delivers to.

Every message in the folder goes through `intake.ingest_message`. Only the ones it
recognised (a bounce or a complaint) are then deleted, or moved to
NEWSLETTER_BOUNCE_PROCESSED_FOLDER; auto-replies, unrelated mail and any message
that failed stay where they were, unread flags untouched (they are fetched with
BODY.PEEK), so a person can still read them and a failed one is tried again on the
next poll. A report read twice counts once (the intake keys each event), so a poll
cut short between applying and deleting loses and doubles nothing.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import re
import socket
import ssl
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from imap_tools import BaseMailBox, MailBox, MailBoxUnencrypted
from imap_tools.errors import ImapToolsError

from newsletter.bounces import intake
from newsletter.config import get_settings
from newsletter.db import database_unavailable
from newsletter.errors import InvalidInput
from newsletter.redaction import redact, redact_url

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"imaps": 993, "imap": 143}
# A server that stops answering must not hold a worker for long.
TIMEOUT = 30.0
# A bounce or a complaint quotes one digest at most; anything far larger is not
# one, and is left where it is rather than read into memory.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
_SIZE = re.compile(rb"UID (\d+) RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+) UID (\d+)")


class MailboxError(Exception):
    """The mailbox could not be read at all (unreachable, login refused, no folder)."""


@dataclass(frozen=True)
class MailboxAddress:
    """Where the bounces are: parsed from imaps://user:password@host[:port]/FOLDER."""

    secure: bool
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    folder: str

    @classmethod
    def parse(cls, url: str) -> MailboxAddress:
        """The parts of a mailbox URL, or InvalidInput naming what is wrong (never the
        password). User and password are percent-decoded, so `@` is written `%40`."""
        shown = redact_url(url)
        parts = urlsplit(url.strip())
        if parts.scheme not in DEFAULT_PORTS:
            raise InvalidInput(
                f"the bounce mailbox URL {shown} must start with imaps:// or imap://"
            )
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise InvalidInput(f"the bounce mailbox URL {shown} has a bad port") from None
        if not parts.hostname or not parts.username or parts.password is None:
            raise InvalidInput(
                f"the bounce mailbox URL {shown} must name a user, a password and a host: "
                "imaps://user:password@host/INBOX"
            )
        return cls(
            secure=parts.scheme == "imaps",
            host=parts.hostname,
            port=port,
            user=unquote(parts.username),
            password=unquote(parts.password),
            folder=unquote(parts.path.lstrip("/")) or "INBOX",
        )

    def __str__(self) -> str:
        scheme = "imaps" if self.secure else "imap"
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{self.folder}"


@dataclass
class PollReport:
    """What one poll did, message by message."""

    mailbox: str
    read: int = 0
    # Recognised and applied, then deleted or moved.
    handled: int = 0
    # Auto-replies and unrelated mail, left in place.
    kept: int = 0
    # Messages whose intake raised: left in place for the next poll.
    failed: int = 0
    # Messages too large to be a report, never read: left in place.
    skipped: int = 0
    effects: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, int]]:
        return [
            ("read", self.read),
            ("handled", self.handled),
            ("kept", self.kept),
            ("failed", self.failed),
            ("skipped", self.skipped),
        ]


def connect(address: MailboxAddress, ssl_context: ssl.SSLContext | None = None) -> BaseMailBox:
    """A logged-in mailbox with the folder selected, or MailboxError (password hidden)."""
    try:
        mailbox: BaseMailBox
        if address.secure:
            context = ssl_context or ssl.create_default_context()
            mailbox = MailBox(address.host, address.port, timeout=TIMEOUT, ssl_context=context)
        else:
            mailbox = MailBoxUnencrypted(address.host, address.port, timeout=TIMEOUT)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise MailboxError(f"cannot reach the bounce mailbox {address}: {_describe(exc)}") from None
    try:
        mailbox.login(address.user, address.password, initial_folder=address.folder)
        # Servers name MOVE and UIDPLUS only once logged in; imaplib kept the list
        # from before, without them.
        status, data = mailbox.client.capability()
        if status == "OK" and data and isinstance(data[-1], bytes):
            mailbox.client.capabilities = tuple(data[-1].decode().upper().split())
    except (OSError, imaplib.IMAP4.error, ImapToolsError) as exc:
        _close(mailbox)
        raise MailboxError(f"cannot open the bounce mailbox {address}: {_describe(exc)}") from None
    return mailbox


def poll(
    url: str | None = None,
    *,
    processed_folder: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> PollReport:
    """Read every message in the bounce mailbox once; delete or move the recognised ones.

    `url` and `processed_folder` default to the settings. Raises InvalidInput for a
    bad URL and MailboxError when the mailbox cannot be read at all; a message that
    fails is counted and logged, and the others go on.
    """
    settings = get_settings()
    url = url if url is not None else settings.bounce_mailbox_url
    if not url:
        raise InvalidInput("no bounce mailbox: set NEWSLETTER_BOUNCE_MAILBOX_URL")
    if processed_folder is None:
        processed_folder = settings.bounce_processed_folder
    address = MailboxAddress.parse(url)
    report = PollReport(mailbox=str(address))
    mailbox = connect(address, ssl_context)
    try:
        recognised = _ingest_all(mailbox, report)
        _put_away(mailbox, recognised, processed_folder.strip())
    except (OSError, imaplib.IMAP4.error, ImapToolsError) as exc:
        detail = _describe(exc)
        raise MailboxError(f"reading the bounce mailbox {address} failed: {detail}") from None
    finally:
        _close(mailbox)
    return report


def _ingest_all(mailbox: BaseMailBox, report: PollReport) -> list[str]:
    """Every message through the intake; the UIDs of those it recognised."""
    recognised: list[str] = []
    for uid, size in _sizes(mailbox).items():
        if size > MAX_MESSAGE_BYTES:
            report.skipped += 1
            log.warning("bounce mailbox: message %s (%d bytes) is too large to read", uid, size)
            continue
        raw = _fetch_raw(mailbox, uid)
        if raw is None:  # expunged by someone else since the search
            continue
        report.read += 1
        try:
            result = intake.ingest_message(raw, source="imap")
        except Exception as exc:
            # One bad message leaves it for the next poll, and the others go on.
            report.failed += 1
            if database_unavailable(exc):
                # ... but with the database gone every other one would fail too.
                detail = _describe(exc)
                report.errors.append(f"the database is out of reach, the rest wait: {detail}")
                log.warning("bounce mailbox: the database is out of reach: %s", detail)
                break
            report.errors.append(f"message {uid}: {_describe(exc)}")
            log.exception("bounce mailbox: message %s could not be read in", uid)
            continue
        report.effects.extend(result.effects)
        if result.recognised:
            report.handled += 1
            recognised.append(uid)
        else:
            report.kept += 1
    return recognised


def _sizes(mailbox: BaseMailBox) -> dict[str, int]:
    """Every message's UID and size, in mailbox order, in one command."""
    if not mailbox.uids("ALL"):
        return {}
    status, data = mailbox.client.uid("FETCH", "1:*", "(RFC822.SIZE)")
    if status != "OK":
        raise imaplib.IMAP4.error(f"FETCH RFC822.SIZE answered {status}")
    sizes: dict[str, int] = {}
    for item in data:
        line = item[0] if isinstance(item, tuple) else item
        found = _SIZE.search(line) if isinstance(line, bytes) else None
        if found is not None:
            uid, size = (found[1], found[2]) if found[1] else (found[4], found[3])
            sizes[uid.decode()] = int(size)
    return sizes


def _fetch_raw(mailbox: BaseMailBox, uid: str) -> bytes | None:
    """The message exactly as stored, without setting its \\Seen flag."""
    status, data = mailbox.client.uid("FETCH", uid, "(BODY.PEEK[])")
    if status != "OK":
        raise imaplib.IMAP4.error(f"FETCH {uid} answered {status}")
    for item in data:
        if isinstance(item, tuple) and len(item) == 2:
            return bytes(item[1])
    return None


def _put_away(mailbox: BaseMailBox, uids: list[str], folder: str) -> None:
    """Move the handled messages to `folder`, or delete them when it is blank.

    Deleting expunges only these UIDs when the server has UIDPLUS (a plain EXPUNGE
    would also purge what a person marked deleted in the same folder).
    """
    if not uids:
        return
    if folder:
        if not mailbox.folder.exists(folder):
            mailbox.folder.create(folder)
        mailbox.move(uids, folder)
        return
    uid_set = ",".join(uids)
    status, _ = mailbox.client.uid("STORE", uid_set, "+FLAGS.SILENT", r"(\Deleted)")
    if status != "OK":
        raise imaplib.IMAP4.error(f"STORE \\Deleted answered {status}")
    if "UIDPLUS" in mailbox.client.capabilities:
        status, _ = mailbox.client.uid("EXPUNGE", uid_set)
    else:
        status, _ = mailbox.client.expunge()
    if status != "OK":
        raise imaplib.IMAP4.error(f"EXPUNGE answered {status}")


def _close(mailbox: BaseMailBox) -> None:
    # The connection is going anyway: a failed LOGOUT changes nothing.
    with contextlib.suppress(OSError, imaplib.IMAP4.error, ImapToolsError):
        mailbox.logout()


def _describe(exc: BaseException) -> str:
    """One line for an error, with any URL password or token hidden."""
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"no answer within {TIMEOUT:.0f} s"
    text = str(exc) or type(exc).__name__
    return redact(text)
