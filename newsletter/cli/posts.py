"""`newsletter posts ...`: posts and their tags."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from sqlalchemy import select

from newsletter import db
from newsletter.cli.common import console, print_table, user_errors
from newsletter.errors import InvalidInput
from newsletter.models import Post

if TYPE_CHECKING:
    from newsletter.posts import PostInput

app = typer.Typer(no_args_is_help=True, help="Posts and their tags.")

# Addresses a dry run lists by name; the rest are counted.
SAMPLE = 50


@app.command("add")
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
    dry_run: Annotated[
        bool, typer.Option(help="Check the post and list who would get it; write nothing.")
    ] = False,
) -> None:
    """Add a post and mail its immediate readers; says how many it reached and how it went."""
    from newsletter.posts import PostInput, add_post

    body = ""
    if body_file is not None:
        try:
            body = body_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read body file {str(body_file)!r}: {exc}") from None
    data = PostInput(title, url, tags, summary, body, author, published_at, guid)
    if dry_run:
        _dry_run(data)
        return
    with db.session_scope() as session:
        post = add_post(session, data)
        post_id, title_out = post.id, post.title
        slugs = [t.slug for t in post.tags]
    # The commit above planned and (without a broker) sent the immediate readers' mail.
    console.print(f"added post [bold]#{post_id}[/] {title_out}", highlight=False)
    _report_outcome(post_id, slugs)


def _dry_run(data: PostInput) -> None:
    from newsletter.posts import DuplicatePost, check_post, post_audience

    checked = check_post(data)
    with db.session_scope() as session:
        existing = session.scalar(select(Post.id).where(Post.guid == checked.guid))
        if existing is not None:
            raise DuplicatePost(checked.guid, existing)
        audience = post_audience(session, list(checked.tag_names), sample=SAMPLE)
    console.print(
        f"dry run, nothing written: {checked.title!r} would go to "
        f"{_readers(audience.immediate_count)} at once, and to "
        f"{_readers(audience.in_digest)} in their next daily or weekly digest",
        highlight=False,
    )
    for address in audience.immediate:
        console.print(f"  {address}", highlight=False)
    if audience.immediate_count > len(audience.immediate):
        console.print(f"  ... and {audience.immediate_count - len(audience.immediate)} more")


def _report_outcome(post_id: int, slugs: list[str]) -> None:
    from newsletter.dispatch import tasks_run_in_process
    from newsletter.posts import post_audience, post_outcome

    with db.session_scope() as session:
        outcome = post_outcome(session, post_id)
        later = post_audience(session, slugs, sample=0).in_digest
    if not tasks_run_in_process():
        console.print(
            "the workers are mailing its immediate readers (`newsletter deliveries` "
            f"shows how it goes); it goes to {_readers(later)} in their next daily or "
            "weekly digest",
            highlight=False,
        )
        return
    parts = [f"{outcome.sent} sent", f"{outcome.deferred} deferred (retried later)"]
    parts.append(f"{outcome.failed} failed")
    if outcome.waiting:
        parts.append(f"{outcome.waiting} not sent yet")
    if outcome.skipped:
        parts.append(f"{outcome.skipped} skipped")
    console.print(
        f"reached {_readers(outcome.readers)} at once: {', '.join(parts)}; it goes to "
        f"{_readers(later)} in their next daily or weekly digest",
        highlight=False,
    )


def _readers(n: int) -> str:
    return f"{n} reader" if n == 1 else f"{n} readers"


@app.command("list")
@user_errors
def posts_list(
    limit: Annotated[int, typer.Option(min=1, help="How many posts to show.")] = 50,
) -> None:
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
    print_table(table, "no posts yet")
