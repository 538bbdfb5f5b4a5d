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
    from newsletter.delivery.pipeline import RunSummary

app = typer.Typer(no_args_is_help=True, help="Planning and sending digests.")

# Why readers or emails were left out, as an operator would say it.
_REASONS = {
    "suppressed": "their address is suppressed",
    "nothing_new": "nothing new for them",
    "only_failed_posts": "their only new posts could not be rendered",
    "post_missing": "the post was deleted first",
    "subscriber_deleted": "the reader was deleted",
    "subscriber_paused": "the reader paused",
    "subscriber_unsubscribed": "the reader unsubscribed",
    "subscriber_pending": "the reader has not confirmed",
    "taken_over": "another sender took them over",
}


def _plain(reason: str) -> str:
    return _REASONS.get(reason, reason.replace("_", " "))


def plain_summary(summary: RunSummary) -> list[tuple[str, int]]:
    """The run in plain words; reasons for skipping appear only when they happened."""
    plan, send = summary.plan, summary.send
    rows = [
        ("subscribers due", plan.subscribers),
        ("posts planned late (missed by an earlier run)", plan.posts_swept),
        ("digests written", plan.digests_rendered),
        ("readers given a digest already written for the same posts", plan.digests_reused),
        ("deliveries planned", plan.planned),
        ("deliveries resumed after an interrupted run", summary.stranded),
        ("sent", send.sent),
        ("sent, but the mail server never confirmed it", send.unknown),
        ("deferred (tried again later)", len(send.deferred)),
        ("failed", send.failed),
        ("posts that could not be rendered", len(plan.failed_posts)),
        ("readers whose digest could not be rendered", plan.failed_deliveries),
        ("planning errors", plan.planning_errors),
        ("unconfirmed sign-ups expired", summary.expired_signups),
    ]
    rows += [(f"readers skipped: {_plain(r)}", n) for r, n in sorted(plan.skipped.items())]
    rows += [
        (f"not sent: {_plain(r)}", n)
        for r, n in sorted(send.skipped.items())
        if r != "not_claimable"
    ]
    return rows


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
    console.print(count_table(plain_summary(summary), title))
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
