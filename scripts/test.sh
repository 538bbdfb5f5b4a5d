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
# Two workers (pytest-xdist): tests wait on databases, SMTP and Chromium more than on
# the CPU; tests sharing a service are kept on one worker (tests/conftest.py).
.venv/bin/pytest -q -n 2 --dist loadgroup "$@"
