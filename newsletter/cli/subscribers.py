"""`newsletter subscribers ...`: readers, their preferences, CSV import and export."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer
from rich.table import Table

from newsletter import db
from newsletter.cli.common import (
    YesOption,
    confirm_or_stop,
    console,
    count_table,
    err_console,
    print_columns,
    stderr_progress,
    user_errors,
)
from newsletter.errors import InvalidInput
from newsletter.models import Cadence
from subscribers.models import SubscriberStatus

if TYPE_CHECKING:
    from subscribers.lists import ImportReport

app = typer.Typer(no_args_is_help=True, help="Subscribers and their preferences.")

EmailArgument = Annotated[str, typer.Argument(metavar="EMAIL", help="The reader's address.")]
# The choices `add` and `edit` share, worded once.
CadenceOption = Annotated[
    Cadence | None, typer.Option(help="How often they get mail: at once, daily or weekly.")
]
TimezoneOption = Annotated[str | None, typer.Option(help="IANA time zone, e.g. Europe/Lisbon.")]
HourOption = Annotated[int | None, typer.Option(help="Local hour for daily/weekly digests (0-23).")]
WeekdayOption = Annotated[
    str | None, typer.Option(help="Weekday for weekly digests (monday..sunday).")
]


@app.command("add")
@user_errors
def subscribers_add(
    email: Annotated[str, typer.Argument(metavar="EMAIL", help="The address to subscribe.")],
    tags: Annotated[str, typer.Option(help="Comma-separated tags to follow.")],
    cadence: Annotated[
        Cadence,
        typer.Option(help="How often they get mail: at once, daily or weekly."),
    ] = Cadence.IMMEDIATE,
    frequency: Annotated[
        Cadence | None, typer.Option(hidden=True, help="The former name of --cadence.")
    ] = None,
    name: Annotated[str, typer.Option(help="Name used in the greeting.")] = "",
    timezone: Annotated[str, typer.Option(help="IANA time zone, e.g. Europe/Lisbon.")] = "UTC",
    send_hour: HourOption = None,
    send_weekday: WeekdayOption = None,
    confirmed: Annotated[
        bool, typer.Option(help="Active at once; --no-confirmed adds them as pending.")
    ] = True,
) -> None:
    """Subscribe an address to tags at a cadence."""
    from subscribers.services import SubscriberInput, add_subscriber

    # --frequency is the name older scripts use; --cadence is what the CSV and pages say.
    chosen = frequency or cadence
    data = SubscriberInput(
        email, tags, chosen.value, name, timezone, send_hour, send_weekday, confirmed=confirmed
    )
    with db.session_scope() as session:
        s = add_subscriber(session, data)
        line = f"subscribed [bold]{s.email}[/] to {', '.join(t.name for t in s.tags)} ({s.cadence})"
    console.print(line, highlight=False)


@app.command("list")
@user_errors
def subscribers_list(
    search: Annotated[
        str | None, typer.Option(help="Address or name starting with this (any case).")
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Only readers following this tag.")] = None,
    status: Annotated[
        SubscriberStatus | None, typer.Option(help="Only readers in this status.")
    ] = None,
    cadence: Annotated[Cadence | None, typer.Option(help="Only readers at this cadence.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Readers on one page (1-1000).")] = 50,
    after: Annotated[
        str | None,
        typer.Option(metavar="EMAIL", help="Start after this address: the next page's cursor."),
    ] = None,
) -> None:
    """One page of readers in address order, with their tags, cadence and suppression."""
    from newsletter.tags import slugify
    from subscribers.search import search_subscribers

    header = ("email", "name", "status", "cadence", "tags", "time zone", "next digest (UTC)")
    rows: list[tuple[str, ...]] = []
    with db.session_scope() as session:
        slug = slugify(tag) if tag else None
        page = search_subscribers(session, search, slug, status, cadence, after, limit)
        for row in page.rows:
            s = row.subscriber
            state = s.status.value
            if row.suppressed:
                state += f", suppressed ({row.suppressed.value})"
            rows.append(
                (
                    s.email,
                    s.name,
                    state,
                    s.cadence.value,
                    ", ".join(t.name for t in s.tags),
                    s.timezone,
                    f"{s.next_digest_at:%Y-%m-%d %H:%M}" if s.next_digest_at else "-",
                )
            )
    if not rows:
        filtered = search or tag or status or cadence or after
        console.print("no subscribers match" if filtered else "no subscribers yet")
        return
    print_columns(header, rows)
    if page.next_after:
        err_console.print(
            f"{len(page.rows)} shown; next page: --after {page.next_after}", highlight=False
        )


@app.command("show")
@user_errors
def subscribers_show(
    email: EmailArgument,
    deliveries: Annotated[
        int, typer.Option(min=0, max=1000, help="How many of their last deliveries to show.")
    ] = 10,
) -> None:
    """One reader: their settings, tags, suppression and last deliveries with SMTP replies."""
    from subscribers.cadence import schedule_text
    from subscribers.services import reader_details

    with db.session_scope() as session:
        d = reader_details(session, email, deliveries)
        s = d.subscriber
        facts = Table.grid(padding=(0, 2))
        facts.add_row("email", s.email)
        facts.add_row("name", s.name or "-")
        facts.add_row("status", s.status.value)
        if d.suppression is None:
            facts.add_row("suppressed", "no")
        else:
            detail = f": {d.suppression.detail}" if d.suppression.detail else ""
            facts.add_row(
                "suppressed",
                f"yes, {d.suppression.reason.value} since {d.suppression.created_at:%Y-%m-%d}"
                f"{detail}; no mail goes out until `newsletter suppressions lift {s.email}`",
            )
        schedule = schedule_text(s.cadence.value, s.send_hour, s.send_weekday, s.timezone)
        facts.add_row("gets posts", schedule)
        due = f"{s.next_digest_at:%Y-%m-%d %H:%M} UTC" if s.next_digest_at else "-"
        facts.add_row("next digest", due)
        facts.add_row("subscribed", f"{s.subscribed_at:%Y-%m-%d %H:%M} UTC")
        tags = ", ".join(f"{name} (since {since:%Y-%m-%d})" for _, name, since in d.tags)
        facts.add_row("tags", tags or "none")
        ledger = Table("created (UTC)", "status", "attempts", "subject", "SMTP reply", title=None)
        for delivery, subject in d.deliveries:
            state = delivery.status.value
            if delivery.skip_reason:
                state += f" ({delivery.skip_reason})"
            ledger.add_row(
                f"{delivery.created_at:%Y-%m-%d %H:%M}",
                state,
                str(delivery.attempts),
                subject,
                delivery.last_error or "-",
            )
    console.print(facts, highlight=False)
    if d.deliveries:
        console.print(ledger)
    else:
        console.print("no deliveries yet")


@app.command("edit")
@user_errors
def subscribers_edit(
    email: EmailArgument,
    tags: Annotated[
        str | None, typer.Option(help="Follow exactly these tags (comma-separated).")
    ] = None,
    cadence: CadenceOption = None,
    timezone: TimezoneOption = None,
    send_hour: HourOption = None,
    send_weekday: WeekdayOption = None,
    status: Annotated[
        SubscriberStatus | None,
        typer.Option(help="active, paused or unsubscribed (which suppresses the address)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name used in the greeting.")] = None,
) -> None:
    """Change a reader's tags, schedule, status or name; every value is checked first."""
    from subscribers.services import SubscriberChanges, get_by_email, update_subscriber
    from subscribers.suppression import find

    changes = SubscriberChanges(
        name=name,
        status=status.value if status else None,
        cadence=cadence.value if cadence else None,
        timezone=timezone,
        send_hour=send_hour,
        send_weekday=send_weekday,
        tags=tags,
    )
    if all(value is None for value in vars(changes).values()):
        raise InvalidInput("nothing to change: give at least one option (see --help)")
    with db.session_scope() as session:
        reader = get_by_email(session, email)
        changed = update_subscriber(session, reader, changes, actor="an admin (CLI)")
        address, now_status = reader.email, reader.status
        blocked = find(session, address)
    if changed:
        what = ", ".join(
            f"{field} {_shown(before)} -> {_shown(after)}"
            for field, (before, after) in sorted(changed.items())
        )
        console.print(f"{address}: {what}", highlight=False)
    else:
        console.print(f"{address}: nothing changed", highlight=False)
    if blocked is not None and now_status is SubscriberStatus.ACTIVE:
        console.print(
            f"{address} is {now_status.value} but the address is suppressed "
            f"({blocked.reason.value}): no mail goes out until "
            f"`newsletter suppressions lift {address}`",
            highlight=False,
        )


