"""docker-compose.yml cannot run here; prove every service's command exists in the project."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import typer.main
import yaml

from newsletter.cli import app

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = {"migrate", "web", "worker", "beat"}


def compose() -> dict[str, dict[str, object]]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services: dict[str, dict[str, object]] = data["services"]
    return services


def test_compose_has_the_production_services() -> None:
    assert set(compose()) >= {"postgres", "redis", "mailpit", *APP_SERVICES}


def test_every_newsletter_command_exists() -> None:
    root = typer.main.get_command(app)
    for name in APP_SERVICES:
        command = compose()[name]["command"]
        argv = command if isinstance(command, list) else shlex.split(str(command))
        if argv[0] != "newsletter":
            continue
        node: Any = root
        for word in argv[1:]:
            if word.startswith("-"):
                break
            children = getattr(node, "commands", None)
            assert children is not None, f"{argv} goes past a leaf command"
            assert word in children, f"{name}: no command {word!r} in {argv}"
            node = children[word]
        options = {opt for param in node.params for opt in getattr(param, "opts", [])}
        for word in argv[1:]:
            if word.startswith("--"):
                assert word.split("=")[0] in options, f"{name}: unknown option {word}"


def test_celery_services_point_at_the_worker_app() -> None:
    import worker

    for name in ("worker", "beat"):
        argv = compose()[name]["command"]
        assert isinstance(argv, list)
        assert argv[:3] == ["celery", "-A", "worker"] and argv[3] == name
    assert "worker.tasks.plan_due_digests" in worker.app.tasks
    assert worker.app.conf.beat_schedule["plan-due-digests"]["task"] in worker.app.tasks


def test_services_get_the_contract_variables() -> None:
    env = compose()["worker"]["environment"]
    assert isinstance(env, dict)
    for key in ("DATABASE_URL", "BROKER_URL", "SMTP_URL", "BASE_URL", "FROM", "SECRET_KEY"):
        assert f"NEWSLETTER_{key}" in env
    assert str(env["NEWSLETTER_DATABASE_URL"]).startswith("postgresql")
    assert str(env["NEWSLETTER_BROKER_URL"]).startswith("redis://")
