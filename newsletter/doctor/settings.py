"""Settings a first send depends on: secret key, links, bounces, the From domain."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from newsletter.config import Settings, _secret_key_problem
from newsletter.doctor.records import within
from newsletter.doctor.verdicts import Check, ok, problem, warning


def check_secret_key(settings: Settings) -> Check:
    reason = _secret_key_problem(settings.secret_key)
    if reason:
        return problem("secret key", f"{reason} (it signs the unsubscribe links)")
    return ok("secret key", "set, not a placeholder")


def check_base_url(settings: Settings) -> Check:
    url = settings.public_base_url
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https":
        return problem(
            "base URL", f"{url} is not https: every link in every mail would be plain http"
        )
    if host == "localhost" or host.endswith(".localhost") or _is_loopback(host):
        return problem("base URL", f"{url} points at this machine: readers cannot open its links")
    return ok("base URL", url)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bounce_address(settings: Settings) -> Check:
    address = settings.bounce_address
    if not address:
        return warning(
            "bounce address",
            "NEWSLETTER_BOUNCE_ADDRESS not set: bounces go to the From address, "
            "unread, so dead addresses keep being mailed",
        )
    return ok("bounce address", address)


def public_domain(address: str | None) -> str | None:
    """The address's domain when it is one the public DNS can vouch for, else None."""
    domain = (address or "").rpartition("@")[2].strip().lower().rstrip(".")
    if "." not in domain or within(domain, "localhost") or domain.endswith(".local"):
        return None
    return domain


def from_domain(settings: Settings) -> str | None:
    return public_domain(settings.from_)


def check_from(settings: Settings) -> Check:
    if from_domain(settings) is None:
        return problem(
            "From address",
            f"{settings.from_} has no public domain: receivers refuse or junk its mail "
            "(and its DNS cannot be checked)",
        )
    return ok("From address", settings.from_)
