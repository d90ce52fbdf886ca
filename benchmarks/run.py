"""Entry point: ``python benchmarks/run.py [--quick] [--only parse|e2e]`` (see ``--help``).

A script rather than ``python -m`` so the command is the one people remember; it puts
the repository root on ``sys.path`` so ``scrapy_sse`` and ``benchmarks`` import from
this checkout without installing anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _main() -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(_main())
