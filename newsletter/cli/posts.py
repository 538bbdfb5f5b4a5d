"""`newsletter posts ...`: posts and their tags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from newsletter import db
from newsletter.cli.common import console, user_errors
from newsletter.errors import InvalidInput

app = typer.Typer(no_args_is_help=True, help="Posts and their tags.")


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


@app.command("list")
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
