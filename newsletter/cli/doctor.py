"""`newsletter doctor`: what a sender can check before the first send."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from newsletter.cli.common import console, user_errors
from newsletter.config import describe_errors, get_settings
from newsletter.doctor import DEFAULT_TIMEOUT, Check, Verdict, resolver_at, run_checks
from newsletter.doctor.verdicts import problem

_STYLE = {Verdict.OK: "green", Verdict.WARNING: "yellow", Verdict.PROBLEM: "bold red"}


@user_errors
def doctor(
    timeout: Annotated[
        float,
        typer.Option(min=0.1, max=60.0, help="Seconds each SMTP or DNS step may take."),
    ] = DEFAULT_TIMEOUT,
    # Asks this DNS server (`host:port`) instead of the system's: for tests.
    nameserver: Annotated[
        str | None, typer.Option(hidden=True, envvar="NEWSLETTER_DOCTOR_NAMESERVER")
    ] = None,
) -> None:
    """Check SMTP, DNS (SPF, DKIM, DMARC) and settings before the first send.

    One line per check: ok; warning (mail goes out, but unencrypted, unsigned or
    easier to forge); problem (mail fails, is refused or lands in spam). Only the
    configured SMTP relays and the DNS resolver are contacted, nothing is sent.

    Exit status: 0 when nothing is a problem (warnings allowed), 1 when something
    is, 2 for a bad option.
    """
    resolver = resolver_at(nameserver, timeout) if nameserver else None
    try:
        settings = get_settings()
    except ValidationError as exc:
        checks = [problem("settings", describe_errors(exc))]
    else:
        checks = run_checks(settings, resolver, timeout)
    console.print(_table(checks))
    counts = Counter(check.verdict for check in checks)
    console.print(
        f"{counts[Verdict.PROBLEM]} problem(s), {counts[Verdict.WARNING]} warning(s), "
        f"{counts[Verdict.OK]} ok",
        highlight=False,
    )
    if counts[Verdict.PROBLEM]:
        raise typer.Exit(1)


def _table(checks: list[Check]) -> Table:
    table = Table("check", "verdict", "detail", title="newsletter doctor")
    for check in checks:
        style = _STYLE[check.verdict]
        table.add_row(check.name, f"[{style}]{check.verdict.value}[/]", check.detail)
    return table
