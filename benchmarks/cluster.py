"""Many workers: events per second committed into PostgreSQL by one worker and by two,
what the cluster layer costs one worker, and what a parked (standby) stream costs.

Why: a cluster is worth running when a second worker adds almost a second worker's
throughput, and when it costs nothing on a single worker. In one run, on one machine:

* ``single``: one crawl with no cluster (no ``SSE_CLUSTER_URL``): the baseline;
* ``cluster-1``: the same crawl as the only worker of a cluster;
* ``cluster-2``: two workers of one cluster sharing the same streams.

Each reads ``--streams`` streams of ``--events`` ticker events each (``benchmarks.server``,
bulk writes, resumable by ``Last-Event-ID``, ending with ``[DONE]``) with batch delivery
into one PostgreSQL table. The rate is measured from the store (the streams' committed
positions in its cursor table): events committed between the moment 5 % of them are in
and the moment all are (process start-up and Scrapy's
import are not counted, alike for every case), and every run must have stored each
event exactly once. Issue 16's targets: ``cluster-2 / cluster-1 >= 1.7``,
``cluster-1 / single >= 0.95``; a standby stream <= 1 KiB.

    python -m benchmarks.cluster                       # 8 streams x 100,000 events
    python -m benchmarks.cluster --repeats 3 --events 200000 --delivery per-event
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
PIPELINE = "scrapy_sse.pipelines.postgres.PostgresPipeline"


def _query(sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        cur = conn.execute(sql.encode())
        return cur.fetchall() if cur.description else []


def _committed(table: str) -> int:
    """Events committed so far: the sum of the streams' stored positions in the cursor
    table (a few rows; a count(*) of the growing table every poll would cost the
    store more CPU than the workers' writes)."""
    cursors = f"{table}_cursors"
    if not _query(f"SELECT to_regclass('{cursors}') IS NOT NULL")[0][0]:
        return 0
    return int(_query(f'SELECT coalesce(sum(seq), 0) FROM "{cursors}"')[0][0])


def _server(events: int) -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.server",
            "--corpus",
            "ticker",
            "--events",
            str(events),
            "--done",
            "--lifetime",
            "3600",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line.startswith("READY"), line
    return server, int(line.split()[1])


def _worker(
    urls: list[str], table: str, cluster: str | None, log: Path, delivery: str
) -> subprocess.Popen[bytes]:
    settings = {
        "SSE_POSTGRES_DSN": POSTGRES_DSN,
        "SSE_POSTGRES_TABLE": table,
        "SSE_POSTGRES_CREATE_TABLE": "True",
        "SSE_POSTGRES_CURSOR_TABLE": f"{table}_cursors",
        "LOG_LEVEL": "INFO",
        "TELNETCONSOLE_ENABLED": "False",
        "ADDONS": '{"scrapy_sse.SSEAddon": 500}',
        "ITEM_PIPELINES": f'{{"{PIPELINE}": 300}}',
        "SSE_SPILL_DIR": str(log.parent / "spill"),
    }
    if cluster:
        settings |= {"SSE_CLUSTER_URL": REDIS_URL, "SSE_CLUSTER_NAME": cluster}
    cmd = [sys.executable, "-m", "scrapy", "runspider", str(ROOT / "benchmarks/cluster_spider.py")]
    cmd += ["-a", "url=" + "|".join(urls), "-a", f"delivery={delivery}"]
    for name, value in settings.items():
        cmd += ["-s", f"{name}={value}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def run_case(case: str, port: int, args: argparse.Namespace, work: Path) -> float:
    """Events per second committed (see the module docstring) for one case."""
    run = uuid.uuid4().hex[:10]
    table = f"bench_cluster_{run}"
    urls = [f"http://127.0.0.1:{port}/s{i}?run={run}" for i in range(args.streams)]
    total = args.streams * args.events
    cluster = None if case == "single" else f"bench-{run}"
    workers = [
        _worker(urls, table, cluster, work / f"{case}-{run}-{n}.log", args.delivery)
        for n in range(2 if case == "cluster-2" else 1)
    ]
    try:
        t0 = None
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            count = _committed(table)
            now = time.monotonic()
            if t0 is None and count >= total * 0.05:
                t0, c0 = now, count
            if count >= total:
                break
            if all(w.poll() is not None for w in workers):
                break
            time.sleep(0.1)
        t1, c1 = time.monotonic(), _committed(table)
        for w in workers:
            w.wait(timeout=60)
        rows, distinct = _query(f'SELECT count(*), count(DISTINCT (url, id)) FROM "{table}"')[0]
        if not (rows == distinct == total) or t0 is None:
            raise SystemExit(f"{case}: stored {rows} rows ({distinct} distinct) of {total}")
        return (c1 - c0) / (t1 - t0)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        _query(f'DROP TABLE IF EXISTS "{table}"')
        _query(f'DROP TABLE IF EXISTS "{table}_cursors"')
        if cluster:
            import redis

            with redis.Redis.from_url(REDIS_URL) as client:
                for key in client.scan_iter(match=f"sse:{{{cluster}}}:*"):
                    client.delete(key)


def standby_bytes(count: int = 5000) -> float:
    """Bytes a parked stream costs a worker: its packed request and its entry."""
    from scrapy.utils.test import get_crawler

    from scrapy_sse import SSERequest
    from scrapy_sse.cluster.worker import pack
    from scrapy_sse.downloadermw import assign_stream_key

    crawler = get_crawler(settings_dict={"ADDONS": {"scrapy_sse.SSEAddon": 500}})
    crawler._apply_settings()
    requests = [
        SSERequest(f"https://feed.example.com/v1/prices?symbol=S{i:05d}&venue=XNAS")
        for i in range(count)
    ]
    gc.collect()
    tracemalloc.start()
    parked: dict[str, Any] = {}
    for request in requests:
        parked[assign_stream_key(crawler, request)] = pack(request, None)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del requests  # (what the spider made, and a worker without a cluster holds too)
    return size / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--delivery", choices=("batch", "per-event"), default="batch")
    args = parser.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-cluster-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    server, port = _server(args.events)
    rates: dict[str, list[float]] = {"single": [], "cluster-1": [], "cluster-2": []}
    try:
        for _ in range(args.repeats):
            for case, values in rates.items():  # (interleaved: drift hits all alike)
                values.append(run_case(case, port, args, work))
                print(f"  {case}: {values[-1]:,.0f} events/s", flush=True)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)
    median = {case: statistics.median(values) for case, values in rates.items()}
    print(
        f"\n{args.streams} streams x {args.events:,} events, {args.delivery} delivery "
        "into PostgreSQL"
    )
    print(f"{'case':<10} {'events/s (median)':>18}")
    for case, value in median.items():
        print(f"{case:<10} {value:>18,.0f}")
    print(f"two workers / one worker (cluster):   {median['cluster-2'] / median['cluster-1']:.2f}x")
    print(f"one worker, cluster / no cluster:     {median['cluster-1'] / median['single']:.2f}x")
    print(f"a parked (standby) stream costs:      {standby_bytes():.0f} bytes")
    print(f"logs: {work}")


if __name__ == "__main__":
    main()
