#!/usr/bin/env bash
# The test command (README "Set up and run"; .ci/run calls exactly this).
# Creates .venv if needed, installs the package with its test extras, checks lint and
# types, then runs the whole suite. Tests that need PostgreSQL, Redis or ClickHouse skip
# with a reason when those are not running, unless SCRAPY_SSE_REQUIRE_SERVICES=1.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
