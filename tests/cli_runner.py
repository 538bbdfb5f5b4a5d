"""The `newsletter` command run in-process, and row counts to prove what it wrote."""

from __future__ import annotations

from sqlalchemy import func, select
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.db import session_scope

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `newsletter ARGS...`."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def count(model: type) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)
