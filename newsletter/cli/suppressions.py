"""`newsletter suppressions ...`: addresses that are never mailed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from newsletter import db
from newsletter.cli.common import console, user_errors
from newsletter.errors import InvalidInput

app = typer.Typer(no_args_is_help=True, help="Addresses that are never mailed.")


@app.command("list")
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


@app.command("add")
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


@app.command("lift")
@user_errors
def suppressions_lift(email: str) -> None:
    """Allow mail to an address again, on purpose."""
    from subscribers.services import normalize_email
    from subscribers.suppression import lift

    with db.session_scope() as session:
        lift(session, normalize_email(email), by="an admin (CLI)")
    console.print(f"{email} may be mailed again", highlight=False)
