"""`newsletter doctor`: what a sender can check before the first send."""

from __future__ import annotations


def doctor() -> None:
    """Check SMTP, DNS (SPF, DKIM, DMARC) and settings before the first send."""
    raise NotImplementedError
