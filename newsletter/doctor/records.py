"""The DNS records receivers judge mail by: SPF, DKIM and DMARC, and their alignment."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import dns.resolver

from newsletter.config import Settings
from newsletter.delivery.dkim import dns_record, load_private_key, record_name
from newsletter.doctor.resolver import LookupFailed, tags, txt_records
from newsletter.doctor.verdicts import Check, ok, problem, warning
from newsletter.errors import InvalidInput

_ALL = re.compile(r"^([-~?+]?)all$", re.IGNORECASE)


def check_spf(domain: str, resolver: dns.resolver.Resolver) -> Check:
    """The domain's one SPF record, and what it says about servers it does not name."""
    name = f"SPF {domain}"
    try:
        records = [r for r in txt_records(resolver, domain) if _is_spf(r)]
    except LookupFailed as exc:
        return problem(name, str(exc))
    if not records:
        return problem(name, f'no SPF record: publish TXT "v=spf1 <your relays> -all" at {domain}')
    if len(records) > 1:
        return problem(
            name,
            f"{len(records)} SPF records: receivers treat more than one as an error; merge them",
        )
    record = records[0]
    qualifiers = [m.group(1) for t in record.split() if (m := _ALL.match(t))]
    if qualifiers and qualifiers[-1] in {"", "+"}:
        return problem(name, f"{record!r} ends in +all: anyone may send as {domain}")
    if qualifiers and qualifiers[-1] == "?":
        return warning(name, f"{record!r} ends in ?all: says nothing against forged mail")
    if not qualifiers and "redirect=" not in record.lower():
        return warning(name, f"{record!r} has no -all or ~all: says nothing against forged mail")
    return ok(name, record)


def _is_spf(record: str) -> bool:
    lowered = record.strip().lower()
    return lowered == "v=spf1" or lowered.startswith("v=spf1 ")


_DMARC = re.compile(r"\s*v\s*=\s*DMARC1\s*(;|$)")


@dataclass(frozen=True)
class Dmarc:
    check: Check
    # Where the record was found: the From domain or the parent it inherits from,
    # which stands for the organisational domain in the alignment check.
    domain: str | None = None
    # adkim=s: the DKIM domain must be the From domain itself.
    strict: bool = False


def check_dmarc(domain: str, resolver: dns.resolver.Resolver) -> Dmarc:
    """The DMARC policy that covers `domain`: its own `_dmarc` record, or else the
    nearest parent's (the DNS tree walk of DMARCbis, which needs no suffix list)."""
    name = f"DMARC {domain}"
    labels = domain.split(".")
    for start in range(len(labels) - 1):
        candidate = ".".join(labels[start:])
        try:
            records = [r for r in txt_records(resolver, f"_dmarc.{candidate}") if _DMARC.match(r)]
        except LookupFailed as exc:
            return Dmarc(problem(name, str(exc)))
        if not records:
            continue
        if len(records) > 1:
            detail = (
                f"{len(records)} DMARC records at _dmarc.{candidate}: receivers ignore them all"
            )
            return Dmarc(problem(name, detail))
        found = tags(records[0])
        inherited = candidate != domain
        policy = (found.get("sp") if inherited else None) or found.get("p", "")
        where = f" (from _dmarc.{candidate})" if inherited else ""
        strict = found.get("adkim", "r").lower() == "s"
        if policy.lower() not in {"none", "quarantine", "reject"}:
            return Dmarc(problem(name, f"no valid p= policy in {records[0]!r}{where}"), candidate)
        if policy.lower() == "none":
            detail = (
                f"p=none{where}: forged mail is reported but still delivered; "
                "move to quarantine or reject once the reports are clean"
            )
            return Dmarc(warning(name, detail), candidate, strict)
        return Dmarc(ok(name, f"p={policy.lower()}{where}"), candidate, strict)
    return Dmarc(
        problem(
            name,
            f'no DMARC record: publish TXT "v=DMARC1; p=none; rua=mailto:..." at _dmarc.{domain}'
            " (bulk senders must have one)",
        )
    )


