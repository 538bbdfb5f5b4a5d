"""`newsletter tokens ...`: bearer tokens for the REST API."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from newsletter import db
from newsletter.cli.common import (
    YesOption,
    confirm_or_stop,
    console,
    err_console,
    print_table,
    user_errors,
)
from newsletter.console.models import StaffRole

app = typer.Typer(no_args_is_help=True, help="Bearer tokens for the REST API.")


@app.command("create")
@user_errors
def tokens_create(
    name: Annotated[str, typer.Argument(help="Who or what will use it.")],
    role: Annotated[
        StaffRole,
        typer.Option(
            help="What it may reach, as the console's roles: admin (everything) or "
            "editor (posts, tags, previews, archive, statistics)."
        ),
    ] = StaffRole.ADMIN,
) -> None:
    """Create an API token; it is printed once and stored only as a hash."""
    from newsletter.apitokens import create_token

    with db.session_scope() as session:
        plain, row = create_token(session, name, role=role.value)
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
    print_table(table, "no API tokens yet")


@app.command("revoke")
@user_errors
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The token's id (see `list`).")],
    yes: YesOption = False,
) -> None:
    """Revoke a token at once: whatever uses it is refused from then on (asks first)."""
    from newsletter.apitokens import revoke_token
    from newsletter.errors import NotFound
    from newsletter.models import ApiToken

    with db.session_scope() as session:
        row = session.get(ApiToken, token_id)
        if row is None:
            raise NotFound(f"no API token #{token_id}")
        name, revoked = row.name, row.revoked_at is not None
    if revoked:
        console.print(f"token #{token_id} ({name}) was already revoked", highlight=False)
        return
    confirm_or_stop(f"Revoke token #{token_id} ({name})? What uses it stops working.", yes)
    with db.session_scope() as session:
        revoke_token(session, token_id)
    console.print(f"token #{token_id} revoked")
