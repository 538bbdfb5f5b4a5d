"""`newsletter deliveries ...`: watch the current send, resend what failed."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from newsletter import db
from newsletter.cli.common import (
    console,
    count_table,
    described_progress,
    err_console,
    user_errors,
)
from newsletter.errors import InvalidInput

if TYPE_CHECKING:
    # The delivery engine is imported by the commands that use it: every other
    # command starts without loading it.
    from newsletter.delivery import progress

app = typer.Typer(no_args_is_help=True, help="The ledger of messages: progress and retries.")


def _read(digest: int | None) -> progress.SendStatus:
    from newsletter.delivery import progress

    with db.session_scope() as session:
        return progress.send_status(session, digest)


def _view(status: progress.SendStatus) -> Group:
    from newsletter.delivery.progress import RATE_WINDOW

    heading = _heading(status)
    total = status.total
    # Rounded down: 100% only once nothing is left.
    percent = 100 * status.done // total if total else 100
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(total, 1), completed=status.done if total else 1, width=40),
        f"{status.done}/{total} done ({percent}%), {status.rate:.1f} msg/s "
        f"over the last {RATE_WINDOW.seconds} s",
    )
    return Group(Text(heading), count_table(status.rows(), label="state"), bar)


def _heading(status: progress.SendStatus) -> str:
    if status.digest_id is not None:
        return f"deliveries of digest #{status.digest_id}"
    first, last = status.runs[0].start, status.runs[-1].end
    if last is None:
        span = f"planned from {first:%Y-%m-%d %H:%M:%S} UTC on"
    elif last == first:
        span = f"planned at {first:%Y-%m-%d %H:%M:%S} UTC"
    else:
        span = f"planned from {first:%Y-%m-%d %H:%M:%S} to {last:%Y-%m-%d %H:%M:%S} UTC"
    runs = "one planning run" if len(status.runs) == 1 else f"{len(status.runs)} planning runs"
    return f"current send: {runs}, {span}"


@app.command("status")
@user_errors
def status(
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh until nothing is queued or sending.")
    ] = False,
    digest: Annotated[
        int | None,
        typer.Option(help="Only this digest's deliveries (its id), whenever they were planned."),
    ] = None,
    interval: Annotated[
        float, typer.Option(help="Seconds between refreshes with --watch.", min=0.1)
    ] = 1.0,
) -> None:
    """Deliveries of the current send by state, with a progress bar and the send rate.

    The current send: every planning run that still has a delivery queued or sending,
    each whole; with nothing in flight, the latest run (a run is a stretch of
    deliveries planned less than a minute apart). Deferred deliveries are queued
    ones waiting for a retry. Ctrl-C stops --watch.
    """
    current = _read(digest)
    if current.total == 0:
        console.print("no deliveries yet" if digest is None else f"digest #{digest} has none")
        return
    if not watch:
        console.print(_view(current))
        return
    took = 0.0
    try:
        with Live(_view(current), console=console, auto_refresh=False) as live:
            # Said once the display is up, so Ctrl-C from here on always ends cleanly.
            err_console.print("watching the send; Ctrl-C stops", highlight=False)
            while current.in_flight:
                # At most a third of the time counting: a million rows in flight take
                # about half a second to count on PostgreSQL.
                time.sleep(max(interval, 2 * took))
                started = time.monotonic()
                current = _read(digest)
                took = time.monotonic() - started
                live.update(_view(current), refresh=True)
    except KeyboardInterrupt:
        pass


@app.command("retry")
@user_errors
def retry(
    failed: Annotated[
        bool,
        typer.Option(
            "--failed",
            help="Resend the deliveries that failed at sending (required: nothing else is "
            "ever retried).",
        ),
    ] = False,
    digest: Annotated[
        int | None, typer.Option(help="Only this digest's failures (its id).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before requeueing.")] = False,
) -> None:
    """Put failed deliveries back in the queue and send them again.

    Sent and skipped deliveries are never retried; readers suppressed or unsubscribed
    since are skipped by the sender. With a broker the batches go to the workers,
    else they are sent here.
    """
    from newsletter.delivery import progress

    if not failed:
        raise InvalidInput("say what to retry: --failed (sent and skipped deliveries never are)")
    with db.session_scope() as session:
        found = progress.failures(session, digest)
    if not found.deliveries:
        console.print("no failed deliveries to retry", highlight=False)
        return
    if not yes:
        _confirm(found)
    with described_progress() as bar:
        task = bar.add_task("resending", total=found.deliveries)
        report = progress.retry_failed(digest, on_progress=lambda n: bar.advance(task, n))
    if report.send is None:
        console.print(
            f"{report.requeued} deliveries requeued; {report.batches} send batches handed "
            "to the workers",
            highlight=False,
        )
        return
    sent = report.send
    rows = [
        ("requeued", report.requeued),
        ("sent", sent.sent),
        ("failed", sent.failed),
        ("sent, but the server's answer never came", sent.unknown),
        ("deferred for retry", len(sent.deferred)),
    ]
    rows += [
        (f"not sent: {why}", n)
        for why, n in sorted(sent.skipped.items())
        if why != "not_claimable"  # another sender had them first
    ]
    console.print(count_table(rows, "deliveries retry"))


def _confirm(found: progress.Failures) -> None:
    if not sys.stdin.isatty():
        raise InvalidInput("standard input is not a terminal: pass --yes to requeue")
    span = f"{found.oldest:%Y-%m-%d %H:%M} to {found.newest:%Y-%m-%d %H:%M} UTC"
    typer.confirm(
        f"Requeue {found.deliveries} failed deliveries of {found.digests} digest(s), "
        f"planned {span}, and send them again?",
        abort=True,
    )
