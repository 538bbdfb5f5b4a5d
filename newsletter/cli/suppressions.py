"""`newsletter suppressions ...`: addresses that are never mailed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from newsletter import db
from newsletter.cli.common import console, print_table, user_errors
from subscribers.models import SubscriberStatus, SuppressionReason

app = typer.Typer(no_args_is_help=True, help="Addresses that are never mailed.")

EmailArgument = Annotated[str, typer.Argument(metavar="EMAIL", help="The address.")]


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
    print_table(table, "no suppressed addresses")


@app.command("add")
@user_errors
def suppressions_add(
    email: EmailArgument,
    reason: Annotated[
        SuppressionReason, typer.Option(help="Why the address gets no more mail.")
    ] = SuppressionReason.MANUAL,
) -> None:
    """Stop all mail to an address (a complaint, a request by letter, ...)."""
    from subscribers.services import normalize_email
    from subscribers.suppression import suppress

    address = normalize_email(email)
    with db.session_scope() as session:
        suppress(session, address, reason, "added by an admin", actor="an admin (CLI)")
    console.print(f"{address} suppressed ({reason.value})", highlight=False)


# What a lifted address's reader is left as, and what would change it.
_LEFT_AS = {
    SubscriberStatus.ACTIVE: "is active: mail to them starts again with their next digest",
    SubscriberStatus.PAUSED: (
        "is paused: nothing goes out until `newsletter subscribers edit {email} "
        "--status active` or they resume from their preferences"
    ),
    SubscriberStatus.PENDING: "has not confirmed yet: nothing goes out until they do",
    SubscriberStatus.UNSUBSCRIBED: (
        "stays unsubscribed: `newsletter subscribers edit {email} --status active` "
        "subscribes them again, or they sign up again themselves"
    ),
}


@app.command("lift")
@user_errors
def suppressions_lift(email: EmailArgument) -> None:
    """Allow mail to an address again, on purpose, and say what state its reader is in."""
    from sqlalchemy import select

    from subscribers.models import Subscriber
    from subscribers.services import normalize_email
    from subscribers.suppression import lift

    address = normalize_email(email)
    with db.session_scope() as session:
        lifted = lift(session, address, by="an admin (CLI)")
        reason = lifted.reason.value
        status = session.scalar(select(Subscriber.status).where(Subscriber.email == address))
    console.print(f"{address} may be mailed again (was {reason})", highlight=False)
    if status is None:
        console.print("no reader has this address: it can be subscribed or imported again")
    else:
        left = _LEFT_AS[status].format(email=address)
        console.print(f"the reader {left}", highlight=False)
