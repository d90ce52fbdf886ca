"""``RedisStreamPipeline`` against a real Redis: field encoding, stream templates,
MAXLEN trimming, a lost reply, and real crawls (one with the pipeline's connection
killed over and over mid-crawl) that must store every event exactly once."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scrapy.exceptions import DropItem
from scrapy.utils.test import get_crawler

from scrapy_sse.pipelines.base import JSONText
from scrapy_sse.pipelines.redis import RedisStreamPipeline
from tests.servers.sse_server import SSEServer
from tests.services import (
    LoseReplyProxy,
    RedisTarget,
    log_stat,
    redis_target,
    sink_stat,
    start_crawl,
    unique_name,
    wait_until,
)

PIPELINE = "scrapy_sse.pipelines.redis.RedisStreamPipeline"


@pytest.fixture
def redis_t() -> Iterator[RedisTarget]:
    with redis_target() as target:
        yield target


def make_pipeline(target: RedisTarget, tmp_path: Path, **settings: Any) -> RedisStreamPipeline:
    crawler = get_crawler(
        settings_dict={
            "SSE_REDIS_URL": target.url,
            "SSE_REDIS_STREAM": f"{target.prefix}:events",
            "SSE_REDIS_DEDUP_PREFIX": f"{target.prefix}:batch:",
            "SSE_REDIS_CURSOR_KEY": f"{target.prefix}:cursors",
            "SSE_SPILL_DIR": str(tmp_path / "spill"),
            "SSE_SINK_RETRY_BACKOFF": 0.05,
            **settings,
        }
    )
    return RedisStreamPipeline.from_crawler(crawler)


async def feed(pipeline: RedisStreamPipeline, items: list[Any]) -> None:
    await pipeline.open_spider()
    for item in items:
        await pipeline.process_item(item)
    await pipeline.close_spider()


@pytest.mark.parametrize("form", ["json", "args"])
def test_field_encoding(
    redis_t: RedisTarget, tmp_path: Path, form: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A batch goes to the script as one JSON text, or (when a value is bytes, which
    # JSON cannot carry) as an argument per field: both store the same entries.
    at = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    item = {
        "s": 'é€😀 "quoted"\n\ttab \\',
        "b": b"raw" if form == "args" else "raw",
        "i": -7,
        "big": 2**70,
        "f": 1.25,
        "g": 0.1 + 0.2,
        "ok": True,
        "no": False,
        "nested": {"k": [1, "é"], "at": at},
        "list": [1, 2],
        "none": None,
        "at": at,
        "json": JSONText('{"p": 1.50}'),
    }
    with caplog.at_level(logging.WARNING):
        asyncio.run(feed(make_pipeline(redis_t, tmp_path), [item, {"none": None}, item]))
    entry = {
        "s": 'é€😀 "quoted"\n\ttab \\',
        "b": "raw",
        "i": "-7",
        "big": str(2**70),
        "f": "1.25",
        "g": "0.30000000000000004",
        "ok": "true",
        "no": "false",
        "nested": '{"k":[1,"é"],"at":"2024-05-06T07:08:09+00:00"}',
        "list": "[1,2]",
        "at": "2024-05-06T07:08:09+00:00",
        "json": '{"p": 1.50}',
    }
    # (An item whose fields are all None has nothing to store: skipped, said once.)
    assert redis_t.entries(f"{redis_t.prefix}:events") == [entry, entry]
    assert caplog.text.count("rows with only null fields are skipped") == 1


def test_stream_template_routes_and_drops_unroutable(redis_t: RedisTarget, tmp_path: Path) -> None:
    pipeline = make_pipeline(redis_t, tmp_path, SSE_REDIS_STREAM=f"{redis_t.prefix}:{{symbol}}")
    items = [{"symbol": "AAA" if i % 3 else "BBB", "n": i} for i in range(30)]

    async def run() -> None:
        await pipeline.open_spider()
        for item in items[:15]:
            await pipeline.process_item(item)
        with pytest.raises(DropItem, match="symbol"):
            await pipeline.process_item({"n": 99})
        for item in items[15:]:
            await pipeline.process_item(item)
        await pipeline.close_spider()

    asyncio.run(run())
    aaa = redis_t.entries(f"{redis_t.prefix}:AAA")
    bbb = redis_t.entries(f"{redis_t.prefix}:BBB")
    assert [int(e["n"]) for e in aaa] == [i for i in range(30) if i % 3]
    assert [int(e["n"]) for e in bbb] == [i for i in range(30) if not i % 3]


def test_maxlen_trims_approximately(redis_t: RedisTarget, tmp_path: Path) -> None:
    pipeline = make_pipeline(redis_t, tmp_path, SSE_REDIS_MAXLEN=50, SSE_BATCH_SIZE=100)
    asyncio.run(feed(pipeline, [{"n": i} for i in range(2000)]))
    length = redis_t.length(f"{redis_t.prefix}:events")
    # "~": Redis trims whole nodes (100 entries by default), never below MAXLEN.
    assert 50 <= length <= 250
    last = redis_t.entries(f"{redis_t.prefix}:events")[-1]
    assert last == {"n": "1999"}


def test_retried_batch_is_not_written_twice(redis_t: RedisTarget, tmp_path: Path) -> None:
    """The server runs the batch, the reply never arrives: the resent script call
    carries the same batch token and does nothing."""

    async def run() -> tuple[RedisStreamPipeline, int]:
        async with LoseReplyProxy(6379, b"EVALSHA") as proxy:
            url = f"redis://127.0.0.1:{proxy.port}/0?client_name={redis_t.client_name}"
            pipeline = make_pipeline(redis_t, tmp_path, SSE_REDIS_URL=url, SSE_BATCH_SIZE=10)
            await pipeline.open_spider()
            for i in range(10):
                await pipeline.process_item({"n": i})
            for _ in range(500):
                if sink_stat(pipeline, "rows_written") >= 10:
                    break
                await asyncio.sleep(0.02)
            proxy.arm()
            for i in range(10, 25):
                await pipeline.process_item({"n": i})
            await pipeline.close_spider()
            return pipeline, proxy.cuts

    pipeline, cuts = asyncio.run(run())
    assert cuts == 1
    entries = redis_t.entries(f"{redis_t.prefix}:events")
    assert [int(e["n"]) for e in entries] == list(range(25))
    assert sink_stat(pipeline, "in_doubt_batches_skipped") == 1


# --- real crawls ---------------------------------------------------------------------


def crawl_settings(target: RedisTarget, stream: str, **extra: Any) -> dict[str, Any]:
    return {
        "SSE_REDIS_URL": target.url,
        "SSE_REDIS_STREAM": stream,
        "SSE_REDIS_DEDUP_PREFIX": f"{target.prefix}:batch:",
        "SSE_REDIS_CURSOR_KEY": f"{target.prefix}:cursors",
        **extra,
    }


def test_crawl_stores_every_event(
    redis_t: RedisTarget, sse_server: SSEServer, tmp_path: Path
) -> None:
    url = sse_server.url(f"/stream?n=300&chunk=7&key={unique_name('redis')}")
    stream = f"{redis_t.prefix}:{{event}}"  # a template filled from SSEEventItem fields
    # CONCURRENT_ITEMS=1 keeps stream order through an async pipeline (README).
    settings = crawl_settings(redis_t, stream, SSE_BATCH_SIZE=64, CONCURRENT_ITEMS=1)
    crawl = start_crawl(url, PIPELINE, settings, tmp_path)
    code, log = crawl.wait(timeout=90)
    assert code == 0, log[-3000:]
    entries = redis_t.entries(f"{redis_t.prefix}:message")
    assert len(entries) == 300
    for i, entry in enumerate(entries, 1):
        assert (entry["url"], entry["event"], entry["id"]) == (url, "message", str(i))
        assert json.loads(entry["data"]) == json.loads(entry["json"]) == {"seq": i, "text": "é€😀"}
        float(entry["received_at"])
    assert log_stat(log, "sse/sink/redis/rows_written") == 300


def test_crawl_loses_nothing_when_connection_is_killed_repeatedly(
    redis_t: RedisTarget, sse_server: SSEServer, tmp_path: Path
) -> None:
    """The pipeline's connection is killed every 20 ms for 1.5 s (only that client,
    by name: the Redis server is shared); every event must arrive exactly once."""
    n = 4000
    url = sse_server.url(f"/stream?n={n}&delay=0.001&ascii=1&key={unique_name('redis')}")
    stream = f"{redis_t.prefix}:events"
    settings = crawl_settings(
        redis_t,
        stream,
        SSE_BATCH_SIZE=50,
        SSE_FLUSH_INTERVAL=0.1,
        SSE_SINK_RETRY_TIMES=1,
        SSE_SINK_RETRY_BACKOFF=0.05,
    )
    crawl = start_crawl(url, PIPELINE, settings, tmp_path)
    try:
        assert wait_until(lambda: redis_t.length(stream) >= 200, timeout=60), "no entries"
        kills = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and crawl.running:
            kills += redis_t.kill_pipeline()
            time.sleep(0.02)
        assert kills >= 2
        assert crawl.running, "the stream ended before the outage did; make it longer"
    finally:
        code, log = crawl.wait(timeout=120)
    assert code == 0, log[-3000:]
    ids = [int(e["id"]) for e in redis_t.entries(stream)]
    assert sorted(ids) == list(range(1, n + 1))  # all of them, none twice
    assert log_stat(log, "sse/sink/redis/rows_written") >= n
