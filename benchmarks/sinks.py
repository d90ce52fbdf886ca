"""Committed rows per second into each sink, from a live stream through a real crawl.

Why: a sink is worth its name when a feed at market-open rates reaches the store as
fast as the crawl reads it. Three figures per store, measured in one run on one
machine with one stream:

* the crawl with no sink (a counting pipeline): the ceiling of each delivery mode;
* the crawl into the sink, in both delivery modes: batch delivery
  (``SSERequest(url, batch_size=500, batch_interval=0.05)``, no callback: each
  ``SSEBatch`` is one item) and per-event delivery (a callback yielding a dict per
  event). The ratio to the ceiling of the same mode is the figure the targets are
  about (issue 15: batch >= 0.5x for SQLite, PostgreSQL and ClickHouse, >= 0.3x for
  Redis; per-event >= 0.8x for every sink);
* the bare driver: the same rows, already built, written straight from one Python
  process with the same driver in batches of 500 (SQLite ``executemany``, PostgreSQL
  ``COPY``, pipelined ``XADD``, one ``TabSeparated`` HTTP insert): what the store
  takes from Python.

Each crawl runs in its own process (a Twisted reactor cannot be restarted): the
``benchmarks.server`` process serves N ``ticker`` events as fast as the socket takes
them; the time runs from ``engine_started`` to ``spider_closed``, which Scrapy sends
after the pipelines' ``close_spider``, so the last batch is committed inside it. The
rows are then counted in the store: a run that stored the wrong number gets no speed.
A store whose server is not reachable on 127.0.0.1 is skipped with the reason.

    python -m benchmarks.sinks                          # 100,000 events per crawl
    python -m benchmarks.sinks --events 300000 --only sqlite,postgres --repeats 3
    python -m benchmarks.sinks --baseline /tmp/before   # and a checkout of an earlier
                                                        # commit, each crawl run again
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import scrapy
from scrapy import signals
from scrapy.crawler import CrawlerProcess

from scrapy_sse import SSERequest

from .corpora import build_events

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
CLICKHOUSE_URL = "http://127.0.0.1:8123/"
MAX_EVENTS = 1_000_000
CRAWL_TIMEOUT = 600.0
BATCH = 500
MODES = ("batch", "per_event")
#: The issue's targets: share of the no-sink crawl of the same mode.
TARGETS = {
    ("batch", "sqlite"): 0.5,
    ("batch", "postgres"): 0.5,
    ("batch", "redis"): 0.3,
    ("batch", "clickhouse"): 0.5,
    ("per_event", "sqlite"): 0.8,
    ("per_event", "postgres"): 0.8,
    ("per_event", "redis"): 0.8,
    ("per_event", "clickhouse"): 0.8,
}


# --- child side: the crawl --------------------------------------------------------


class BenchSpider(scrapy.Spider):
    name = "bench_sinks"
    url = ""
    mode = "batch"

    async def start(self) -> AsyncIterator[Any]:
        if self.mode == "batch":
            yield SSERequest(self.url, reconnect=False, batch_size=BATCH, batch_interval=0.05)
        else:
            yield SSERequest(self.url, reconnect=False, callback=self.parse_event)

    def parse_event(self, event: Any) -> Iterator[dict[str, Any]]:
        yield {"id": event.id, "event": event.event, "data": event.data}


class CountPipeline:
    """No sink: what the crawl alone delivers to a pipeline (the ceiling)."""

    def process_item(self, item: Any) -> Any:
        return item


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
    process.crawl(crawler, url=config["url"], mode=config["mode"])
    process.start()
    stats = crawler.stats.get_stats() if crawler.stats else {}
    sink = config.get("sink_name", "")
    print(
        "RESULT "
        + json.dumps(
            {
                "seconds": times["end"] - times["start"],
                "events": stats.get("sse/events", 0),
                "spilled": stats.get(f"sse/sink/{sink}/spilled_rows", 0),
                "waits": stats.get(f"sse/sink/{sink}/backpressure_waits", 0),
            }
        ),
        flush=True,
    )


# --- parent side: the stores --------------------------------------------------------


def _rows(events: int) -> list[tuple[str, str, str, str, str, float]]:
    """The rows a sink stores for the stream, built once (for the bare drivers)."""
    now = time.time()
    return [
        ("http://127.0.0.1/stream", e.event, e.id or "", e.data, e.data, now)
        for e in build_events("ticker", events).expected
    ]


def _batches(rows: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(rows), BATCH):
        yield rows[start : start + BATCH]


@dataclass
class Store:
    """One store: how to set up, crawl into, count, clean up and write to it directly."""

    key: str
    label: str
    pipeline: str
    probe: Callable[[], str | None]  # None when reachable, else the reason
    setup: Callable[[str], dict[str, Any]]  # unique name -> crawl settings
    count: Callable[[str], int | None]  # None: take the crawl's event count
    cleanup: Callable[[str], None]
    bare: Callable[[str, list[Any]], None] | None = None  # write the rows directly
    sink_name: str = ""


def _sqlite_path(name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{name}.sqlite3"


def _sqlite_settings(name: str) -> dict[str, Any]:
    return {"SSE_SQLITE_PATH": str(_sqlite_path(name))}


def _sqlite_count(name: str) -> int:
    with sqlite3.connect(_sqlite_path(name)) as conn:
        return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])


def _sqlite_cleanup(name: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{_sqlite_path(name)}{suffix}").unlink(missing_ok=True)


def _sqlite_bare(name: str, rows: list[Any]) -> None:
    conn = sqlite3.connect(_sqlite_path(name), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items (url, event, id, data, json, received_at)")
    for batch in _batches(rows):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", batch)
        conn.execute("COMMIT")
    conn.close()


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


def _pg_bare(name: str, rows: list[Any]) -> None:
    import psycopg

    _pg(
        f'CREATE TABLE "{name}" (url text, event text, id text, data text, json jsonb, '
        "received_at double precision)"
    )
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        for batch in _batches(rows):
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f'COPY "{name}" FROM STDIN'.encode()) as copy,
            ):
                for row in batch:
                    copy.write_row(row)


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


def _redis_bare(name: str, rows: list[Any]) -> None:
    columns = ("url", "event", "id", "data", "json", "received_at")
    with _redis() as client:
        for batch in _batches(rows):
            pipe = client.pipeline(transaction=True)
            for row in batch:
                pipe.xadd(f"{name}:events", dict(zip(columns, row, strict=True)))
            pipe.execute()


def _ch(sql: str, body: bytes = b"") -> str:
    url = CLICKHOUSE_URL + "?" + urllib.parse.urlencode({"query": sql}) if body else CLICKHOUSE_URL
    with urllib.request.urlopen(url, data=body or sql.encode(), timeout=30) as response:
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


def _ch_bare(name: str, rows: list[Any]) -> None:
    _ch(f"CREATE DATABASE {name}")
    _ch(
        f"CREATE TABLE {name}.events (url String, event String, id String, data String, "
        "json String, received_at Float64) ENGINE = MergeTree ORDER BY tuple()"
    )
    escape = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n"})
    for batch in _batches(rows):
        body = "".join(
            "\t".join(v.translate(escape) if isinstance(v, str) else repr(v) for v in row) + "\n"
            for row in batch
        ).encode()
        _ch(f"INSERT INTO {name}.events FORMAT TabSeparated", body)


def _nothing(name: str) -> Any:
    return None


STORES = [
    Store(
        "none",
        "no sink (counting pipeline): the ceiling",
        "benchmarks.sinks.CountPipeline",
        lambda: None,
        lambda name: {},
        _nothing,  # counted by the crawl (sse/events)
        _nothing,
    ),
    Store(
        "sqlite",
        "SQLite, `SQLitePipeline`",
        "scrapy_sse.pipelines.sqlite.SQLitePipeline",
        lambda: None,
        _sqlite_settings,
        _sqlite_count,
        _sqlite_cleanup,
        _sqlite_bare,
        "sqlite",
    ),
    Store(
        "postgres",
        "PostgreSQL, `PostgresPipeline`",
        "scrapy_sse.pipelines.postgres.PostgresPipeline",
        _pg_probe,
        _pg_settings,
        _pg_count,
        _pg_cleanup,
        _pg_bare,
        "postgres",
    ),
    Store(
        "redis",
        "Redis Streams, `RedisStreamPipeline`",
        "scrapy_sse.pipelines.redis.RedisStreamPipeline",
        _redis_probe,
        _redis_settings,
        _redis_count,
        _redis_cleanup,
        _redis_bare,
        "redis",
    ),
    Store(
        "clickhouse",
        "ClickHouse, `ClickHousePipeline`",
        "scrapy_sse.pipelines.clickhouse.ClickHousePipeline",
        _ch_probe,
        _ch_settings,
        _ch_count,
        _ch_cleanup,
        _ch_bare,
        "clickhouse",
    ),
]


@dataclass
class Result:
    rows: int = 0
    seconds: float = 0.0
    error: str = ""
    waits: int = 0

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds and not self.error else 0.0


@dataclass
class Row:
    """One store's results: per mode, a crawl per repeat (and per repeat, with
    ``--baseline``, the same crawl with the baseline's package)."""

    store: Store
    skipped: str = ""
    crawls: dict[str, list[Result]] = field(default_factory=dict)
    before: dict[str, list[Result]] = field(default_factory=dict)
    bare: Result | None = None


