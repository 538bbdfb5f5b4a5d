"""Every command's --help, as a user reads it: no type beside a flag, every option explained."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.core import TyperArgument, TyperOption

from newsletter.cli import app
from tests.cli_runner import run


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


ROOT = typer.main.get_command(app)
COMMANDS = list(_commands(ROOT))


def _command(path: tuple[str, ...]) -> Any:
    command: Any = ROOT
    for name in path:
        command = command.commands[name]
    return command


def test_the_walk_reaches_every_group() -> None:
    groups = {path[0] for path in COMMANDS if path}
    assert {"subscribers", "dkim", "bounces", "doctor", "deliveries", "tokens"} <= groups


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "newsletter")
def test_help_names_no_bool_and_explains_every_option(path: tuple[str, ...]) -> None:
    code, out, err = run(*path, "--help")
    assert code == 0, err
    assert "Usage" in out and "<bool>" not in out
    missing = [
        param.name
        for param in _command(path).params
        if isinstance(param, TyperOption | TyperArgument)
        and not getattr(param, "hidden", False)
        and not (getattr(param, "help", None) or "").strip()
    ]
    assert missing == [], f"{' '.join(path)}: no help text for {missing}"
