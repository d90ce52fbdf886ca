#!/usr/bin/env bash
# The main job (README "Set up and run"): the example project's spiders against the bundled
# demo stream server, writing to the default embedded store, then a summary.
# Creates .venv if needed and installs the package first. Extra arguments go to
# example_project/run_demo.py (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Install only when the packaging changed since the last install (a stamp in .venv).
stamp=.venv/.scrapy-sse-demo-installed
wanted=$(cat pyproject.toml setup.py 2>/dev/null | cksum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e .
  echo "$wanted" > "$stamp"
fi
exec .venv/bin/python example_project/run_demo.py "$@"