def start_server(events: int) -> tuple[subprocess.Popen[str], str]:
    """The ``benchmarks.server`` process and its stream URL."""
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "benchmarks.server", "--corpus", "ticker"),
            *("--events", str(events), "--lifetime", str(CRAWL_TIMEOUT * 2 * len(STORES))),
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


def crawl(
    store: Store,
    mode: str,
    url: str,
    events: int,
    *,
    spill_dir: Path,
    extra: dict[str, str],
    package: Path = ROOT,
) -> Result:
    """One crawl into *store*, with the ``scrapy_sse`` package found in *package*."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        settings = {**store.setup(name), "SSE_SPILL_DIR": str(spill_dir / name), **extra}
        config = {
            "pipeline": store.pipeline,
            "settings": settings,
            "url": url,
            "mode": mode,
            "sink_name": store.sink_name,
        }
        paths = [str(package), str(ROOT), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.sinks", "--child", json.dumps(config)],
            capture_output=True,
            text=True,
            timeout=CRAWL_TIMEOUT,
            cwd=package,  # (``-m`` puts the working folder first on the path)
            env=env,
            check=False,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            return Result(error=f"crawl failed ({proc.returncode}): {proc.stderr[-500:]}")
        result = json.loads(lines[-1][len("RESULT ") :])
        try:
            counted = store.count(name)
        except Exception as exc:
            return Result(error=f"cannot count the rows: {exc}")
        stored = int(result["events"]) if counted is None else counted
        if stored != events:
            return Result(stored, error=f"stored {stored} rows, expected {events}")
        if result["spilled"]:
            return Result(stored, error=f"{result['spilled']} rows went through spill files")
        return Result(stored, float(result["seconds"]), waits=int(result["waits"]))
    finally:
        store.cleanup(name)


def bare(store: Store, rows: list[Any]) -> Result | None:
    if store.bare is None:
        return None
    name = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        started = time.perf_counter()
        store.bare(name, rows)
        seconds = time.perf_counter() - started
        counted = store.count(name)
        if counted != len(rows):
            return Result(counted or 0, error=f"stored {counted} rows, expected {len(rows)}")
        return Result(len(rows), seconds)
    finally:
        store.cleanup(name)


def _cell(result: Result | None) -> str:
    if result is None:
        return "—"
    if result.error:
        return result.error
    return f"{result.rate:,.0f}"


def _median_result(results: list[Result]) -> Result:
    """The run with the median rate (the first error, if any)."""
    failed = [r for r in results if r.error]
    if failed or not results:
        return failed[0] if failed else Result(error="not run")
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


def _paired(results: list[Result], against: list[Result]) -> float | None:
    """The median of per-repeat ratios (each repeat's two crawls ran back to back)."""
    ratios = sorted(
        a.rate / b.rate for a, b in zip(results, against, strict=False) if a.rate and b.rate
    )
    if not ratios or len(ratios) < len(results):
        return None
    return ratios[len(ratios) // 2]


def table(rows: list[Row], events: int, repeats: int, baseline: str) -> str:
    ceiling = rows[0].crawls if rows else {}
    lines = [
        f"Sinks: {events:,} `ticker` events per crawl, {repeats} repeat(s), "
        f"{os.cpu_count()} cores, default sink settings (batches of 500 rows, SQLite "
        "2,000, ClickHouse 5,000; a write takes up to 4 batches; 1 s).",
        "Committed rows per second, engine start to spider closed (median run); x: median "
        "of the ratios to the crawl with no sink run just before, same mode (target in "
        "brackets)" + (f"; x before: against {baseline}, run just after." if baseline else "."),
        "",
        "| sink | batch delivery rows/s | x | "
        + ("x before | " if baseline else "")
        + "per-event rows/s | x | "
        + ("x before | " if baseline else "")
        + "bare driver rows/s |",
        "|---|" + "---:|" * (5 + (2 if baseline else 0)),
    ]
    for row in rows:
        if row.skipped:
            lines.append(f"| {row.store.label} | {row.skipped} |" + " |" * (4 + 2 * bool(baseline)))
            continue
        cells = [row.store.label]
        for mode in MODES:
            results = row.crawls.get(mode, [])
            cells.append(_cell(_median_result(results)))
            ratio = _paired(results, ceiling.get(mode, []))
            if ratio is None:
                cells.append("—")
            else:
                target = TARGETS.get((mode, row.store.key))
                mark = "" if target is None else f" ({'≥' if ratio >= target else '<'}{target})"
                cells.append(f"{ratio:.2f}{mark}")
            if baseline:
                before = _paired(results, row.before.get(mode, []))
                cells.append("—" if before is None else f"{before:.2f}")
        cells.append(_cell(row.bare))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _skipped(store: Store) -> str:
    reason = store.probe()
    return f"skipped: {reason}" if reason else ""


def _baseline_package(tree: Path, into: Path) -> Path:
    """A folder whose only entry is *tree*'s ``scrapy_sse`` (first on the crawl's path)."""
    package = into / "baseline"
    package.mkdir()
    (package / "scrapy_sse").symlink_to(tree.resolve() / "scrapy_sse")
    return package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated: " + ",".join(s.key for s in STORES[1:]) + " (none always runs)",
    )
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a Scrapy setting for every crawl (repeatable), e.g. SSE_BATCH_SIZE=2000",
    )
    parser.add_argument("--repeats", type=int, default=1, help="crawls per sink and mode")
    parser.add_argument(
        "--baseline",
        default="",
        metavar="CHECKOUT",
        help="another checkout (an earlier commit): each crawl runs again with its package",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    events = max(1, min(args.events, MAX_EVENTS))
    wanted = {k for k in args.only.split(",") if k}
    modes = [m for m in MODES if m in args.modes.split(",")]
    stores = [s for s in STORES if s.key == "none" or not wanted or s.key in wanted]
    extra = dict(item.split("=", 1) for item in args.set)
    repeats = max(1, args.repeats)
    server, url = start_server(events)
    results = [
        Row(store, skipped=f"skipped: {r}" if (r := store.probe()) else "") for store in stores
    ]
    try:
        rows = _rows(events)
        with tempfile.TemporaryDirectory(prefix="scrapy_sse_bench_") as spill_dir:
            spill = Path(spill_dir)
            baseline = _baseline_package(Path(args.baseline), spill) if args.baseline else None
            for repeat in range(repeats):
                for mode in modes:
                    for row in results:
                        if row.skipped:
                            continue
                        print(
                            f"... {row.store.label}, {mode}, {repeat + 1}/{repeats}",
                            file=sys.stderr,
                            flush=True,
                        )
                        row.crawls.setdefault(mode, []).append(
                            crawl(row.store, mode, url, events, spill_dir=spill, extra=extra)
                        )
                        if baseline is not None and row.store.key != "none":
                            row.before.setdefault(mode, []).append(
                                crawl(
                                    row.store,
                                    mode,
                                    url,
                                    events,
                                    spill_dir=spill,
                                    extra=extra,
                                    package=baseline,
                                )
                            )
            for row in results:
                if not row.skipped:
                    print(f"... {row.store.label}, bare driver", file=sys.stderr, flush=True)
                    row.bare = bare(row.store, rows)
    finally:
        if server.stdin is not None:
            server.stdin.close()  # the server stops when its stdin closes
        server.wait(timeout=30)
    print(table(results, events, repeats, args.baseline))
    errors = [
        r
        for row in results
        for r in (*(x for runs in row.crawls.values() for x in runs), row.bare)
        if r is not None and r.error
    ]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
