"""`newsletter subscribers ...`: readers, their preferences, CSV import and export."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import TextColumn
from rich.table import Table

from newsletter import db
from newsletter.cli.common import console, count_table, err_console, stderr_progress, user_errors
from newsletter.errors import InvalidInput

app = typer.Typer(no_args_is_help=True, help="Subscribers and their preferences.")


@app.command("add")
@user_errors
def subscribers_add(
    email: str,
    tags: Annotated[str, typer.Option(help="Comma-separated tags to follow.")],
    frequency: Annotated[str, typer.Option(help="immediate|daily|weekly")] = "immediate",
    name: Annotated[str, typer.Option(help="Name used in the greeting.")] = "",
    timezone: Annotated[str, typer.Option(help="IANA time zone, e.g. Europe/Lisbon.")] = "UTC",
    send_hour: Annotated[
        int | None, typer.Option(help="Local hour for daily/weekly digests (0-23).")
    ] = None,
    send_weekday: Annotated[
        str | None, typer.Option(help="Weekday for weekly digests (monday..sunday).")
    ] = None,
    confirmed: Annotated[bool, typer.Option(help="Active at once (no opt-in mail).")] = True,
) -> None:
    """Subscribe an address to tags at a cadence."""
    from subscribers.services import SubscriberInput, add_subscriber

    data = SubscriberInput(
        email, tags, frequency, name, timezone, send_hour, send_weekday, confirmed=confirmed
    )
    with db.session_scope() as session:
        s = add_subscriber(session, data)
        line = f"subscribed [bold]{s.email}[/] to {', '.join(t.name for t in s.tags)} ({s.cadence})"
    console.print(line, highlight=False)


@app.command("list")
@user_errors
def subscribers_list(status: str | None = None) -> None:
    """Every subscriber with their tags and cadence."""
    from subscribers.models import SubscriberStatus
    from subscribers.services import list_subscribers

    wanted = None
    if status:
        try:
            wanted = SubscriberStatus(status)
        except ValueError:
            raise InvalidInput(f"unknown status {status!r}") from None
    table = Table("email", "name", "status", "cadence", "tags", "time zone", "next digest (UTC)")
    with db.session_scope() as session:
        for s in list_subscribers(session, wanted):
            table.add_row(
                s.email,
                s.name,
                s.status.value,
                s.cadence.value,
                ", ".join(t.name for t in s.tags),
                s.timezone,
                f"{s.next_digest_at:%Y-%m-%d %H:%M}" if s.next_digest_at else "-",
            )
    console.print(table)


@app.command("remove")
@user_errors
def subscribers_remove(email: str) -> None:
    """Delete a subscriber and their history."""
    from subscribers.services import remove_subscriber

    with db.session_scope() as session:
        remove_subscriber(session, email)
    console.print(f"removed {email}", highlight=False)


@app.command("import")
@user_errors
def subscribers_import(
    file: Annotated[
        Path, typer.Argument(help="CSV: email,name,tags,cadence,timezone[,status,...]")
    ],
    dry_run: Annotated[bool, typer.Option(help="Report only; write nothing.")] = False,
    create_tags: Annotated[bool, typer.Option(help="Create tags the file names.")] = False,
) -> None:
    """Import a CSV list; every rejected row is reported, and the exit status is 1 if any."""
    from subscribers.lists import import_csv

    try:
        data = file.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {str(file)!r}: {exc.strerror}") from None
    with stderr_progress(TextColumn("importing")) as progress, db.session_scope() as session:
        task = progress.add_task("import", total=max(data.count(b"\n"), 1))
        report = import_csv(
            session,
            data,
            dry_run=dry_run,
            create_tags=create_tags,
            on_progress=lambda n: progress.advance(task, n),
        )
    rows = [
        ("rows read", report.rows),
        ("created" if not dry_run else "would be created", report.created),
        ("updated" if not dry_run else "would be updated", report.updated),
        ("unchanged", report.unchanged),
        ("rejected", len(report.rejected)),
    ]
    title = "import (dry run: nothing written)" if dry_run else "import"
    console.print(count_table(rows, title, column="rows"))
    if report.rejected:
        rejected = Table("line", "email", "reason", title="rejected rows")
        for row in report.rejected:
            rejected.add_row(str(row.line), row.email, row.reason)
        err_console.print(rejected)
        raise typer.Exit(1)


@app.command("export")
@user_errors
def subscribers_export(
    file: Annotated[Path | None, typer.Argument(help="Where to write; stdout if omitted.")] = None,
) -> None:
    """Export every subscriber as CSV, in the format import reads."""
    from subscribers.lists import export_csv

    with db.session_scope() as session:
        if file is None:
            export_csv(session, sys.stdout)
            return
        try:
            with file.open("w", encoding="utf-8", newline="") as out:
                count = export_csv(session, out)
        except OSError as exc:
            raise InvalidInput(f"cannot write {str(file)!r}: {exc.strerror}") from None
    err_console.print(f"exported {count} subscribers to {file}")
