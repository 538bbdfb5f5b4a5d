"""`newsletter bounces ...`: bounce and complaint reports read back in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.exc import DBAPIError

from newsletter import db
from newsletter.cli.common import console, err_console, parse_now, print_table, user_errors

app = typer.Typer(no_args_is_help=True, help="Bounces and complaints read back in.")

# sysexits.h EX_TEMPFAIL: an MTA piping to us keeps the message and tries again later.
EXIT_TRY_LATER = 75


def _read(file: Path | None) -> bytes:
    if file is None or str(file) == "-":
        return typer.get_binary_stream("stdin").read()
    return file.read_bytes()


@app.command("ingest")
@user_errors
def bounces_ingest(
    file: Annotated[
        Path | None, typer.Argument(help="The message (standard input when omitted or -).")
    ] = None,
    now: Annotated[str | None, typer.Option(help="ISO instant it arrived (default: now).")] = None,
) -> None:
    """Read one message sent to the bounce address and apply what it reports.

    Pipe the bounce address to this command from the MTA. It exits 0 for anything
    it could read, bounce or not (an MTA must not bounce a bounce), 2 when there is
    no message to read, and 75 (try again later) when the database is out of reach.
    """
    from newsletter.bounces.intake import ingest_message
    from newsletter.bounces.records import summary

    try:
        raw = _read(file)
    except OSError as exc:
        err_console.print(f"[bold red]error:[/] cannot read {file}: {exc.strerror or exc}")
        raise typer.Exit(2) from None
    if not raw.strip():
        err_console.print("[bold red]error:[/] no message to read (the input is empty)")
        raise typer.Exit(2)
    try:
        result = ingest_message(raw, source="cli", now=parse_now(now))
    except DBAPIError as exc:
        if db.missing_schema(exc) or not db.database_unavailable(exc):
            raise
        err_console.print("[bold red]error:[/] the database is out of reach; try again later")
        raise typer.Exit(EXIT_TRY_LATER) from None
    if not result.recognised:
        console.print(f"{result.kind}: {result.reason}; nothing changed", highlight=False)
        return
    count = len(result.events)
    console.print(f"{result.kind}: {count} event{'s' if count != 1 else ''}", highlight=False)
    for event in result.events:
        delivery = f"delivery {event.delivery_id}" if event.delivery_id else "no delivery"
        who = event.email or "(address not given)"
        said = summary(event.diagnostic)
        console.print(f"  {event.kind} {who}, {delivery}: {said}", highlight=False)
    for effect in result.effects:
        console.print(f"  -> {effect}", highlight=False)


@app.command("list")
@user_errors
def bounces_list(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 50,
) -> None:
    """The latest bounces and complaints, and what each did."""
    from newsletter.bounces.records import recent, summary

    table = Table("received", "kind", "email", "delivery", "outcome", "diagnostic")
    with db.session_scope() as session:
        for row in recent(session, limit):
            table.add_row(
                f"{row.received_at:%Y-%m-%d %H:%M}",
                row.kind,
                row.email or "",
                str(row.delivery_id or ""),
                row.outcome,
                summary(row.diagnostic, 80),
            )
    print_table(table, "no bounces or complaints yet")


@app.command("poll")
@user_errors
def bounces_poll() -> None:
    """Read the bounce mailbox (NEWSLETTER_BOUNCE_MAILBOX_URL) once, as beat does.

    Bounces and complaints are applied, then deleted or moved to
    NEWSLETTER_BOUNCE_PROCESSED_FOLDER; everything else stays. Exits 1 when the
    mailbox cannot be read, or when a message failed (it stays for the next poll).
    """
    from newsletter.bounces.mailbox import MailboxError, poll

    try:
        report = poll()
    except MailboxError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    counts = ", ".join(f"{count} {label}" for label, count in report.rows())
    console.print(f"{report.mailbox}: {counts}", highlight=False, soft_wrap=True)
    for effect in report.effects:
        console.print(f"  -> {effect}", highlight=False)
    for error in report.errors:
        err_console.print(f"[bold red]failed:[/] {error}", highlight=False, soft_wrap=True)
    if report.failed:
        raise typer.Exit(1)
