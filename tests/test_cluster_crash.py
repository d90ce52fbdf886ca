"""Many workers, real processes: SIGKILL one, add one, SIGSTOP one past its leases.

Real Redis (the leases), real PostgreSQL (rows, cursors and fences), real ``scrapy
runspider`` workers reading 24 paced streams from the fault-injecting SSE server.
Every event of every stream must be stored exactly once, orphaned streams must be
reopened within two lease periods, and the streams must spread over the live workers.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers.sse_server import SSEServer
from tests.services import (
    REDIS_URL,
    Crawl,
    PostgresTarget,
    log_stat,
    postgres_target,
    redis_target,
    start_crawl,
    unique_name,
    wait_until,
)

PIPELINE = "scrapy_sse.pipelines.postgres.PostgresPipeline"
TTL = 1.5
STREAMS = 24
EVENTS = 700  # per stream, 20 ms apart: 14 s per stream read without a break


@pytest.fixture
def postgres() -> Iterator[PostgresTarget]:
    with postgres_target() as target:
        yield target


class Cluster:
    """The cluster's keys in Redis, read the way ``scrapy sse-cluster`` reads them."""

    def __init__(self, name: str) -> None:
        import redis

        self.name = name
        self.client = redis.Redis.from_url(REDIS_URL, decode_responses=True)

    def holders(self) -> dict[str, str]:
        """Stream key -> the worker id holding its lease."""
        prefix = f"sse:{{{self.name}}}:lease:"
        keys = list(self.client.scan_iter(match=prefix + "*", count=1000))
        values = self.client.mget(keys) if keys else []
        return {k[len(prefix) :]: v for k, v in zip(keys, values, strict=True) if v}

    def held_by_pid(self) -> Counter[int]:
        return Counter(int(worker.split(":")[1]) for worker in self.holders().values())

    def live_pids(self) -> set[int]:
        workers = self.client.zrangebyscore(
            f"sse:{{{self.name}}}:workers", time.time() * 1000, "+inf"
        )
        return {int(worker.split(":")[1]) for worker in workers}

    def delete(self) -> None:
        for key in self.client.scan_iter(match=f"sse:{{{self.name}}}:*", count=1000):
            self.client.delete(key)


@pytest.fixture
def cluster(postgres: PostgresTarget) -> Iterator[Cluster]:
    """A cluster's name and keys, and afterwards no trace of it (keys, cursor table)."""
    with redis_target():  # (skips, or fails in CI, when Redis is not running)
        pass
    target = Cluster(unique_name("cluster"))
    try:
        yield target
    finally:
        try:
            postgres.query(f'DROP TABLE IF EXISTS "{postgres.table}_cursors"')
        finally:
            target.delete()


def worker_settings(postgres: PostgresTarget, cluster: Cluster, **more: Any) -> dict[str, Any]:
    """A worker's settings: the cluster, its lease TTL, the PostgreSQL sink."""
    return {
        "SSE_POSTGRES_DSN": postgres.dsn,
        "SSE_POSTGRES_TABLE": postgres.table,
        "SSE_POSTGRES_CREATE_TABLE": "True",
        "SSE_POSTGRES_CURSOR_TABLE": f"{postgres.table}_cursors",
        "SSE_CLUSTER_URL": REDIS_URL,
        "SSE_CLUSTER_NAME": cluster.name,
        "SSE_LEASE_TTL": TTL,
        **more,
    }


