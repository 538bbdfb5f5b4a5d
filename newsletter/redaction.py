"""Secrets out of log lines: link tokens, passwords in URLs.

A token in a confirm, unsubscribe or preferences link is a key to that reader's
subscription; an access log or an error line must never hold one.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
# The path segment after a subscriber page's prefix is a signed token.
_TOKEN_PATH = re.compile(r"(/(?:confirm|unsubscribe|preferences|resubscribe)/)[^/?#\s'\"]+")
# Query parameters that carry a token or a key.
_TOKEN_QUERY = re.compile(r"([?&](?:token|key|signature|password)=)[^&#\s'\"]+", re.IGNORECASE)
# The password in `scheme://user:password@host`.
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s'\"]*:)[^@/\s'\"]*@", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every link token and URL password replaced by a marker."""
    text = _TOKEN_PATH.sub(rf"\g<1>{REDACTED}", text)
    text = _TOKEN_QUERY.sub(rf"\g<1>{REDACTED}", text)
    return _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", text)


def redact_url(url: str) -> str:
    """A URL fit for an error message: the password (and any token) hidden.

    Everything between the user name and the last `@` goes, so even a password
    holding an unescaped `@` or `/` (a malformed URL) is not shown in part.
    """
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo, host = rest.rsplit("@", 1)
        if ":" in userinfo:
            rest = f"{userinfo.split(':', 1)[0]}:{REDACTED}@{host}"
    return redact(scheme + sep + rest)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message so no handler ever sees a token or a password."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
