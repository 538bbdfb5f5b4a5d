"""`newsletter digests run` and `newsletter preview`: what is due, sent or shown."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from newsletter import db
from newsletter.cli.common import (
    console,
    count_table,
    described_progress,
    err_console,
    parse_now,
    user_errors,
)
from newsletter.config import get_settings
from newsletter.errors import InvalidInput
from newsletter.models import Cadence

if TYPE_CHECKING:
    pass

app = typer.Typer(no_args_is_help=True, help="Planning and sending digests.")


@app.command("run")
@user_errors
def digests_run(
    now: Annotated[str | None, typer.Option(help="ISO instant to run at (default: now).")] = None,
) -> None:
    """Plan and send everything due at that moment, then print a summary."""
    from newsletter.delivery.pipeline import run_due

    settings = get_settings()
    instant = parse_now(now)
    with described_progress() as progress:
        task = progress.add_task("sending", total=None)

        def on_total(total: int) -> None:
            progress.update(task, total=total)

        def on_progress(done: int) -> None:
            progress.advance(task, done)

        summary = run_due(instant, on_total=on_total, on_progress=on_progress)
    title = f"digests run at {instant:%Y-%m-%d %H:%M} UTC"
    console.print(count_table(summary.rows(), title))
    # Failures are reported, not fatal: everything else went out, so the exit status stays 0.
    for failure in summary.plan.failures:
        err_console.print(f"[bold red]failed:[/] {failure}", highlight=False, soft_wrap=True)
    if settings.broker_url and summary.batches:
        console.print(f"{summary.batches} batches of emails handed to the workers", highlight=False)


@user_errors
def preview(
    out: Annotated[Path, typer.Option(help="Where to write the HTML.")],
    tags: Annotated[str | None, typer.Option(help="Tags of a hypothetical reader.")] = None,
    cadence: Annotated[
        Cadence | None, typer.Option(help="The cadence of that hypothetical reader.")
    ] = None,
    frequency: Annotated[
        Cadence | None, typer.Option(hidden=True, help="The former name of --cadence.")
    ] = None,
    subscriber: Annotated[str | None, typer.Option(help="Preview this reader's digest.")] = None,
    now: Annotated[str | None, typer.Option(help="ISO instant to preview at.")] = None,
) -> None:
    """Write the digest a reader would get now (or recent posts for the tags)."""
    from newsletter.preview import build_preview

    with db.session_scope() as session:
        chosen = frequency or cadence
        result = build_preview(
            session, tags, chosen.value if chosen else None, subscriber, parse_now(now)
        )
        titles = [p.title for p in result.posts]
    try:
        out.write_text(result.html, encoding="utf-8")
        out.with_suffix(".txt").write_text(result.text, encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write {str(out)!r}: {exc}") from None
    kind = "pending digest" if result.pending else "recent posts (nothing pending)"
    console.print(f"[bold]{result.subject}[/]  ({kind}, {len(titles)} posts)", highlight=False)
    console.print(f"wrote {out} and {out.with_suffix('.txt')}", highlight=False)
