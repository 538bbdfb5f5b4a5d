"""What every command group shares: the consoles, error handling, --now and --verbose.

Errors go to stderr with exit status 2 and change nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from sqlalchemy.exc import DBAPIError

from newsletter import db
from newsletter.config import describe_errors
from newsletter.errors import InvalidInput, NotFound

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
        except DBAPIError as exc:
            if not db.missing_schema(exc):
                raise
            err_console.print(
                "[bold red]error:[/] the database has no tables for this yet (a new database, "
                "or an older schema): run `newsletter db upgrade` first",
                highlight=False,
            )
            raise typer.Exit(2) from None
        except ValueError as exc:
            # Settings that fail validation (a bad environment variable) land here.
            if isinstance(exc, ValidationError):
                # Named variables and reasons only: the values may be secrets.
                message = describe_errors(exc)
                err_console.print(f"[bold red]configuration error:[/] {message}", highlight=False)
                raise typer.Exit(2) from None
            raise

    return wrapper  # type: ignore[return-value]


def parse_now(value: str | None) -> dt.datetime:
    from newsletter.posts import parse_datetime

    return parse_datetime(value, db.utcnow())


def setup(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )


def count_table(
    rows: Iterable[tuple[str, int]],
    title: str | None = None,
    column: str = "count",
    label: str = "",
) -> Table:
    """A summary: one labelled count a row."""
    table = Table(label, column, title=title)
    for label, value in rows:
        table.add_row(label, str(value))
    return table


def stderr_progress(label: ProgressColumn) -> Progress:
    """A progress bar on stderr, shown only at a terminal and gone when done."""
    return Progress(
        label,
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not sys.stderr.isatty(),
    )


def described_progress() -> Progress:
    return stderr_progress(TextColumn("[progress.description]{task.description}"))
