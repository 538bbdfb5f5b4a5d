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
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from newsletter import db
from newsletter.config import get_settings
from newsletter.errors import InvalidInput, NotFound

app = typer.Typer(no_args_is_help=True, help="Per-tag email digests on each reader's cadence.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
posts_app = typer.Typer(no_args_is_help=True, help="Posts and their tags.")
tags_app = typer.Typer(no_args_is_help=True, help="Tags readers can follow.")
subscribers_app = typer.Typer(no_args_is_help=True, help="Subscribers and their preferences.")
digests_app = typer.Typer(no_args_is_help=True, help="Planning and sending digests.")
tokens_app = typer.Typer(no_args_is_help=True, help="Bearer tokens for the REST API.")
app.add_typer(db_app, name="db")
app.add_typer(posts_app, name="posts")
app.add_typer(tags_app, name="tags")
app.add_typer(subscribers_app, name="subscribers")
app.add_typer(digests_app, name="digests")
app.add_typer(tokens_app, name="tokens")

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
        except ValueError as exc:
            # Settings that fail validation (a bad environment variable) land here.
            if type(exc).__name__ == "ValidationError":
                err_console.print(f"[bold red]configuration error:[/] {exc}", highlight=False)
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
                "yes" if p.planned_at else "no",
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
    from sqlalchemy import func, select

    from newsletter.models import Tag, post_tags
    from subscribers.models import subscriber_tags

    posts = select(func.count()).where(post_tags.c.tag_id == Tag.id).scalar_subquery()
    readers = select(func.count()).where(subscriber_tags.c.tag_id == Tag.id).scalar_subquery()
    table = Table("slug", "name", "posts", "followers")
    with db.session_scope() as session:
        for slug, name, n_posts, n_readers in session.execute(
            select(Tag.slug, Tag.name, posts, readers).order_by(Tag.slug)
        ):
            table.add_row(slug, name, str(n_posts), str(n_readers))
    console.print(table)


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
    if settings.broker_url:
        console.print(f"{summary.batches} send batches handed to the workers", highlight=False)


# -- tokens -----------------------------------------------------------------------


@tokens_app.command("create")
@user_errors
def tokens_create(name: Annotated[str, typer.Argument(help="Who or what will use it.")]) -> None:
    """Create an API token; it is printed once and stored only as a hash."""
    from newsletter.apitokens import create_token

    with db.session_scope() as session:
        plain, row = create_token(session, name)
        token_id = row.id
    err_console.print(f"token #{token_id} for {name!r}; keep it now, it is not shown again:")
    print(plain)


@tokens_app.command("list")
@user_errors
def tokens_list() -> None:
    """Every token, without its secret."""
    from newsletter.apitokens import list_tokens

    table = Table("id", "name", "prefix", "created", "last used", "revoked")
    with db.session_scope() as session:
        for t in list_tokens(session):
            table.add_row(
                str(t.id),
                t.name,
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


# -- serve and demo ---------------------------------------------------------------


@app.command("serve")
@user_errors
def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the web app (subscriber pages and API)."""
    import uvicorn

    uvicorn.run("newsletter.web.app:create_app", factory=True, host=host, port=port)


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


def main() -> None:
    app()
