"""Run a real Scrapy crawl in a child process and collect what it produced.

A Twisted reactor cannot be restarted, so each crawl gets a fresh interpreter: this
is a real ``scrapy crawl`` in every respect (add-on, handler, middlewares, pipelines,
signals, stats), and a hung crawl cannot hang the test session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class CrawlResult:
    items: list[dict[str, Any]]
    stats: dict[str, Any]
    log: str
    returncode: int
    extra: dict[str, Any] = field(default_factory=dict)

    def stat(self, name: str, default: Any = 0) -> Any:
        return self.stats.get(name, default)

    def close_times(self) -> tuple[float, float, float]:
        """``time.monotonic()`` in the crawl process when the engine began closing the
        spider ("Closing spider"), when ``spider_closed`` was sent, and when the close
        was over ("Spider closed")."""
        times = self.extra.get("monotonic", {})
        missing = {"close_started", "spider_closed_signal", "close_finished"} - set(times)
        assert not missing, f"no monotonic reading for {sorted(missing)}:\n{self.log}"
        return times["close_started"], times["spider_closed_signal"], times["close_finished"]


def run_crawl(
    spider: str,
    *,
    settings: dict[str, Any] | None = None,
    args: dict[str, Any] | None = None,
    timeout: float = 90,
    reactorless: bool = False,
    workdir: Path | None = None,
) -> CrawlResult:
    """Crawl with ``tests.spiders.<spider>``; items are what reached the pipeline."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        config = {
            "spider": spider,
            "settings": settings or {},
            "args": args or {},
            "reactorless": reactorless,
            "items": str(out / "items.jsonl"),
            "stats": str(out / "stats.json"),
            "extra": str(out / "extra.json"),
        }
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.run(
            [sys.executable, "-m", "tests.crawl_main"],
            input=json.dumps(config),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=workdir or ROOT,
            check=False,
        )
        items_path = out / "items.jsonl"
        items = (
            [json.loads(line) for line in items_path.read_text().splitlines()]
            if items_path.exists()
            else []
        )
        stats_path = out / "stats.json"
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        extra_path = out / "extra.json"
        extra = json.loads(extra_path.read_text()) if extra_path.exists() else {}
        return CrawlResult(items, stats, proc.stdout + proc.stderr, proc.returncode, extra)
