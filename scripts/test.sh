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
# the CPU; the fault tests are kept together on one worker (tests/conftest.py). The
# end-to-end tests, which drive a real Celery worker through the shared Redis, run
# after them in one process of their own.
.venv/bin/pytest -q -n 2 --dist loadgroup -m "not e2e" "$@"
.venv/bin/pytest -q -m e2e "$@"
