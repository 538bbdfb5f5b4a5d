#!/usr/bin/env bash
# Install everything and run the whole suite: lint, format check, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest -q "$@"
