"""`newsletter tags ...`: the tags readers can follow."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from newsletter import db
from newsletter.cli.common import YesOption, confirm_or_stop, console, print_table, user_errors
from newsletter.errors import InvalidInput

app = typer.Typer(no_args_is_help=True, help="Tags readers can follow.")


@app.command("add")
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


@app.command("list")
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
    print_table(table, "no tags yet: `newsletter tags add NAME` creates one")


@app.command("remove")
@user_errors
def tags_remove(
    tag: Annotated[str, typer.Argument(help="The tag's name or slug.")],
    yes: YesOption = False,
) -> None:
    """Delete a tag: its posts lose it and its followers stop following it (asks first)."""
    from newsletter.tags import feeds_adding, find_tag, tag_summary

    with db.session_scope() as session:
        found = find_tag(session, tag)
        summary = tag_summary(session, found)
        slug, feeds = found.slug, [f.url for f in feeds_adding(session, found)]
    question = (
        f"Delete the tag {slug!r}? It is on {summary.posts} posts and "
        f"{summary.followers} readers follow it; they stop following it."
    )
    if feeds:
        question += f" {len(feeds)} feed(s) add it to their posts and will bring it back."
    confirm_or_stop(question, yes)
    with db.session_scope() as session:
        session.delete(find_tag(session, slug))
    console.print(f"removed the tag {slug}", highlight=False)


@app.command("rename")
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


@app.command("merge")
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