def _shown(value: object) -> str:
    return ", ".join(value) if isinstance(value, list) else str(value)


@app.command("remove")
@user_errors
def subscribers_remove(email: EmailArgument, yes: YesOption = False) -> None:
    """Delete a subscriber and their personal data (asks first unless --yes)."""
    from subscribers.services import get_by_email, remove_subscriber

    with db.session_scope() as session:
        address = get_by_email(session, email).email
    confirm_or_stop(f"Delete {address} and their personal data for good?", yes)
    with db.session_scope() as session:
        remove_subscriber(session, address)
    console.print(f"removed {address}", highlight=False)


@app.command("import")
@user_errors
def subscribers_import(
    file: Annotated[
        Path, typer.Argument(help="CSV: email,name,tags,cadence,timezone[,status,...]")
    ],
    dry_run: Annotated[bool, typer.Option(help="Report only; write nothing.")] = False,
    create_tags: Annotated[bool, typer.Option(help="Create tags the file names.")] = False,
    rejects: Annotated[
        Path | None,
        typer.Option(help="Write the rejected rows here as CSV, each with its reason."),
    ] = None,
    pending: Annotated[
        bool,
        typer.Option(help="New readers start unconfirmed and are sent the confirmation email."),
    ] = False,
) -> None:
    """Import a CSV list; every rejected row is reported, and the exit status is 1 if any."""
    from subscribers.lists import write_rejects

    try:
        data = file.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {str(file)!r}: {exc.strerror}") from None
    with contextlib.ExitStack() as files:
        # Opened first: a rejects file that cannot be written stops the import before it starts.
        rejects_out = files.enter_context(_open_for_writing(rejects)) if rejects else None
        report = _import(data, dry_run=dry_run, create_tags=create_tags, pending=pending)
        if rejects_out is not None:
            write_rejects(data, report.rejected, rejects_out)
    rows = [
        ("rows read", report.rows),
        ("created" if not dry_run else "would be created", report.created),
        ("updated" if not dry_run else "would be updated", report.updated),
        ("unchanged", report.unchanged),
        ("rejected", len(report.rejected)),
    ]
    title = "import (dry run: nothing written)" if dry_run else "import"
    console.print(count_table(rows, title, column="rows"))
    if pending and not dry_run:
        _send_confirmations(report.pending)
    if rejects is not None and report.rejected:
        err_console.print(f"rejected rows written to {rejects}", highlight=False)
    if report.rejected:
        rejected = Table("line", "email", "reason", title="rejected rows")
        for row in report.rejected:
            rejected.add_row(str(row.line), row.email, row.reason)
        err_console.print(rejected)
        raise typer.Exit(1)


