"""Entry point: ``python benchmarks/run.py [--quick] [--only parse|e2e]`` (see ``--help``).

A script rather than ``python -m`` so the command is the one people remember; it puts
the repository root on ``sys.path`` so ``scrapy_sse`` and ``benchmarks`` import from
this checkout without installing anything.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The peers measured in the same run (the ``bench`` extra).
PEERS = ("httpx", "httpx_sse", "sseclient", "ld_eventsource", "requests")


def _main() -> int:
    missing = [name for name in PEERS if find_spec(name) is None]
    if missing:
        print(
            f"The benchmarks measure peers that are not installed ({', '.join(missing)}): "
            "run .venv/bin/python -m pip install -e '.[bench]' first.",
            file=sys.stderr,
        )
        return 2
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(_main())
