"""`newsletter tokens ...`: bearer tokens for the REST API."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from newsletter import db
from newsletter.cli.common import console, err_console, user_errors

app = typer.Typer(no_args_is_help=True, help="Bearer tokens for the REST API.")


@app.command("create")
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


@app.command("list")
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


@app.command("revoke")
@user_errors
def tokens_revoke(token_id: int) -> None:
    """Revoke a token at once."""
    from newsletter.apitokens import revoke_token

    with db.session_scope() as session:
        revoke_token(session, token_id)
    console.print(f"token #{token_id} revoked")
