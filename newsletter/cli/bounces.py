"""`newsletter bounces ...`: bounce and complaint reports read back in."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="Bounces and complaints read back in.")
