"""The cluster's parts one at a time: shares (pure), leases in real Redis, fencing in
real PostgreSQL. The whole, with real worker processes, is tests/test_cluster_crash.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scrapy_sse.cluster.balance import plan, share
from scrapy_sse.cluster.leases import LeaseStore, cluster_keys
from scrapy_sse.durable import CURRENT, Track
from scrapy_sse.pipelines.base import Fenced
from scrapy_sse.pipelines.postgres import PostgresPipeline
from tests.services import (
    REDIS_URL,
    PostgresTarget,
    postgres_target,
    redis_target,
    sink_stat,
    unique_name,
)
from tests.test_sink_postgres import make_pipeline, wait_written

# --- shares (pure) ---------------------------------------------------------------------


def test_shares_cover_every_stream_within_one_of_even() -> None:
    for streams in range(0, 60):
        for workers in range(1, 8):
            weights = {f"w{i}": 1.0 for i in range(workers)}
            shares = [share(streams, weights, w) for w in weights]
            assert sum(shares) >= streams  # (every stream has a worker to hold it)
            assert max(shares, default=0) <= -(-streams // workers)  # ceil: one of even


def test_weights_split_streams_in_proportion() -> None:
    weights = {"big": 3.0, "small": 1.0}
    assert (share(40, weights, "big"), share(40, weights, "small")) == (30, 10)
    assert share(40, weights, "stranger") == 0  # (not a live worker)


def test_a_worker_over_its_share_hands_over_its_newest_streams() -> None:
    weights = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
    step = plan(worker="a", weights=weights, streams=24, held=[f"s{i}" for i in range(12)], free=0)
    assert step.take == 0
    assert step.hand_over == ("s6", "s7", "s8", "s9", "s10", "s11")


def test_a_worker_under_its_share_takes_what_is_free_up_to_it() -> None:
    weights = {"a": 1.0, "b": 1.0}
    assert plan(worker="a", weights=weights, streams=10, held=["s1"], free=9).take == 4
    assert plan(worker="a", weights=weights, streams=10, held=["s1"], free=2).take == 2
    assert plan(worker="a", weights=weights, streams=10, held=["s1"] * 5, free=5).take == 0


# --- leases (real Redis) ------------------------------------------------------------


@pytest.fixture
def cluster_name() -> Iterator[str]:
    with redis_target() as target:
        name = unique_name("cluster")
        yield name
        with target.client() as client:
            for key in client.scan_iter(match=f"sse:{{{name}}}:*", count=1000):
                client.delete(key)


def lease_stores(name: str, ttl: float, count: int) -> list[LeaseStore]:
    from redis.asyncio import Redis

    return [LeaseStore(Redis.from_url(REDIS_URL), name, f"worker{i}", ttl) for i in range(count)]


def test_each_stream_is_leased_to_one_worker_and_tokens_rise(cluster_name: str) -> None:
    keys = [f"s{i}" for i in range(10)]

    async def run() -> None:
        a, b = lease_stores(cluster_name, 0.5, 2)
        try:
            await a.declare({k: {"url": k} for k in keys})
            got_a, got_b = await asyncio.gather(a.acquire(keys, 10), b.acquire(keys, 10))
            assert sorted([*got_a, *got_b]) == keys  # (each once, whoever won)
            assert not set(got_a) & set(got_b)
            # A renewal by another worker does not extend the lease; the holder's does.
            holder, other = (a, b) if "s0" in got_a else (b, a)
            first = (got_a | got_b)["s0"]
            assert await other.renew(["s0"]) == ["s0"]
            assert await holder.renew(["s0"]) == []
            # Expired, it goes to the next worker with a higher fencing token.
            await asyncio.sleep(0.6)
            again = await other.acquire(["s0"], 1)
            assert again["s0"] > first
            assert await holder.renew(["s0"]) == ["s0"]  # (the old holder learns it lost it)
            # A completed stream is leased to nobody again, and not counted as open.
            await other.complete("s0")
            await asyncio.sleep(0.6)
            assert await a.acquire(["s0"], 1) == {}
            assert await a.open_streams() == 9
            # Only the holder releases a lease (the others expired meanwhile).
            held_by_a = list(await a.acquire(keys, 10))
            assert sorted(held_by_a) == keys[1:]
            assert await b.release(held_by_a) == 0
            assert await a.release(held_by_a) == 9
            assert len(await b.acquire(keys, 10)) == 9
        finally:
            for store in (a, b):
                await store.client.aclose()

    asyncio.run(run())


def test_a_worker_that_stops_its_heartbeat_leaves_the_live_set(cluster_name: str) -> None:
    async def run() -> None:
        a, b = lease_stores(cluster_name, 0.3, 2)
        try:
            await a.heartbeat(2.0, 0, time.time())
            await b.heartbeat(1.0, 0, time.time())
            assert await a.live_workers() == {"worker0": 2.0, "worker1": 1.0}
            await asyncio.sleep(0.4)
            await a.heartbeat(2.0, 0, time.time())
            assert await a.live_workers() == {"worker0": 2.0}
            await a.leave()
            assert await b.live_workers() == {}
        finally:
            for store in (a, b):
                await store.client.aclose()

    asyncio.run(run())


def test_cluster_keys_share_one_hash_tag() -> None:
    # (Redis Cluster runs a script only on keys of one slot: one tag for all of them.)
    assert {key.split("}")[0] for key in cluster_keys("prices").values()} == {"sse:{prices"}


# --- fencing (real PostgreSQL) -------------------------------------------------------


@pytest.fixture
def postgres() -> Iterator[PostgresTarget]:
    with postgres_target() as target:
        yield target
        target.query(f'DROP TABLE IF EXISTS "{target.table}_cursors"')


def worker_sink(postgres: PostgresTarget, path: Path, **settings: Any) -> PostgresPipeline:
    return make_pipeline(
        postgres,
        path,
        SSE_POSTGRES_CREATE_TABLE=True,
        SSE_POSTGRES_CURSOR_TABLE=f"{postgres.table}_cursors",
        SSE_CLUSTER_URL=REDIS_URL,
        SSE_FLUSH_INTERVAL=3600,
        **settings,
    )


async def deliver(sink: PostgresPipeline, track: Track, first: int, last: int) -> None:
    """Events ``first..last`` of ``track``, an item each, as a stream delivers them."""
    for i in range(first, last + 1):
        slot = track.open(str(i))
        token = CURRENT.set(slot)
        try:
            await sink.process_item({"stream": track.key, "id": i})
        finally:
            CURRENT.reset(token)
        track.settle(slot)


def stored(postgres: PostgresTarget) -> list[tuple[str, int]]:
    return [
        (stream, int(i))
        for stream, i in postgres.query(f'SELECT stream, id FROM "{postgres.table}" ORDER BY 1, 2')
    ]


def test_a_new_holder_fences_off_the_old_one(postgres: PostgresTarget, tmp_path: Path) -> None:
    """Worker A holds s1 and s2; B takes s1 over (a newer token, claimed in the store,
    where it reads the cursor A committed). A's next batch keeps its s2 rows and loses
    its s1 rows, which B, resuming from the cursor, writes once."""

    async def run() -> tuple[PostgresPipeline, PostgresPipeline]:
        a = worker_sink(postgres, tmp_path / "a", SSE_BATCH_SIZE=6)
        b = worker_sink(postgres, tmp_path / "b", SSE_BATCH_SIZE=2)
        await a.open_spider()
        await b.open_spider()
        assert await a.claim("s1", 10) is None  # (nothing stored yet)
        await a.claim("s2", 10)
        s1, s2 = Track("s1"), Track("s2")
        await deliver(a, s1, 1, 3)
        await deliver(a, s2, 1, 3)
        await wait_written(a, 6)

        cursor = await b.claim("s1", 11)
        assert cursor is not None and cursor.event_id == "3"
        with pytest.raises(Fenced):
            await a.claim("s1", 10)  # (an older token cannot claim back)
        await deliver(a, s1, 4, 5)  # A was paused: it still reads s1
        await deliver(a, s2, 4, 4)
        await a.close_spider()
        await deliver(b, Track("s1", "3", 3), 4, 5)
        await b.close_spider()
        return a, b

    a, _ = asyncio.run(run())
    assert stored(postgres) == [
        *((("s1", i)) for i in range(1, 6)),
        *(("s2", i) for i in range(1, 5)),
    ]
    assert sink_stat(a, "fenced_rows") == 2


def test_rows_of_an_earlier_holding_are_not_written_after_taking_the_stream_back(
    postgres: PostgresTarget, tmp_path: Path
) -> None:
    """A reads events 1-3 of s1 (not yet written), B takes s1 over and stores 1-3
    itself, then A takes s1 back (a newer token than B's). A's buffered rows belong to
    its earlier holding: written now they would be stored twice."""

    async def run() -> PostgresPipeline:
        a = worker_sink(postgres, tmp_path / "a", SSE_BATCH_SIZE=100)
        b = worker_sink(postgres, tmp_path / "b", SSE_BATCH_SIZE=3)
        await a.open_spider()
        await b.open_spider()
        await a.claim("s1", 10)
        earlier = Track("s1")
        earlier.fence = 10
        await deliver(a, earlier, 1, 3)  # (buffered in A)
        assert await b.claim("s1", 11) is None
        await deliver(b, Track("s1"), 1, 3)
        await wait_written(b, 3)
        cursor = await a.claim("s1", 12)
        assert cursor is not None and cursor.event_id == "3"
        now = Track("s1", "3", 3)
        now.fence = 12
        await deliver(a, now, 4, 5)
        await a.close_spider()
        await b.close_spider()
        return a

    a = asyncio.run(run())
    assert stored(postgres) == [("s1", i) for i in range(1, 6)]
    assert sink_stat(a, "fenced_rows") == 3


@contextlib.contextmanager
def refusing_writes(postgres: PostgresTarget) -> Iterator[Callable[[], object]]:
    """The data table, made to refuse every insert (a store that is down) until the
    function this yields is called."""
    refuse = f"{postgres.table}_refuse"
    postgres.query(f'CREATE TABLE "{postgres.table}" (stream text, id bigint)')
    postgres.query(
        f'CREATE FUNCTION "{refuse}"() RETURNS trigger LANGUAGE plpgsql AS '
        "$$ BEGIN RAISE EXCEPTION 'store refuses writes'; END $$"
    )
    postgres.query(
        f'CREATE TRIGGER refuse BEFORE INSERT ON "{postgres.table}" '
        f'FOR EACH ROW EXECUTE FUNCTION "{refuse}"()'
    )
    try:
        yield lambda: postgres.query(f'DROP TRIGGER refuse ON "{postgres.table}"')
    finally:
        postgres.query(f'DROP FUNCTION IF EXISTS "{refuse}"() CASCADE')


async def spilled(sink: PostgresPipeline, rows: int) -> None:
    """Wait (bounded) until ``rows`` rows are in the sink's spill files."""
    for _ in range(200):
        if sink_stat(sink, "spilled_rows") == rows:
            return
        await asyncio.sleep(0.02)
    assert sink_stat(sink, "spilled_rows") == rows


def test_a_spill_file_is_replayed_with_the_token_its_rows_were_read_under(
    postgres: PostgresTarget, tmp_path: Path
) -> None:
    """A spills events 1-2 of s1 (its store refuses writes), B takes s1 over and stores
    1-2 itself, then A takes s1 back. A's spill file must not be written under A's new
    token: its rows belong to the earlier holding."""

    async def run(accept_writes: Callable[[], object]) -> PostgresPipeline:
        a = worker_sink(postgres, tmp_path / "a", SSE_BATCH_SIZE=2, SSE_SINK_RETRY_TIMES=0)
        b = worker_sink(postgres, tmp_path / "b", SSE_BATCH_SIZE=2)
        await a.open_spider()
        await b.open_spider()
        await a.claim("s1", 10)
        earlier = Track("s1")
        earlier.fence = 10
        await deliver(a, earlier, 1, 2)
        await spilled(a, 2)
        accept_writes()
        await b.claim("s1", 11)
        await deliver(b, Track("s1"), 1, 2)
        await wait_written(b, 2)
        cursor = await a.claim("s1", 12)
        assert cursor is not None and cursor.event_id == "2"
        now = Track("s1", "2", 2)
        now.fence = 12
        await deliver(a, now, 3, 4)  # a write that works, then the replay
        await a.close_spider()
        await b.close_spider()
        return a

    with refusing_writes(postgres) as accept_writes:
        a = asyncio.run(run(accept_writes))
    assert stored(postgres) == [("s1", i) for i in range(1, 5)]
    assert sink_stat(a, "fenced_rows") == 2


def test_a_spill_file_replayed_after_a_takeover_keeps_only_the_streams_still_held(
    postgres: PostgresTarget, tmp_path: Path
) -> None:
    """A's store refuses writes: a batch of s1 and s2 rows is spilled. B then takes
    s1 over. When A's store works again, A replays the file without the s1 rows."""

    async def run(accept_writes: Callable[[], object]) -> PostgresPipeline:
        a = worker_sink(postgres, tmp_path / "a", SSE_BATCH_SIZE=4, SSE_SINK_RETRY_TIMES=0)
        b = worker_sink(postgres, tmp_path / "b")
        await a.open_spider()
        await b.open_spider()
        await a.claim("s1", 10)
        await a.claim("s2", 10)
        s1, s2 = Track("s1"), Track("s2")
        await deliver(a, s1, 1, 2)
        await deliver(a, s2, 1, 2)
        await spilled(a, 4)
        accept_writes()
        await b.claim("s1", 11)
        await deliver(a, s2, 3, 6)  # a batch that works, then the replay
        await a.close_spider()
        await b.close_spider()
        return a

    with refusing_writes(postgres) as accept_writes:
        a = asyncio.run(run(accept_writes))
    assert stored(postgres) == [("s2", i) for i in range(1, 7)]
    assert sink_stat(a, "fenced_rows") == 2
    assert not list((tmp_path / "a").rglob("*.jsonl"))  # (nothing left to replay)


# --- scrapy sse-cluster ---------------------------------------------------------------


def sse_cluster(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scrapy", "sse-cluster", "--url", REDIS_URL, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sse_cluster_command_shows_workers_streams_and_completes_one(cluster_name: str) -> None:
    keys = ["aaa111", "bbb222", "ccc333"]

    async def setup() -> None:
        (store,) = lease_stores(cluster_name, 30, 1)
        try:
            await store.declare({k: {"url": f"http://feed.example/{k}"} for k in keys})
            await store.heartbeat(2.0, 2, time.time() - 60)
            got = await store.acquire(keys[:2], 2)
            await store.report(
                {k: {"stored_id": f"id-{k}", "events": 7, "at": time.time()} for k in got}
            )
        finally:
            await store.client.aclose()

    asyncio.run(setup())
    shown = sse_cluster(cluster_name)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "1 live worker(s); 3 stream(s): 2 held, 1 waiting, 0 completed" in out
    assert "worker0" in out and "id-aaa111" in out and "http://feed.example/ccc333" in out
    assert "(waiting)" in out

    done = sse_cluster(cluster_name, "--complete", "ccc")
    assert done.returncode == 0, done.stderr
    state = json.loads(sse_cluster(cluster_name, "--json").stdout)
    assert [s["key"] for s in state["streams"] if s["done"]] == ["ccc333"]
    assert sse_cluster(cluster_name, "--complete", "zzz").returncode == 1  # (no such stream)


def test_a_parked_request_comes_back_whole_and_small() -> None:
    import scrapy

    from scrapy_sse import SSERequest
    from scrapy_sse.cluster.worker import pack, unpack

    class Spider(scrapy.Spider):
        name = "prices"

        def on_event(self, event: Any) -> None:
            pass

    spider = Spider()
    request = SSERequest(
        "https://feed.example/v1/prices?symbol=ABC",
        callback=spider.on_event,
        headers={"Authorization": "Bearer k"},
        meta={"sse_stream_key": "k1", "desk": "fx"},
        batch_size=50,
    )
    packed = pack(request, spider)
    assert isinstance(packed, bytes) and len(packed) < 700
    back = unpack(packed, spider)
    assert (back.url, back.callback, back.meta["desk"], back.batch_size) == (
        request.url,
        spider.on_event,
        "fx",
        50,
    )
    assert back.headers["Authorization"] == b"Bearer k"
    # A callback that is not a spider method cannot be named: the request is kept as is.
    odd = SSERequest("https://feed.example/odd", callback=lambda event: None)
    assert unpack(pack(odd, spider), spider) is odd