def _open_for_writing(path: Path) -> TextIO:
    try:
        return path.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise InvalidInput(f"cannot write {str(path)!r}: {exc.strerror}") from None


def _import(data: bytes, *, dry_run: bool, create_tags: bool, pending: bool) -> ImportReport:
    """The import in one transaction, its progress on stderr: rows checked, then written."""
    from rich.progress import TextColumn

    from subscribers.lists import import_csv

    with (
        stderr_progress(TextColumn("{task.description}")) as progress,
        db.session_scope() as session,
    ):
        task = progress.add_task("checking rows", total=None)

        def on_progress(phase: str, done: int, of: int) -> None:
            progress.update(task, description=phase, completed=done, total=max(of, 1))

        return import_csv(
            session,
            data,
            dry_run=dry_run,
            create_tags=create_tags,
            pending=pending,
            on_progress=on_progress,
        )


def _send_confirmations(pending: list[str]) -> None:
    """Mail each new unconfirmed reader their confirmation link (after the commit)."""
    import logging

    from newsletter.dispatch import send_task, tasks_run_in_process
    from newsletter.transactional import send_transactional
    from subscribers.lists import confirmation_requests

    with db.session_scope() as session:
        requests = confirmation_requests(session, pending)
    if not requests:
        return
    if not tasks_run_in_process():
        for subscriber_id, preferences in requests:
            send_task("send_transactional", "confirm", subscriber_id, {"preferences": preferences})
        console.print(f"confirmation emails: {len(requests)} handed to the workers")
        return
    sent = 0
    for subscriber_id, preferences in requests:
        try:
            outcome = send_transactional("confirm", subscriber_id, {"preferences": preferences})
        except Exception:
            # One address the server refuses never stops the others.
            logging.getLogger(__name__).exception("confirmation to #%d not sent", subscriber_id)
            continue
        sent += outcome == "sent"
    line = f"confirmation emails: {sent} sent"
    if sent < len(requests):
        line += f", {len(requests) - sent} not sent (--verbose shows why)"
    console.print(line, highlight=False)


@app.command("export")
@user_errors
def subscribers_export(
    file: Annotated[Path | None, typer.Argument(help="Where to write; stdout if omitted.")] = None,
) -> None:
    """Export every subscriber as CSV, in the format import reads (plus their suppression)."""
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
