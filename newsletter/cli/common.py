"""What every command group shares: the consoles, error handling, --now and --verbose.

Errors go to stderr with exit status 2 and change nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
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
from typer.core import TyperOption

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


_value_type = TyperOption.display_type_rich


def _flag_type(option: TyperOption, ctx: typer.Context) -> str | None:
    """A flag takes no value, so help names no type for it: Typer's rich help otherwise
    prints `<bool>` beside every flag (--help included), as if it wanted an argument."""
    if option.is_flag or option.count:
        return None
    return _value_type(option, ctx)


# Once, for every command (ours and Typer's own --help and completion options).
setattr(TyperOption, "display_type_rich", _flag_type)  # noqa: B010 (a method replaced)


def parse_now(value: str | None) -> dt.datetime:
    from newsletter.posts import parse_datetime

    return parse_datetime(value, db.utcnow())


class _CommandLog(RichHandler):
    """The log handler a command installs with --verbose (a later run replaces it)."""


class _Quiet(logging.NullHandler):
    """Without --verbose: drops every record, and keeps Python's last-resort handler
    from printing warnings on stderr."""


def setup(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show log lines (on stderr) as work goes on.")
    ] = False,
) -> None:
    """Log lines go to stderr and only with --verbose: a command's own output (stdout, or
    the lines it prints on stderr) is never interleaved with them."""
    # Library warnings (SQLAlchemy's, ...) are log lines too: shown with the rest.
    logging.captureWarnings(True)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _CommandLog | _Quiet)]:
        root.removeHandler(handler)
    if verbose:
        root.addHandler(_CommandLog(console=err_console, show_path=False))
        root.setLevel(logging.INFO)
    else:
        root.addHandler(_Quiet())


def interactive() -> bool:
    """Whether someone is at a terminal to answer a question."""
    return sys.stdin.isatty()


def confirm_or_stop(question: str, yes: bool) -> None:
    """Ask before something that cannot be undone; --yes answers for scripts.

    Without a terminal and without --yes the command refuses (exit status 2) rather
    than guess; a "no" stops it with exit status 1 and nothing changed.
    """
    if yes:
        return
    if not interactive():
        err_console.print(
            f'[bold red]error:[/] no terminal to ask "{question}": nothing was changed; '
            "add --yes to go ahead",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)
    if not typer.confirm(question, default=False, err=True):
        err_console.print("nothing changed", highlight=False)
        raise typer.Exit(1)


YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking first.")]


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


def print_table(table: Table, empty: str) -> None:
    """A list, or what to say when it has nothing in it (never an empty frame)."""
    console.print(table if table.rows else empty, highlight=False)


def print_columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Rows as aligned plain columns, one line each: what a long page needs (a rich
    table measures and wraps every cell, seconds for a thousand rows), and what grep,
    cut and awk read."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for line in (header, *rows):
        text = "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        console.out(text.rstrip(), highlight=False)


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