def check_dkim_key(
    domain: str, selector: str, key_file: str, resolver: dns.resolver.Resolver
) -> Check:
    """The selector's published key is the public half of the configured private key."""
    where = record_name(selector, domain)
    name = f"DKIM {where}"
    try:
        expected = dns_record(load_private_key(key_file))
    except InvalidInput as exc:  # the key file: missing, unreadable, not a key
        return problem(name, str(exc))
    try:
        published = [tags(r) for r in txt_records(resolver, where)]
    except LookupFailed as exc:
        return problem(name, str(exc))
    keys = [t["p"] for t in published if "p" in t]
    if not keys:
        return problem(name, f"no DKIM record: publish TXT {expected!r} at {where}")
    want = tags(expected)["p"]
    if any(_same_key(key, want) for key in keys):
        return ok(name, "the published key matches the key file")
    if not any(_compact(key) for key in keys):
        return problem(name, "the published key is revoked (empty p=): signatures fail")
    return problem(
        name,
        f"the published key does not match the key file, so signatures fail: publish {expected!r}",
    )


def _compact(text: str) -> str:
    return "".join(text.split())


def _same_key(published: str, expected: str) -> bool:
    """Equal base64 keys, however the DNS record was wrapped or padded."""
    a, b = _compact(published), _compact(expected)
    if a == b:
        return True
    try:
        return base64.b64decode(a + "==") == base64.b64decode(b + "==")
    except (binascii.Error, ValueError):
        return False


_DKIM_SETTINGS = ("NEWSLETTER_DKIM_DOMAIN", "NEWSLETTER_DKIM_SELECTOR", "NEWSLETTER_DKIM_KEY_FILE")


def check_dkim(settings: Settings, resolver: dns.resolver.Resolver) -> list[Callable[[], Check]]:
    """One check per configured selector; DKIM off or half set up is one line."""
    values = (settings.dkim_domain, settings.dkim_selector, settings.dkim_key_file)
    if not any(values):
        detail = (
            "off: not signing (mailbox providers expect bulk mail signed; see `newsletter dkim`)"
        )
        return [partial(warning, "DKIM", detail)]
    missing = [name for name, value in zip(_DKIM_SETTINGS, values, strict=True) if not value]
    if missing:
        detail = f"half set up, so nothing is signed: {', '.join(missing)} not set"
        return [partial(problem, "DKIM", detail)]
    domain, selector, key_file = (str(v) for v in values)
    checks: list[Callable[[], Check]] = [
        partial(check_dkim_key, domain, selector, key_file, resolver)
    ]
    second = (settings.dkim_selector_2, settings.dkim_key_file_2)
    if all(second):
        selector_2, key_file_2 = (str(v) for v in second)
        checks.append(partial(check_dkim_key, domain, selector_2, key_file_2, resolver))
    elif any(second):
        detail = "NEWSLETTER_DKIM_SELECTOR_2 and NEWSLETTER_DKIM_KEY_FILE_2 go together"
        checks.append(partial(problem, "DKIM second key", detail))
    return checks


def check_alignment(
    from_domain: str, dkim_domain: str, organisation: str | None, strict: bool = False
) -> Check:
    """DMARC counts a DKIM signature only for a domain aligned with the From domain:
    the same, or (relaxed, the default) under the same organisational domain."""
    name = "DMARC alignment"
    signer = dkim_domain.lower().rstrip(".")
    if signer == from_domain:
        return ok(name, f"DKIM signs as the From domain {from_domain}")
    if strict:
        return warning(
            name,
            f"DKIM signs as {signer} but mail is From {from_domain} and DMARC asks for "
            "strict alignment (adkim=s): the signature does not count for DMARC",
        )
    if within(from_domain, signer) or within(signer, from_domain):
        return ok(name, f"DKIM domain {signer} and From domain {from_domain}: relaxed alignment")
    if organisation and within(from_domain, organisation) and within(signer, organisation):
        return ok(name, f"DKIM domain {signer} and From domain {from_domain} share {organisation}")
    return warning(
        name,
        f"DKIM signs as {signer} but mail is From {from_domain}: the signature does not "
        "count for DMARC",
    )


def within(domain: str, parent: str) -> bool:
    return domain == parent or domain.endswith("." + parent)
