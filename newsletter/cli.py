"""The `newsletter` command. Errors go to stderr with exit status 2 and change nothing."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import DBAPIError

from newsletter import db
from newsletter.config import describe_errors, get_settings
from newsletter.errors import InvalidInput, NotFound

app = typer.Typer(no_args_is_help=True, help="Per-tag email digests on each reader's cadence.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
posts_app = typer.Typer(no_args_is_help=True, help="Posts and their tags.")
tags_app = typer.Typer(no_args_is_help=True, help="Tags readers can follow.")
subscribers_app = typer.Typer(no_args_is_help=True, help="Subscribers and their preferences.")
digests_app = typer.Typer(no_args_is_help=True, help="Planning and sending digests.")
tokens_app = typer.Typer(no_args_is_help=True, help="Bearer tokens for the REST API.")
suppressions_app = typer.Typer(no_args_is_help=True, help="Addresses that are never mailed.")
app.add_typer(db_app, name="db")
app.add_typer(posts_app, name="posts")
app.add_typer(tags_app, name="tags")
app.add_typer(subscribers_app, name="subscribers")
app.add_typer(digests_app, name="digests")
app.add_typer(tokens_app, name="tokens")
feeds_app = typer.Typer(no_args_is_help=True, help="RSS/Atom feeds polled for new posts.")
app.add_typer(feeds_app, name="feeds")
app.add_typer(suppressions_app, name="suppressions")

# Piped output (logs, scripts) gets wide tables instead of wrapped e-mail addresses.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn a user's mistake into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (InvalidInput, NotFound) as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except DBAPIError as exc:
            if not db.missing_schema(exc):
                raise
            err_console.print(
                "[bold red]error:[/] the database has no tables for this yet (a new database, "
                "or an older schema): run `newsletter db upgrade` first",
                highlight=False,
            )
            raise typer.Exit(2) from None
        except ValueError as exc:
            # Settings that fail validation (a bad environment variable) land here.
            if isinstance(exc, ValidationError):
                # Named variables and reasons only: the values may be secrets.
                message = describe_errors(exc)
                err_console.print(f"[bold red]configuration error:[/] {message}", highlight=False)
                raise typer.Exit(2) from None
            raise

    return wrapper  # type: ignore[return-value]


def parse_now(value: str | None) -> dt.datetime:
    from newsletter.posts import parse_datetime

    return parse_datetime(value, db.utcnow())


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )


# -- db ---------------------------------------------------------------------------


@db_app.command("upgrade")
@user_errors
def db_upgrade(revision: str = "head") -> None:
    """Create or migrate the schema to the latest version."""
    db.upgrade(revision=revision)
    console.print(f"database at [bold]{revision}[/]")


# -- posts ------------------------------------------------------------------------


@posts_app.command("add")
@user_errors
def posts_add(
    title: Annotated[str, typer.Option(help="Post title (plain text).")],
    url: Annotated[str, typer.Option(help="Absolute http(s) URL of the post.")],
    tags: Annotated[str, typer.Option(help='Comma-separated tags, e.g. "Politics, Health".')],
    summary: Annotated[str, typer.Option(help="Short summary (HTML is reduced to text).")] = "",
    body_file: Annotated[
        Path | None, typer.Option(help="File holding the body HTML (sanitised).")
    ] = None,
    published_at: Annotated[
        str | None, typer.Option(help="ISO 8601 publication date (display only).")
    ] = None,
    author: Annotated[str | None, typer.Option(help="Author name.")] = None,
    guid: Annotated[str | None, typer.Option(help="Stable identity; defaults to the URL.")] = None,
) -> None:
    """Add a post; its immediate readers are planned once it is committed."""
    from newsletter.posts import PostInput, add_post

    body = ""
    if body_file is not None:
        try:
            body = body_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read body file {str(body_file)!r}: {exc}") from None
    data = PostInput(title, url, tags, summary, body, author, published_at, guid)
    with db.session_scope() as session:
        post = add_post(session, data)
        post_id, title_out = post.id, post.title
    console.print(f"added post [bold]#{post_id}[/] {title_out}", highlight=False)


@posts_app.command("list")
@user_errors
def posts_list(limit: int = 50) -> None:
    """The most recent posts."""
    from newsletter.posts import recent_posts

    table = Table("id", "title", "tags", "published", "received", "planned")
    with db.session_scope() as session:
        for p in recent_posts(session, limit):
            table.add_row(
                str(p.id),
                p.title,
                ", ".join(t.name for t in p.tags),
                f"{p.published_at:%Y-%m-%d %H:%M}",
                f"{p.received_at:%Y-%m-%d %H:%M}",
                f"held by {p.held_by}"
                if p.held_at
                else f"failed: {p.failed_reason}"
                if p.failed_at
                else "yes"
                if p.planned_at
                else "no",
            )
    console.print(table)


# -- tags -------------------------------------------------------------------------


@tags_app.command("add")
@user_errors
def tags_add(
    names: Annotated[str, typer.Argument(help='One or more, e.g. "Politics, Health".')],
) -> None:
    """Create tags so readers can follow them before any post carries them."""
    from newsletter.tags import get_or_create_tags, parse_tag_names

    parsed = parse_tag_names(names)
    if not parsed:
        raise InvalidInput("give at least one tag name")
    with db.session_scope() as session:
        tags = get_or_create_tags(session, parsed)
        out = [f"{t.name} ({t.slug})" for t in tags]
    console.print("tags: " + ", ".join(out), highlight=False)


@tags_app.command("list")
@user_errors
def tags_list() -> None:
    """Every tag with its number of posts and followers."""
    from newsletter.tags import tag_summaries

    table = Table("slug", "name", "posts", "followers", "listed")
    with db.session_scope() as session:
        for row in tag_summaries(session):
            table.add_row(
                row.tag.slug,
                row.tag.name,
                str(row.posts),
                str(row.followers),
                "yes" if row.tag.listed else "no",
            )
    console.print(table)


@tags_app.command("rename")
@user_errors
def tags_rename(
    tag: Annotated[str, typer.Argument(help="The tag's name or slug.")],
    name: Annotated[str, typer.Argument(help="Its new name; the slug follows it.")],
) -> None:
    """Rename a tag; its posts, its followers and their dates stay with it."""
    from newsletter.tags import find_tag, rename_tag

    with db.session_scope() as session:
        found = find_tag(session, tag)
        old_slug = rename_tag(session, found, name)
        line = f"renamed {old_slug} to {found.name} ({found.slug})"
    console.print(line, highlight=False)


@tags_app.command("merge")
@user_errors
def tags_merge(
    source: Annotated[str, typer.Argument(help="The tag merged away (it is deleted).")],
    into: Annotated[str, typer.Argument(help="The tag that gets its posts and followers.")],
) -> None:
    """Move every post and follower of SOURCE to INTO, then delete SOURCE; a reader
    following both keeps the earlier date they started following."""
    from newsletter.tags import find_tag, merge_tags

    with db.session_scope() as session:
        report = merge_tags(session, find_tag(session, source), find_tag(session, into))
    console.print(
        f"merged {report.source} into {report.target}: {report.posts_moved} posts and "
        f"{report.followers_moved} followers moved, {report.followers_both} followed both",
        highlight=False,
    )


# -- subscribers ------------------------------------------------------------------


@subscribers_app.command("add")
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


@subscribers_app.command("list")
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


@subscribers_app.command("remove")
@user_errors
def subscribers_remove(email: str) -> None:
    """Delete a subscriber and their history."""
    from subscribers.services import remove_subscriber

    with db.session_scope() as session:
        remove_subscriber(session, email)
    console.print(f"removed {email}", highlight=False)


@subscribers_app.command("import")
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
    with (
        Progress(
            TextColumn("importing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=not sys.stderr.isatty(),
        ) as progress,
        db.session_scope() as session,
    ):
        task = progress.add_task("import", total=max(data.count(b"\n"), 1))
        report = import_csv(
            session,
            data,
            dry_run=dry_run,
            create_tags=create_tags,
            on_progress=lambda n: progress.advance(task, n),
        )
    summary = Table("", "rows", title="import (dry run: nothing written)" if dry_run else "import")
    for label, value in [
        ("rows read", report.rows),
        ("created" if not dry_run else "would be created", report.created),
        ("updated" if not dry_run else "would be updated", report.updated),
        ("unchanged", report.unchanged),
        ("rejected", len(report.rejected)),
    ]:
        summary.add_row(label, str(value))
    console.print(summary)
    if report.rejected:
        rejected = Table("line", "email", "reason", title="rejected rows")
        for row in report.rejected:
            rejected.add_row(str(row.line), row.email, row.reason)
        err_console.print(rejected)
        raise typer.Exit(1)


@subscribers_app.command("export")
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


@suppressions_app.command("list")
@user_errors
def suppressions_list() -> None:
    """Addresses that get no mail, and why."""
    from subscribers.suppression import list_all

    table = Table("email", "reason", "since", "detail")
    with db.session_scope() as session:
        for row in list_all(session):
            table.add_row(
                row.email, row.reason.value, f"{row.created_at:%Y-%m-%d}", row.detail or ""
            )
    console.print(table)


@suppressions_app.command("add")
@user_errors
def suppressions_add(
    email: str,
    reason: Annotated[
        str, typer.Option(help="hard_bounce|complaint|unsubscribed|manual")
    ] = "manual",
) -> None:
    """Stop all mail to an address (a complaint, a request by letter, ...)."""
    from subscribers.models import SuppressionReason
    from subscribers.services import normalize_email
    from subscribers.suppression import suppress

    try:
        why = SuppressionReason(reason)
    except ValueError:
        raise InvalidInput(f"unknown reason {reason!r}") from None
    with db.session_scope() as session:
        suppress(session, normalize_email(email), why, "added by an admin", actor="an admin (CLI)")
    console.print(f"{email} suppressed ({why.value})", highlight=False)


@suppressions_app.command("lift")
@user_errors
def suppressions_lift(email: str) -> None:
    """Allow mail to an address again, on purpose."""
    from subscribers.services import normalize_email
    from subscribers.suppression import lift

    with db.session_scope() as session:
        lift(session, normalize_email(email), by="an admin (CLI)")
    console.print(f"{email} may be mailed again", highlight=False)


# -- preview ----------------------------------------------------------------------


@app.command("preview")
@user_errors
def preview(
    out: Annotated[Path, typer.Option(help="Where to write the HTML.")],
    tags: Annotated[str | None, typer.Option(help="Tags of a hypothetical reader.")] = None,
    frequency: Annotated[str | None, typer.Option(help="immediate|daily|weekly")] = None,
    subscriber: Annotated[str | None, typer.Option(help="Preview this reader's digest.")] = None,
    now: Annotated[str | None, typer.Option(help="ISO instant to preview at.")] = None,
) -> None:
    """Write the digest a reader would get now (or recent posts for the tags)."""
    from newsletter.preview import build_preview

    with db.session_scope() as session:
        result = build_preview(session, tags, frequency, subscriber, parse_now(now))
        titles = [p.title for p in result.posts]
    try:
        out.write_text(result.html, encoding="utf-8")
        out.with_suffix(".txt").write_text(result.text, encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write {str(out)!r}: {exc}") from None
    kind = "pending digest" if result.pending else "recent posts (nothing pending)"
    console.print(f"[bold]{result.subject}[/]  ({kind}, {len(titles)} posts)", highlight=False)
    console.print(f"wrote {out} and {out.with_suffix('.txt')}", highlight=False)


# -- digests ----------------------------------------------------------------------


@digests_app.command("run")
@user_errors
def digests_run(
    now: Annotated[str | None, typer.Option(help="ISO instant to run at (default: now).")] = None,
) -> None:
    """Plan and send everything due at that moment, then print a summary."""
    from newsletter.pipeline import run_due

    settings = get_settings()
    instant = parse_now(now)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as progress:
        task = progress.add_task("sending", total=None)

        def on_total(total: int) -> None:
            progress.update(task, total=total)

        def on_progress(done: int) -> None:
            progress.advance(task, done)

        summary = run_due(instant, on_total=on_total, on_progress=on_progress)
    table = Table("", "count", title=f"digests run at {instant:%Y-%m-%d %H:%M} UTC")
    for label, value in summary.rows():
        table.add_row(label, str(value))
    console.print(table)
    # Failures are reported, not fatal: everything else went out, so the exit status stays 0.
    for failure in summary.plan.failures:
        err_console.print(f"[bold red]failed:[/] {failure}", highlight=False, soft_wrap=True)
    if settings.broker_url:
        console.print(f"{summary.batches} send batches handed to the workers", highlight=False)


# -- tokens -----------------------------------------------------------------------


@tokens_app.command("create")
@user_errors
def tokens_create(
    name: Annotated[str, typer.Argument(help="Who or what will use it.")],
    role: Annotated[
        str,
        typer.Option(
            help="What it may reach, as the console's roles: admin (everything) or "
            "editor (posts, tags, previews, archive, statistics)."
        ),
    ] = "admin",
) -> None:
    """Create an API token; it is printed once and stored only as a hash."""
    from newsletter.apitokens import create_token

    with db.session_scope() as session:
        plain, row = create_token(session, name, role=role)
        token_id, token_role = row.id, row.role
    err_console.print(
        f"{token_role} token #{token_id} for {name!r}; keep it now, it is not shown again:"
    )
    print(plain)


@tokens_app.command("list")
@user_errors
def tokens_list() -> None:
    """Every token, without its secret."""
    from newsletter.apitokens import list_tokens

    table = Table("id", "name", "role", "prefix", "created", "last used", "revoked")
    with db.session_scope() as session:
        for t in list_tokens(session):
            table.add_row(
                str(t.id),
                t.name,
                t.role,
                t.prefix + "…",
                f"{t.created_at:%Y-%m-%d %H:%M}",
                f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "-",
                f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "-",
            )
    console.print(table)


@tokens_app.command("revoke")
@user_errors
def tokens_revoke(token_id: int) -> None:
    """Revoke a token at once."""
    from newsletter.apitokens import revoke_token

    with db.session_scope() as session:
        revoke_token(session, token_id)
    console.print(f"token #{token_id} revoked")


# -- feeds ------------------------------------------------------------------------


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


@feeds_app.command("add")
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


@feeds_app.command("poll")
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


@feeds_app.command("import")
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


@feeds_app.command("list")
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
    console.print(table)


@feeds_app.command("remove")
@user_errors
def feeds_remove(feed: Annotated[str, typer.Argument(help="A feed's id or URL.")]) -> None:
    """Stop polling a feed; the posts it brought stay."""
    from newsletter.feeds import services as feeds

    with db.session_scope() as session:
        url = feeds.remove_feed(session, feed)
    console.print(f"removed feed {url}", highlight=False)


# -- serve and demo ---------------------------------------------------------------


@app.command("serve")
@user_errors
def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the web app (subscriber pages and API)."""
    import uvicorn

    from newsletter.config import settings_or_exit
    from newsletter.web.app import server_log_config

    # Bad settings stop the server here, not as an error on every request.
    settings_or_exit()
    uvicorn.run(
        "newsletter.web.app:create_app",
        factory=True,
        host=host,
        port=port,
        # The app decides who the client is (NEWSLETTER_TRUSTED_PROXIES); uvicorn's
        # own default would believe X-Forwarded-For from any local peer.
        proxy_headers=False,
        forwarded_allow_ips="",
        log_config=server_log_config(),
    )


@app.command("demo")
@user_errors
def demo(
    directory: Annotated[Path, typer.Option(help="Where outbox/ and the demo database go.")] = Path(
        "."
    ),
) -> None:
    """Run the whole pipeline on SQLite with a built-in SMTP server; mail lands in ./outbox/."""
    from newsletter.demo import run_demo

    run_demo(directory, console)


# The console's staff accounts; imported last because that module uses `user_errors`.
from newsletter.console.cli import users_app  # noqa: E402

app.add_typer(users_app, name="users")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
