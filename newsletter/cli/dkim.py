"""`newsletter dkim ...`: signing keys and the DNS records that publish them."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="DKIM signing keys and their DNS records.")
