"""`newsletter db ...`: the database schema."""

from __future__ import annotations

from typing import Annotated

import typer

from newsletter import db
from newsletter.cli.common import console, user_errors

app = typer.Typer(no_args_is_help=True, help="Database schema.")


@app.command("upgrade")
@user_errors
def db_upgrade(
    revision: Annotated[
        str, typer.Option(help="The schema version to reach; head is the latest.")
    ] = "head",
) -> None:
    """Create or migrate the schema to the latest version."""
    db.upgrade(revision=revision)
    console.print(f"database at [bold]{revision}[/]")
