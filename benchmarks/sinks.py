"""Rows per second into each sink, from a live stream through a real crawl.

Why: the point of the batching sinks is that a feed at market-open rates reaches the
database. The usual hand-written pipeline does one ``INSERT`` per item; that is the
baseline here, measured in the same run on the same machine, with the same stream
and the same spider, next to ``PostgresPipeline`` (COPY per batch),
``RedisStreamPipeline`` (one script call per batch) and ``ClickHousePipeline`` (one
HTTP insert per batch), plus a no-op pipeline: the crawl's own ceiling.

Each crawl runs in its own process (a Twisted reactor cannot be restarted): the
``benchmarks.server`` process serves N ``ticker`` events as fast as the socket takes
them; the spider is an ``SSERequest`` without callback (one ``SSEEventItem`` per
event); the time runs from ``engine_started`` to ``spider_closed``, which Scrapy sends
after the pipelines' ``close_spider``, so the last batch is committed inside it. The
rows are then counted in the sink: a run that stored the wrong number gets no speed.
A sink whose server is not reachable on 127.0.0.1 is skipped with the reason.

    python -m benchmarks.sinks                 # 20,000 events per sink
    python -m benchmarks.sinks --events 5000 --only postgres-copy,redis
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import scrapy
from itemadapter import ItemAdapter
from scrapy import signals
from scrapy.crawler import CrawlerProcess

from scrapy_sse import SSERequest

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
CLICKHOUSE_URL = "http://127.0.0.1:8123/"
MAX_EVENTS = 200_000
CRAWL_TIMEOUT = 600.0


# --- child side: the crawl --------------------------------------------------------


class BenchSpider(scrapy.Spider):
    name = "bench_sinks"
    url = ""

    async def start(self) -> AsyncIterator[Any]:
        yield SSERequest(self.url, reconnect=False)


class CountPipeline:
    """No sink: what the crawl alone delivers to a pipeline (the ceiling)."""

    def __init__(self) -> None:
        self.count = 0

    def process_item(self, item: Any) -> Any:
        self.count += 1
        return item


class PerItemInsertPipeline:
    """The baseline: one ``INSERT`` per item, psycopg async, autocommit, as the usual
    hand-written pipeline does it."""

    def __init__(self, dsn: str, table: str) -> None:
        self.dsn = dsn
        self.table = table
        self.conn: Any = None

    @classmethod
    def from_crawler(cls, crawler: Any) -> PerItemInsertPipeline:
        return cls(crawler.settings["SSE_POSTGRES_DSN"], crawler.settings["SSE_POSTGRES_TABLE"])

    async def open_spider(self) -> None:
        import psycopg

        self.conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        await self.conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{self.table}" (url text, event text, id text, '
            "data text, json jsonb, received_at double precision)"
        )

    async def process_item(self, item: Any) -> Any:
        from psycopg.types.json import Jsonb

        row = ItemAdapter(item).asdict()
        await self.conn.execute(
            f'INSERT INTO "{self.table}" (url, event, id, data, json, received_at) '
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (
                row["url"],
                row["event"],
                row["id"],
                row["data"],
                Jsonb(row["json"]),
                row["received_at"],
            ),
        )
        return item

    async def close_spider(self) -> None:
        await self.conn.close()


def child(config: dict[str, Any]) -> None:
    """Run one crawl; print ``RESULT {"seconds": ...}`` on stdout."""
    settings = {
        "ADDONS": {"scrapy_sse.SSEAddon": 500},
        "ITEM_PIPELINES": {config["pipeline"]: 300},
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
        **config["settings"],
    }
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(BenchSpider)
    times: dict[str, float] = {}

    def started() -> None:
        times["start"] = time.perf_counter()

    def closed() -> None:
        times["end"] = time.perf_counter()

    # Named locals, alive for the whole crawl: Scrapy keeps weak references to receivers.
    crawler.signals.connect(started, signal=signals.engine_started)
    crawler.signals.connect(closed, signal=signals.spider_closed)
    process.crawl(crawler, url=config["url"])
    process.start()
    stats = crawler.stats.get_stats() if crawler.stats else {}
    print(
        "RESULT "
        + json.dumps(
            {
                "seconds": times["end"] - times["start"],
                "items": stats.get("item_scraped_count", 0),
                "spilled": stats.get(f"sse/sink/{config.get('sink_name', '')}/spilled_rows", 0),
            }
        ),
        flush=True,
    )


# --- parent side: the sinks ---------------------------------------------------------


@dataclass
class Sink:
    """One row of the table: how to set up, crawl into, count and clean up a sink."""

    key: str
    label: str
    pipeline: str
    probe: Callable[[], str | None]  # None when reachable, else the reason
    setup: Callable[[str], dict[str, Any]]  # unique name -> crawl settings
    count: Callable[[str], int | None]  # None: take Scrapy's item count
    cleanup: Callable[[str], None]
    sink_name: str = ""


def _pg(sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True, connect_timeout=3) as conn:
        cur = conn.execute(sql.encode())  # benchmark SQL, built from generated names
        return cur.fetchall() if cur.description else []


def _pg_probe() -> str | None:
    try:
        _pg("SELECT 1")
    except Exception:
        return "PostgreSQL not reachable at 127.0.0.1:5432"
    return None


def _pg_settings(name: str) -> dict[str, Any]:
    return {
        "SSE_POSTGRES_DSN": POSTGRES_DSN,
        "SSE_POSTGRES_TABLE": name,
        "SSE_POSTGRES_CREATE_TABLE": True,
    }


def _pg_count(name: str) -> int:
    return int(_pg(f'SELECT count(*) FROM "{name}"')[0][0])


def _pg_cleanup(name: str) -> None:
    _pg(f'DROP TABLE IF EXISTS "{name}"')


def _redis() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL, socket_timeout=5)


def _redis_probe() -> str | None:
    try:
        with _redis() as client:
            client.ping()
    except Exception:
        return "Redis not reachable at 127.0.0.1:6379"
    return None


def _redis_settings(name: str) -> dict[str, Any]:
    return {
        "SSE_REDIS_URL": REDIS_URL,
        "SSE_REDIS_STREAM": f"{name}:events",
        "SSE_REDIS_DEDUP_PREFIX": f"{name}:batch:",
        "SSE_REDIS_CURSOR_KEY": f"{name}:cursors",
    }


def _redis_count(name: str) -> int:
    with _redis() as client:
        return int(client.xlen(f"{name}:events"))


def _redis_cleanup(name: str) -> None:
    with _redis() as client:
        for key in list(client.scan_iter(match=f"{name}:*", count=1000)):
            client.delete(key)


def _ch(sql: str) -> str:
    with urllib.request.urlopen(CLICKHOUSE_URL, data=sql.encode(), timeout=30) as response:
        return str(response.read().decode())


def _ch_probe() -> str | None:
    try:
        with urllib.request.urlopen(CLICKHOUSE_URL + "ping", timeout=3) as response:
            response.read()
    except OSError:
        return "ClickHouse not reachable at 127.0.0.1:8123"
    return None


def _ch_settings(name: str) -> dict[str, Any]:
    _ch(f"CREATE DATABASE {name}")
    return {
        "SSE_CLICKHOUSE_DATABASE": name,
        "SSE_CLICKHOUSE_TABLE": "events",
        "SSE_CLICKHOUSE_CREATE_TABLE": True,
    }


def _ch_count(name: str) -> int:
    return int(_ch(f"SELECT count() FROM {name}.events").strip())


def _ch_cleanup(name: str) -> None:
    _ch(f"DROP DATABASE IF EXISTS {name}")


def _nothing(name: str) -> Any:
    return None


SINKS = [
    Sink(
        "none",
        "no sink (count only): the crawl's ceiling",
        "benchmarks.sinks.CountPipeline",
        lambda: None,
        lambda name: {},
        _nothing,  # counted by Scrapy (item_scraped_count)
        _nothing,
    ),
    Sink(
        "postgres-insert",
        "PostgreSQL, one INSERT per item (baseline)",
        "benchmarks.sinks.PerItemInsertPipeline",
        _pg_probe,
        _pg_settings,
        _pg_count,
        _pg_cleanup,
    ),
    Sink(
        "postgres-copy",
        "PostgreSQL, `PostgresPipeline` (COPY per batch)",
        "scrapy_sse.pipelines.postgres.PostgresPipeline",
        _pg_probe,
        _pg_settings,
        _pg_count,
        _pg_cleanup,
        "postgres",
    ),
    Sink(
        "redis",
        "Redis Streams, `RedisStreamPipeline` (script per batch)",
        "scrapy_sse.pipelines.redis.RedisStreamPipeline",
        _redis_probe,
        _redis_settings,
        _redis_count,
        _redis_cleanup,
        "redis",
    ),
    Sink(
        "clickhouse",
        "ClickHouse, `ClickHousePipeline` (HTTP insert per batch)",
        "scrapy_sse.pipelines.clickhouse.ClickHousePipeline",
        _ch_probe,
        _ch_settings,
        _ch_count,
        _ch_cleanup,
        "clickhouse",
    ),
]


@dataclass
class Result:
    sink: Sink
    rows: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds and not self.error else 0.0


def start_server(events: int) -> tuple[subprocess.Popen[str], str]:
    """The ``benchmarks.server`` process and its stream URL."""
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "benchmarks.server", "--corpus", "ticker"),
            *("--events", str(events), "--lifetime", str(CRAWL_TIMEOUT * len(SINKS))),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert server.stdout is not None
    ready, _, _ = select.select([server.stdout], [], [], 60)
    line = server.stdout.readline() if ready else ""  # "READY <port>", once it listens
    if not line.startswith("READY "):
        server.kill()
        raise RuntimeError(f"benchmark server did not start: {line!r}")
    return server, f"http://127.0.0.1:{line.split()[1]}/stream"


def run_sink(sink: Sink, url: str, events: int, spill_dir: Path) -> Result:
    reason = sink.probe()
    if reason:
        return Result(sink, error=f"skipped: {reason}")
    name = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        settings = {**sink.setup(name), "SSE_SPILL_DIR": str(spill_dir / name)}
        config = {"pipeline": sink.pipeline, "settings": settings, "url": url}
        config["sink_name"] = sink.sink_name
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.sinks", "--child", json.dumps(config)],
            capture_output=True,
            text=True,
            timeout=CRAWL_TIMEOUT,
            cwd=ROOT,
            env=env,
            check=False,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            return Result(sink, error=f"crawl failed ({proc.returncode}): {proc.stderr[-500:]}")
        result = json.loads(lines[-1][len("RESULT ") :])
        counted = sink.count(name)
        stored = int(result["items"]) if counted is None else counted
        if stored != events:
            return Result(sink, stored, error=f"stored {stored} rows, expected {events}")
        if result["spilled"]:
            return Result(sink, stored, error=f"{result['spilled']} rows went through spill files")
        return Result(sink, stored, float(result["seconds"]))
    finally:
        sink.cleanup(name)


def table(results: list[Result], events: int) -> str:
    baseline = next((r.rate for r in results if r.sink.key == "postgres-insert"), 0.0)
    lines = [
        f"Sinks: {events:,} `ticker` events per crawl, one crawl per sink, "
        f"{os.cpu_count()} cores, default batch settings (500 rows / 1 s).",
        "",
        "| sink | rows stored | seconds | rows/s | x per-item INSERT |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.sink.label} | {r.rows:,} | — | — | {r.error} |")
            continue
        ratio = f"{r.rate / baseline:.1f}x" if baseline else "—"
        lines.append(f"| {r.sink.label} | {r.rows:,} | {r.seconds:.2f} | {r.rate:,.0f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--only", default="", help="comma-separated: " + ",".join(s.key for s in SINKS)
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    events = max(1, min(args.events, MAX_EVENTS))
    wanted = {k for k in args.only.split(",") if k}
    sinks = [s for s in SINKS if not wanted or s.key in wanted]
    server, url = start_server(events)
    try:
        results = []
        with tempfile.TemporaryDirectory(prefix="scrapy_sse_bench_") as spill_dir:
            for sink in sinks:
                print(f"... {sink.label}", file=sys.stderr, flush=True)
                results.append(run_sink(sink, url, events, Path(spill_dir)))
    finally:
        if server.stdin is not None:
            server.stdin.close()  # the server stops when its stdin closes
        server.wait(timeout=30)
    print(table(results, events))
    return 1 if any(r.error and not r.error.startswith("skipped") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