@pytest.mark.parametrize("declared", ["start", "scrapy-redis"])
def test_workers_killed_added_and_paused_store_every_event_once(
    postgres: PostgresTarget,
    cluster: Cluster,
    sse_server: SSEServer,
    tmp_path: Path,
    declared: str,
) -> None:
    """``start``: every worker's spider yields the 24 streams from ``start()``.
    ``scrapy-redis``: a ``RedisSpider``; half the streams are pushed to its start-URL key
    before the workers start, half while they are busy reading the first half."""
    if declared == "scrapy-redis":
        pytest.importorskip("scrapy_redis")
    tag = unique_name("s")
    stream_urls = [
        sse_server.url(f"/stream?n={EVENTS}&delay=0.02&ascii=1&done=1&key={tag}-{i}")
        for i in range(STREAMS)
    ]
    start_key = f"{cluster.name}:start_urls"

    def push(urls: list[str]) -> None:
        for url in urls:
            cluster.client.rpush(start_key, json.dumps({"url": url, "meta": {"sse": True}}))

    urls = "|".join(stream_urls) if declared == "start" else ""
    spider = "cluster_spider.py" if declared == "start" else "cluster_redis_spider.py"
    settings = worker_settings(
        postgres,
        cluster,
        SSE_FLUSH_INTERVAL=0.2,
        # (scrapy-redis: where the start URLs are; close once idle with nothing to hold)
        REDIS_URL=REDIS_URL,
        MAX_IDLE_TIME_BEFORE_CLOSE=2,
    )

    def worker(number: int) -> Crawl:
        spill = {"SSE_SPILL_DIR": str(tmp_path / f"spill{number}")}
        args = {"redis_key": start_key} if declared == "scrapy-redis" else {}
        return start_crawl(
            urls, PIPELINE, {**settings, **spill}, tmp_path, spider=spider, args=args
        )

    if declared == "scrapy-redis":
        push(stream_urls[: STREAMS // 2])
    workers = [worker(n) for n in range(3)]
    try:
        pids = [w.process.pid for w in workers]
        if declared == "scrapy-redis":
            assert wait_until(lambda: len(cluster.holders()) == STREAMS // 2, timeout=30)
            assert wait_until(lambda: postgres.count() >= 300, timeout=30)
            push(stream_urls[STREAMS // 2 :])  # (while every worker is busy)

        # All 24 streams open, spread over the three workers (a worker slow to start,
        # on a loaded machine, is handed its share once it has joined).
        def spread() -> bool:
            holders = cluster.holders()
            held_by = {int(w.split(":")[1]) for w in holders.values()}
            return len(holders) == STREAMS and held_by == set(pids)

        assert wait_until(spread, timeout=60), cluster.holders()
        assert wait_until(lambda: postgres.count() >= 1000, timeout=30)

        # SIGKILL the first worker: each of its streams is reopened by another worker
        # within two lease periods.
        orphans = {k for k, w in cluster.holders().items() if int(w.split(":")[1]) == pids[0]}
        assert orphans
        workers[0].process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()

        def adopted() -> bool:
            holders = cluster.holders()
            return all(k in holders and int(holders[k].split(":")[1]) != pids[0] for k in orphans)

        assert wait_until(adopted, timeout=2 * TTL + 1)
        takeover = time.monotonic() - killed_at
        assert takeover <= 2 * TTL, takeover
        before_new = cluster.held_by_pid()
        assert max(before_new.values()) > math.ceil(STREAMS / 3) + 1  # (unbalanced now)

        # A fourth worker gets its share within two lease periods; then no live worker
        # holds more than ceil(streams / live workers) + 1.
        workers.append(worker(3))
        pids.append(workers[3].process.pid)
        bound = math.ceil(STREAMS / 3) + 1

        def balanced() -> bool:
            held = cluster.held_by_pid()
            return held[pids[3]] > 0 and max(held.values()) <= bound

        assert wait_until(lambda: pids[3] in cluster.live_pids(), timeout=30)
        joined_at = time.monotonic()
        assert wait_until(balanced, timeout=30), cluster.held_by_pid()
        balancing = time.monotonic() - joined_at
        assert balancing <= 2 * TTL, (balancing, cluster.held_by_pid())

        # SIGSTOP the second worker for three lease periods: others take its streams
        # over; when it wakes it must write nothing of them.
        paused = {k for k, w in cluster.holders().items() if int(w.split(":")[1]) == pids[1]}
        workers[1].process.send_signal(signal.SIGSTOP)
        time.sleep(3 * TTL)
        holders = cluster.holders()
        assert all(int(holders.get(k, "x:0").split(":")[1]) != pids[1] for k in paused)
        workers[1].process.send_signal(signal.SIGCONT)

        codes_logs = [w.wait(timeout=120) for w in workers[1:]]
    finally:
        for w in workers:
            if w.running:
                os.kill(w.process.pid, signal.SIGCONT)
                w.process.kill()

    for code, log in codes_logs:
        assert code == 0, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    # Each stream completed (its last holder read its [DONE]) for the whole cluster.
    completed = sum(log_stat(log, "sse/cluster/completed") for _, log in codes_logs)
    assert completed >= STREAMS
    rows = postgres.query(f'SELECT url, id FROM "{postgres.table}"')
    counts = Counter(rows)
    twice = {k: n for k, n in counts.items() if n > 1}
    assert not twice, f"{len(twice)} events stored more than once"
    expected = {(url, str(j)) for url in stream_urls for j in range(1, EVENTS + 1)}
    missing = expected - set(counts)
    assert not missing, f"{len(missing)} events missing, e.g. {sorted(missing)[:3]}"
    # The paused worker's late batches were refused by the store, not written.
    paused_log = codes_logs[0][1]
    assert log_stat(paused_log, "sse/cluster/lost") >= 1, paused_log[-3000:]


def test_a_stream_only_one_worker_can_open_is_read_even_past_its_share(
    postgres: PostgresTarget, cluster: Cluster, sse_server: SSEServer, tmp_path: Path
) -> None:
    """Worker B (weight 1) knows stream s; worker A (weight 0: a standby worker, share
    0) knows s and x. Nobody's share covers x, and only A can open it: A must take it
    once it has gone unheld for three lease periods, and both streams are stored once."""
    tag = unique_name("s")
    s, x = (sse_server.url(f"/stream?n=150&delay=0.01&ascii=1&done=1&key={tag}-{k}") for k in "sx")
    settings = worker_settings(postgres, cluster, SSE_FLUSH_INTERVAL=0.2)
    b = start_crawl(s, PIPELINE, settings, tmp_path, spider="cluster_spider.py")
    assert wait_until(lambda: len(cluster.holders()) == 1, timeout=30)
    a = start_crawl(
        f"{s}|{x}",
        PIPELINE,
        {**settings, "SSE_CLUSTER_WEIGHT": 0},
        tmp_path,
        spider="cluster_spider.py",
    )
    code_a, log_a = a.wait(timeout=60)
    code_b, _ = b.wait(timeout=60)
    assert (code_a, code_b) == (0, 0), log_a[-3000:]
    assert "SSE cluster: opened stream" in log_a  # (x, by the standby worker)
    counts = Counter(postgres.query(f'SELECT url, id FROM "{postgres.table}"'))
    assert set(counts.values()) == {1}
    assert set(counts) == {(url, str(i)) for url in (s, x) for i in range(1, 151)}


def test_a_stream_every_worker_gives_up_on_is_done_once_each_has_tried(
    postgres: PostgresTarget, cluster: Cluster, sse_server: SSEServer, tmp_path: Path
) -> None:
    """A stream answering 404: the worker that gives up on it hands it over (maybe only
    its own proxy or credentials are refused) and does not take it back for a while;
    once both live workers have given up, it is done, and both workers finish."""
    tag = unique_name("s")
    good = sse_server.url(f"/stream?n=100&delay=0.01&ascii=1&done=1&key={tag}-good")
    gone = sse_server.url(f"/status?code=404&key={tag}-gone")
    # (The cool-down, SSE_BACKOFF_MAX: longer than the test.)
    settings = worker_settings(postgres, cluster, SSE_BACKOFF_MAX=30)
    workers = [
        start_crawl(
            f"{good}|{gone}",
            PIPELINE,
            settings,
            tmp_path,
            spider="cluster_spider.py",
            args={"delay_last": "6"},  # (both workers are live when it is first tried)
        )
        for _ in range(2)
    ]
    assert wait_until(lambda: len(cluster.live_pids()) == 2, timeout=30)
    results = [w.wait(timeout=60) for w in workers]
    for code, log in results:
        assert code == 0, log[-3000:]
    assert [log_stat(log, "sse/cluster/given_up") for _, log in results] == [1, 1]
    ids = sorted(int(i) for (i,) in postgres.query(f'SELECT id FROM "{postgres.table}"'))
    assert ids == list(range(1, 101))


def test_streams_are_taken_and_read_while_the_sinks_are_always_busy(
    postgres: PostgresTarget, cluster: Cluster, sse_server: SSEServer, tmp_path: Path
) -> None:
    """Two workers start together on 8 unpaced streams with small batches, so each
    sink writes back to back. Streams handed over and taken meanwhile must still open
    (a take waits for its turn between two writes, and is never handed over itself
    before it is held), and both workers must finish with every event stored once."""
    tag = unique_name("s")
    urls = [sse_server.url(f"/stream?n=3000&ascii=1&done=1&key={tag}-{i}") for i in range(8)]
    settings = worker_settings(postgres, cluster, SSE_BATCH_SIZE=20, SSE_MAX_BUFFER=40)
    workers = [
        start_crawl("|".join(urls), PIPELINE, settings, tmp_path, spider="cluster_spider.py")
        for _ in range(2)
    ]
    results = [w.wait(timeout=90) for w in workers]
    for code, log in results:
        assert code == 0, log[-3000:]
    counts = Counter(postgres.query(f'SELECT url, id FROM "{postgres.table}"'))
    assert set(counts.values()) == {1}
    assert len(counts) == 8 * 3000
