"""The bounce tests' settings: a bounce address, so VERP tokens are read."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import apply_env

CORPUS = Path(__file__).parent.parent / "fixtures" / "bounces"
BOUNCE_ADDRESS = "bounces@news.example.org"


def fixture(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


@pytest.fixture
def bounce_env(monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str]) -> None:
    apply_env(monkeypatch, NEWSLETTER_BOUNCE_ADDRESS=BOUNCE_ADDRESS)
