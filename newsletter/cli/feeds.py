"""`newsletter feeds ...`: RSS/Atom feeds polled for new posts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from newsletter import db
from newsletter.cli.common import console, err_console, print_table, user_errors
from newsletter.errors import InvalidInput

app = typer.Typer(no_args_is_help=True, help="RSS/Atom feeds polled for new posts.")


def _poll_table(reports: list[Any]) -> Table:
    table = Table("feed", "status", "mailed", "backlog", "updated", "unchanged", "skipped")
    for r in reports:
        state = "not modified" if r.not_modified else (str(r.status) if r.status else "-")
        if r.error:
            state = f"[red]failed[/] ({r.status or '-'})"
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(r.skipped.items())) or "-"
        table.add_row(
            r.url,
            state,
            str(len(r.new)),
            str(r.backlog),
            str(r.updated),
            str(r.unchanged),
            skipped,
        )
    return table


def _report_errors(reports: list[Any]) -> None:
    failed = [r for r in reports if r.error]
    for r in failed:
        err_console.print(f"[bold red]error:[/] {r.url}: {r.error}", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command("add")
@user_errors
def feeds_add(
    url: Annotated[str, typer.Argument(help="The feed's http(s) URL.")],
    tags: Annotated[
        str, typer.Option(help="Tags added to every post of this feed, e.g. a tag archive's.")
    ] = "",
    interval: Annotated[int, typer.Option(help="Seconds between polls (60-604800).")] = 900,
    mail_newest: Annotated[
        int, typer.Option(help="Mail the newest N posts of the backlog all the same.")
    ] = 0,
    poll: Annotated[bool, typer.Option(help="Import the backlog now (else at first poll).")] = True,
) -> None:
    """Register a feed and import its backlog as already published: nobody is mailed.

    The feed is fetched at once; if that fails nothing is added. Posts that appear
    in later polls are new and go to their readers.
    """
    from newsletter.feeds import services as feeds

    with db.session_scope() as session:
        feed = feeds.add_feed(session, url, tags, interval, mail_newest)
        feed_id, feed_url = feed.id, feed.url
    if not poll:
        console.print(f"added feed [bold]#{feed_id}[/] {feed_url}; first poll due now")
        return
    report = feeds.poll_feed(feed_id)
    if report.error:
        with db.session_scope() as session:
            feeds.remove_feed(session, feed_id)
        raise InvalidInput(f"feed not added: {report.error}")
    console.print(
        f"added feed [bold]#{feed_id}[/] {feed_url}: {report.backlog} posts imported as "
        f"already published, {len(report.new)} mailed",
        highlight=False,
    )


@app.command("poll")
@user_errors
def feeds_poll(
    feed: Annotated[str | None, typer.Argument(help="A feed's id or URL.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Poll every feed, due or not.")] = False,
) -> None:
    """Poll the feeds that are due (or one feed, or --all); new posts go to their readers."""
    from newsletter.feeds import services as feeds

    if feed and all_:
        raise InvalidInput("give one feed or --all, not both")
    if feed:
        with db.session_scope() as session:
            ids = [feeds.find_feed(session, feed).id]
    elif all_:
        with db.session_scope() as session:
            ids = [f.id for f in feeds.list_feeds(session)]
    else:
        ids = []
    # One feed failing in any way is reported on its row; the others are still polled.
    reports = feeds.poll_many(ids) if (feed or all_) else feeds.poll_due()
    if not reports:
        console.print("no feed is due" if not all_ else "no feeds registered")
        return
    console.print(_poll_table(reports))
    _report_errors(reports)


@app.command("import")
@user_errors
def feeds_import(
    file: Annotated[Path, typer.Argument(help="A saved RSS or Atom document.")],
    tags: Annotated[str, typer.Option(help="Tags added to every imported post.")] = "",
    mail_newest: Annotated[
        int, typer.Option(help="Mail the newest N imported posts to their readers.")
    ] = 0,
) -> None:
    """Import an exported feed from a file, as already published (known guids are skipped)."""
    from newsletter.feeds import services as feeds

    try:
        content = file.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {str(file)!r}: {exc}") from None
    report = feeds.import_document(content, str(file), tags, mail_newest)
    console.print(_poll_table([report]))


@app.command("list")
@user_errors
def feeds_list() -> None:
    """Every feed with its last poll."""
    from newsletter.feeds import services as feeds

    table = Table("id", "url", "title", "tags", "every", "last poll", "status", "next poll")
    with db.session_scope() as session:
        for f in feeds.list_feeds(session):
            table.add_row(
                str(f.id),
                f.url,
                f.title,
                f.extra_tags or "-",
                f"{f.poll_interval} s",
                f"{f.last_polled_at:%Y-%m-%d %H:%M}" if f.last_polled_at else "never",
                (f"error: {f.last_error}" if f.last_error else str(f.last_status or "-")),
                f"{f.next_poll_at:%Y-%m-%d %H:%M}" if f.next_poll_at else "-",
            )
    print_table(table, "no feeds yet: `newsletter feeds add URL` adds one")


@app.command("remove")
@user_errors
def feeds_remove(feed: Annotated[str, typer.Argument(help="A feed's id or URL.")]) -> None:
    """Stop polling a feed; the posts it brought stay."""
    from newsletter.feeds import services as feeds

    with db.session_scope() as session:
        url = feeds.remove_feed(session, feed)
    console.print(f"removed feed {url}", highlight=False)
