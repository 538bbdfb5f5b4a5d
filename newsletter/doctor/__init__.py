"""`newsletter doctor`'s checks: what a sender can learn before the first send.

Each check gives one verdict: ok; a warning (mail goes out, but worse than it could:
unencrypted, unsigned, easier to forge); or a problem (mail fails, is refused, or
lands in spam). Only what is configured is contacted, the SMTP relays and the DNS
resolver, each with a timeout, so the doctor answers in seconds even when a server
never does.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import dns.resolver

from newsletter.config import Settings
from newsletter.doctor.records import Dmarc, check_alignment, check_dkim, check_dmarc, check_spf
from newsletter.doctor.resolver import LookupFailed, resolver_at, system_resolver
from newsletter.doctor.settings import (
    check_base_url,
    check_bounce_address,
    check_from,
    check_secret_key,
    from_domain,
    public_domain,
)
from newsletter.doctor.smtp import check_smtp
from newsletter.doctor.verdicts import DEFAULT_TIMEOUT, Check, Verdict, problem

__all__ = ["DEFAULT_TIMEOUT", "Check", "Verdict", "resolver_at", "run_checks"]


def run_checks(
    settings: Settings,
    resolver: dns.resolver.Resolver | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Check]:
    """Every check, in report order. The slow ones (network) run side by side, so
    the whole takes about one timeout at worst, not one per check.

    `resolver` None: the system's resolver.
    """
    tasks: list[Callable[[], Check]] = [
        partial(check_from, settings),
        partial(check_secret_key, settings),
        partial(check_base_url, settings),
        partial(check_bounce_address, settings),
        *check_smtp(settings, timeout),
    ]
    domain = from_domain(settings)
    dmarc: Callable[[], Dmarc] | None = None
    if domain is not None:
        try:
            dns_resolver = resolver or system_resolver(timeout)
        except LookupFailed as exc:
            tasks.append(partial(problem, "DNS", str(exc)))
        else:
            tasks.append(partial(check_spf, domain, dns_resolver))
            bounce_domain = public_domain(settings.bounce_address)
            if bounce_domain and bounce_domain != domain:
                # SPF is checked against the envelope sender: the bounce address's domain.
                tasks.append(partial(check_spf, bounce_domain, dns_resolver))
            tasks.extend(check_dkim(settings, dns_resolver))
            dmarc = partial(check_dmarc, domain, dns_resolver)

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="doctor") as pool:
        pending = [pool.submit(task) for task in tasks]
        found = pool.submit(dmarc) if dmarc is not None else None
        results = [future.result() for future in pending]
    if found is not None and domain is not None:
        dmarc_result = found.result()
        results.append(dmarc_result.check)
        if settings.dkim_domain:
            results.append(
                check_alignment(
                    domain, settings.dkim_domain, dmarc_result.domain, dmarc_result.strict
                )
            )
    return results
