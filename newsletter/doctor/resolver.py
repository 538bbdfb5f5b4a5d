"""DNS lookups with a deadline, through the system's resolver or one named server."""

from __future__ import annotations

import ipaddress

import dns.exception
import dns.resolver

from newsletter.doctor.verdicts import DEFAULT_TIMEOUT
from newsletter.errors import InvalidInput


class LookupFailed(Exception):
    """The DNS gave no usable answer (timeout, server failure): not "no record"."""


def resolver_at(nameserver: str, timeout: float = DEFAULT_TIMEOUT) -> dns.resolver.Resolver:
    """A resolver that asks only `nameserver` (`host:port`, `[v6]:port` or `host`)."""
    text = nameserver.strip()
    host, _, port = text.rpartition(":")
    if text.count(":") > 1 and not text.startswith("["):
        host, port = text, "53"  # a bare IPv6 address
    elif not host:
        host, port = text, "53"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(port)
    except ValueError:
        raise InvalidInput(
            f"name server must look like 127.0.0.1:53 (an address and a port), got {nameserver!r}"
        ) from None
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [str(address)]
    resolver.port = number
    return _limited(resolver, timeout)


def system_resolver(timeout: float = DEFAULT_TIMEOUT) -> dns.resolver.Resolver:
    """The system's resolver (resolv.conf); raises LookupFailed when there is none."""
    try:
        resolver = dns.resolver.Resolver()
    except dns.exception.DNSException as exc:
        raise LookupFailed(f"no DNS resolver configured: {exc}") from None
    return _limited(resolver, timeout)


def _limited(resolver: dns.resolver.Resolver, timeout: float) -> dns.resolver.Resolver:
    resolver.timeout = timeout
    resolver.lifetime = timeout
    # A 2048-bit DKIM key does not fit the 512 bytes of plain DNS over UDP: EDNS
    # lets it come back in one answer rather than a retry over TCP.
    resolver.use_edns(0, 0, 1232)
    return resolver


def txt_records(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    """The TXT records at `name`, each one's strings joined; [] when there are none."""
    try:
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.Timeout:
        raise LookupFailed(f"no DNS answer for {name} within {resolver.lifetime:g} s") from None
    except dns.exception.DNSException as exc:
        raise LookupFailed(f"DNS lookup of {name} failed: {exc}") from None
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]


def tags(record: str) -> dict[str, str]:
    """A DKIM or DMARC record's `tag=value` pairs (RFC 6376 section 3.2); the first
    of a repeated tag wins."""
    found: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            found.setdefault(key.strip().lower(), value.strip())
    return found
