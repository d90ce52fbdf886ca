"""Main job of the example project: run every spider against the demo server.

It starts ``demo_server.py`` on a free port in a background thread, runs the
``wikimedia``, ``prices``, ``chat`` and ``completions`` spiders together in one Scrapy process
for a bounded time each (``CLOSESPIDER_TIMEOUT``), stores their items in the
embedded default store, SQLite (``output/demo.sqlite3``, one table per spider,
through ``scrapy_sse.pipelines.SQLitePipeline``), and prints a summary.  It exits
non-zero when a spider produced no item, so it doubles as an end-to-end smoke test
that needs no network access::

    python example_project/run_demo.py --seconds 3

``--store postgres`` (``SSE_POSTGRES_DSN``, default the local ``test`` database),
``--store redis`` (``SSE_REDIS_URL``, one stream ``sse_demo:<spider>`` each) or
``--store jsonl`` (feed exports, ``output/<spider>.jsonl``) switch the store.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "output"
SPIDER_PATHS: dict[str, str] = {
    "wikimedia": "/v2/stream/recentchange",
    "prices": "/prices",
    "chat": "/v1/chat/completions",
    "completions": "",  # (its prompts name each provider's path)
}
#: The scrapy_sse stat counting events received (dispatched to the spider).
EVENT_COUNT_STAT = "sse/events"
STORES = ("sqlite", "postgres", "redis", "jsonl")
SQLITE_FILE = "demo.sqlite3"
EXIT_NO_ITEMS = 1
EXIT_CRAWL_FAILED = 2
EXIT_WATCHDOG = 3


def _prepare_imports() -> None:
    """Make ``sse_demo`` and ``scrapy_sse`` importable without installing them.

    The project directory holds ``sse_demo``; ``scrapy_sse`` is preferably the
    installed package, else the source checkout this example ships in.
    """
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    if importlib.util.find_spec("scrapy_sse") is None:
        sys.path.append(str(HERE.parent))
    # Ours, whatever the environment says: this script only makes sense with it.
    os.environ["SCRAPY_SETTINGS_MODULE"] = "sse_demo.settings"


@dataclass
class SpiderResult:
    """What the summary reports about one finished crawl."""

    name: str
    stats: dict[str, Any]
    output: Path
    store: str = "sqlite"

    @property
    def items(self) -> int:
        return int(self.stats.get("item_scraped_count", 0))

    @property
    def elapsed(self) -> float:
        return float(self.stats.get("elapsed_time_seconds") or 0.0)

    @property
    def events(self) -> int | None:
        value = self.stats.get(EVENT_COUNT_STAT)
        return value if isinstance(value, int) else None

    def rate(self, count: int | None) -> str:
        if count is None or self.elapsed <= 0:
            return "n/a"
        return f"{count / self.elapsed:.1f}"

    def stored(self) -> str:
        """What the store holds for this spider, read back from the store itself."""
        if self.store == "sqlite":
            if not self.output.exists():
                return f"{self.output}: missing"
            with sqlite3.connect(self.output) as db:
                (rows,) = db.execute(f'SELECT count(*) FROM "{self.name}"').fetchone()
            return f"{self.output} table {self.name}: {rows} rows"
        if self.store == "jsonl":
            if not self.output.exists():
                return f"{self.output}: missing"
            with self.output.open("rb") as handle:
                return f"{self.output}: {sum(1 for _ in handle)} lines"
        written = sum(
            int(value)
            for key, value in self.stats.items()
            if key.startswith("sse/sink/") and key.endswith(("/rows_written", "/replayed_rows"))
        )
        return f"{self.store} ({self.name}): {written} rows written"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="how long each streaming spider runs (CLOSESPIDER_TIMEOUT), default 5",
    )
    parser.add_argument(
        "--spiders",
        default=",".join(SPIDER_PATHS),
        help="comma-separated subset of: " + ", ".join(SPIDER_PATHS),
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="output directory")
    parser.add_argument(
        "--store",
        choices=STORES,
        default="sqlite",
        help="where items go: sqlite (default, embedded), postgres, redis or jsonl",
    )
    parser.add_argument("--seed", type=int, default=42, help="demo server seed")
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="extra seconds allowed for shutdown before the run is aborted",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    args.spider_names = [name.strip() for name in args.spiders.split(",") if name.strip()]
    unknown = sorted(set(args.spider_names) - set(SPIDER_PATHS))
    if unknown or not args.spider_names:
        parser.error(f"unknown or no spiders: {unknown or args.spiders!r}")
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    return args


def store_settings(settings: Any, store: str, output_dir: Path) -> None:
    """Point the item pipeline (or feed exports) at the chosen store."""
    if store == "jsonl":
        settings.set(
            "FEEDS",
            {
                str(output_dir / "%(name)s.jsonl"): {
                    "format": "jsonlines",
                    "overwrite": True,
                    "encoding": "utf-8",
                }
            },
            priority="cmdline",
        )
        return
    pipeline = {
        "sqlite": "scrapy_sse.pipelines.SQLitePipeline",
        "postgres": "scrapy_sse.pipelines.postgres.PostgresPipeline",
        "redis": "scrapy_sse.pipelines.redis.RedisStreamPipeline",
    }[store]
    settings.set("ITEM_PIPELINES", {pipeline: 800}, priority="cmdline")
    settings.set("SSE_SPILL_DIR", str(output_dir / "spill"), priority="cmdline")
    if store == "sqlite":
        database = output_dir / SQLITE_FILE
        database.unlink(missing_ok=True)  # each run starts from an empty store
        settings.set("SSE_SQLITE_PATH", str(database), priority="cmdline")
    elif store == "postgres":
        dsn = os.environ.get("SSE_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
        settings.set("SSE_POSTGRES_DSN", dsn, priority="cmdline")
        settings.set("SSE_POSTGRES_CREATE_TABLE", True, priority="cmdline")
    else:
        url = os.environ.get("SSE_REDIS_URL", "redis://127.0.0.1:6379/0")
        settings.set("SSE_REDIS_URL", url, priority="cmdline")


def start_watchdog(limit: float, running: Mapping[str, Any]) -> threading.Timer:
    """Abort the process if the crawl outlives *limit* seconds.

    Closing a spider waits for in-flight downloads, and an SSE download never
    finishes by itself; if stream cancellation ever breaks, this turns a hang
    into a clear failure instead of a job that never returns.
    """

    def abort() -> None:
        stuck = sorted(name for name, crawler in running.items() if crawler.crawling)
        print(
            f"run_demo: crawl still running after {limit:.0f} s (spiders: {stuck}); aborting",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_WATCHDOG)

    timer = threading.Timer(limit, abort)
    timer.daemon = True
    timer.start()
    return timer


def print_summary(results: list[SpiderResult], base_url: str) -> None:
    print()
    print(f"== SSE demo summary (demo server {base_url}) ==")
    print(f"{'spider':<10} {'items':>6} {'seconds':>8} {'items/s':>8} {'events/s':>9}  reason")
    for result in results:
        print(
            f"{result.name:<10} {result.items:>6} {result.elapsed:>8.2f} "
            f"{result.rate(result.items):>8} {result.rate(result.events):>9}  "
            f"{result.stats.get('finish_reason', '?')}"
        )
    for result in results:
        interesting = {
            key: value
            for key, value in sorted(result.stats.items())
            if key.startswith(("sse/", f"{result.name}/"))
        }
        if interesting:
            print(f"-- {result.name} stats")
            for key, value in interesting.items():
                print(f"   {key}: {value}")
    print("-- stored")
    for result in results:
        print(f"   {result.stored()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _prepare_imports()

    from demo_server import DemoConfig, serve_in_thread
    from scrapy.crawler import AsyncCrawlerProcess, Crawler
    from scrapy.utils.project import get_project_settings

    output_dir: Path = args.output.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = get_project_settings()
    settings.set("CLOSESPIDER_TIMEOUT", args.seconds, priority="cmdline")
    settings.set("LOG_LEVEL", args.log_level, priority="cmdline")
    store_settings(settings, args.store, output_dir)
    # A malformed event now and then shows the wikimedia spider's skip counter.
    base_url, stop_server = serve_in_thread(
        0, config=DemoConfig(seed=args.seed, wiki_malformed_every=40)
    )
    crawlers: dict[str, Crawler] = {}
    try:
        process = AsyncCrawlerProcess(settings)
        for name in args.spider_names:
            crawler = process.create_crawler(name)
            # One table (or Redis stream) per spider, before settings freeze in crawl().
            crawler.settings.set("SSE_SQLITE_TABLE", name, priority="cmdline")
            crawler.settings.set("SSE_POSTGRES_TABLE", f"sse_demo_{name}", priority="cmdline")
            crawler.settings.set("SSE_REDIS_STREAM", f"sse_demo:{name}", priority="cmdline")
            crawlers[name] = crawler
            process.crawl(crawler, url=base_url + SPIDER_PATHS[name])
        watchdog = start_watchdog(args.seconds + args.grace, crawlers)
        started = time.monotonic()
        try:
            process.start()
        finally:
            watchdog.cancel()
        wall = time.monotonic() - started
    finally:
        stop_server()

    results = [
        SpiderResult(
            name,
            dict(crawler.stats.get_stats()) if crawler.stats else {},
            output_dir / (SQLITE_FILE if args.store == "sqlite" else f"{name}.jsonl"),
            args.store,
        )
        for name, crawler in crawlers.items()
    ]
    print_summary(results, base_url)
    print(f"-- wall time {wall:.2f} s")
    if getattr(process, "bootstrap_failed", False):
        print("run_demo: a crawler failed to start", file=sys.stderr)
        return EXIT_CRAWL_FAILED
    empty = [result.name for result in results if result.items == 0]
    if empty:
        print(f"run_demo: no items from {', '.join(empty)}", file=sys.stderr)
        return EXIT_NO_ITEMS
    return 0


if __name__ == "__main__":
    sys.exit(main())
