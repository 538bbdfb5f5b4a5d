"""`newsletter users ...`: the console's staff accounts from the command line.

The first admin can only be made here; after that admins can also use /admin/staff.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from newsletter import db
from newsletter.cli.common import console, print_table, user_errors
from newsletter.console import services
from newsletter.errors import InvalidInput
from subscribers.services import normalize_email

app = typer.Typer(no_args_is_help=True, help="Staff accounts for the console at /admin/.")

CLI_ACTOR = "(command line)"


def read_password(from_stdin: bool) -> str:
    """One line from stdin, or typed twice (hidden) at a terminal."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise InvalidInput("--password-stdin: nothing was read from standard input")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise InvalidInput(
            "standard input is not a terminal: pass the password with --password-stdin"
        )
    first = typer.prompt("Password", hide_input=True)
    services.check_password(first)
    second = typer.prompt("Repeat the password", hide_input=True)
    if first != second:
        raise InvalidInput("the two passwords differ")
    return str(first)


@app.command("create")
@user_errors
def users_create(
    email: Annotated[str, typer.Argument(help="The person's email address (their login).")],
    role: Annotated[str, typer.Option(help="admin or editor.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Create a staff account; the password is prompted for, or read from stdin."""
    staff_role = services.parse_role(role)
    address = normalize_email(email)
    password = services.check_password(read_password(password_stdin))
    with db.session_scope() as session:
        user = services.create_user(session, address, staff_role, password)
        services.audit(
            session,
            "staff_created",
            actor_email=CLI_ACTOR,
            target=user.email,
            detail={"role": user.role.value},
        )
    console.print(f"created {staff_role.value} [bold]{address}[/]", highlight=False)


@app.command("list")
@user_errors
def users_list() -> None:
    """Every staff account, by address."""
    table = Table("email", "role", "created", "last sign-in")
    with db.session_scope() as session:
        for user in services.list_users(session):
            table.add_row(
                user.email,
                user.role.value,
                f"{user.created_at:%Y-%m-%d %H:%M}",
                f"{user.last_login_at:%Y-%m-%d %H:%M}" if user.last_login_at else "never",
            )
    print_table(table, "no staff accounts yet")


@app.command("remove")
@user_errors
def users_remove(email: Annotated[str, typer.Argument(help="The account's address.")]) -> None:
    """Delete a staff account and end its sessions; the audit log keeps its address."""
    with db.session_scope() as session:
        user = services.get_user(session, email)
        address, role = user.email, user.role.value
        services.remove_user(session, user)
        services.audit(
            session, "staff_removed", actor_email=CLI_ACTOR, target=address, detail={"role": role}
        )
    console.print(f"removed [bold]{address}[/]", highlight=False)
