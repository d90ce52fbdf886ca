"""``ClickHousePipeline`` against a real ClickHouse (HTTP on 127.0.0.1:8123): table
creation, value encoding, ClickHouse's own error text, credentials, and real crawls
under the asyncio reactor (aiohttp) and under a plain Twisted reactor (thread)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scrapy.utils.test import get_crawler

from scrapy_sse.durable import Cursor, Mark
from scrapy_sse.pipelines.base import JSONText
from scrapy_sse.pipelines.clickhouse import ClickHouseError, ClickHousePipeline
from tests.servers.sse_server import SSEServer
from tests.services import (
    ClickHouseTarget,
    clickhouse_target,
    log_stat,
    start_crawl,
    unique_name,
)

PIPELINE = "scrapy_sse.pipelines.clickhouse.ClickHousePipeline"


@pytest.fixture
def clickhouse() -> Iterator[ClickHouseTarget]:
    with clickhouse_target() as target:
        yield target


def make_pipeline(target: ClickHouseTarget, tmp_path: Path, **settings: Any) -> ClickHousePipeline:
    crawler = get_crawler(
        settings_dict={
            "SSE_CLICKHOUSE_DATABASE": target.database,
            "SSE_CLICKHOUSE_TABLE": target.table,
            "SSE_SPILL_DIR": str(tmp_path / "spill"),
            "SSE_SINK_RETRY_TIMES": 0,
            **settings,
        }
    )
    return ClickHousePipeline.from_crawler(crawler)


async def feed(pipeline: ClickHousePipeline, items: list[Any]) -> None:
    await pipeline.open_spider()
    for item in items:
        await pipeline.process_item(item)
    await pipeline.close_spider()


def test_create_table_and_values(clickhouse: ClickHouseTarget, tmp_path: Path) -> None:
    at = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    items = [
        {
            "n": 1,
            "s": "é€😀",
            "x": 1.5,
            "ok": True,
            "at": at,
            "day": dt.date(2024, 5, 6),
            "nested": {"k": [1, "é"]},
            "tags": ["a"],
            "none": None,
        },
        {"n": 2, "none": "later text", "extra": "not a column"},
    ]
    pipeline = make_pipeline(
        clickhouse, tmp_path, SSE_CLICKHOUSE_CREATE_TABLE=True, SSE_CLICKHOUSE_BATCH_SIZE=1
    )
    asyncio.run(feed(pipeline, items))
    described = clickhouse.query(f"DESCRIBE TABLE {clickhouse.table} FORMAT JSONEachRow")
    types = {row["name"]: row["type"] for row in map(json.loads, described.splitlines())}
    assert types == {
        "n": "Nullable(Int64)",
        "s": "Nullable(String)",
        "x": "Nullable(Float64)",
        "ok": "Nullable(UInt8)",
        "at": "Nullable(DateTime)",
        "day": "Nullable(Date)",
        "nested": "Nullable(String)",
        "tags": "Nullable(String)",
        "none": "Nullable(String)",
    }
    rows = clickhouse.query(
        f"SELECT n, s, x, ok, toUnixTimestamp(at), toString(day), nested, tags, none "
        f"FROM {clickhouse.table} ORDER BY n FORMAT JSONCompact"
    )
    assert json.loads(rows)["data"] == [
        # Int64 values come back quoted (ClickHouse's default for 64-bit integers).
        ["1", "é€😀", 1.5, 1, int(at.timestamp()), "2024-05-06", '{"k":[1,"é"]}', '["a"]', None],
        ["2", None, None, None, None, None, None, None, "later text"],
    ]


def test_clickhouse_error_text_is_raised(clickhouse: ClickHouseTarget, tmp_path: Path) -> None:
    clickhouse.query(
        f"CREATE TABLE {clickhouse.table} (n Int64, s String) ENGINE = MergeTree ORDER BY n"
    )

    async def run() -> None:
        pipeline = make_pipeline(clickhouse, tmp_path)
        await pipeline.open()
        await pipeline.write_batch([{"n": 1, "s": "a"}, {"n": 2, "s": "b", "unknown": 1}])
        with pytest.raises(ClickHouseError, match=r"HTTP \d+: Code: \d+.*DB::Exception"):
            await pipeline.write_batch([{"n": 3, "s": "c"}, {"n": "not a number", "s": "d"}])
        await pipeline.close()

    asyncio.run(run())
    # The failed insert was one block: all-or-nothing, so nothing of it is stored.
    assert clickhouse.rows("n") == [{"n": "1", "s": "a"}, {"n": "2", "s": "b"}]


def test_missing_table_fails_at_open(clickhouse: ClickHouseTarget, tmp_path: Path) -> None:
    pipeline = make_pipeline(clickhouse, tmp_path)
    with pytest.raises(ClickHouseError, match="SSE_CLICKHOUSE_CREATE_TABLE"):
        asyncio.run(pipeline.open())


def test_credentials_are_sent(clickhouse: ClickHouseTarget, tmp_path: Path) -> None:
    wrong = make_pipeline(
        clickhouse, tmp_path, SSE_CLICKHOUSE_USER="default", SSE_CLICKHOUSE_PASSWORD="wrong"
    )
    with pytest.raises(ClickHouseError, match=r"HTTP 401.*password"):
        asyncio.run(wrong.open())
    right = make_pipeline(
        clickhouse, tmp_path, SSE_CLICKHOUSE_USER="default", SSE_CLICKHOUSE_CREATE_TABLE=True
    )
    asyncio.run(feed(right, [{"n": 1}]))
    assert clickhouse.count() == 1


@pytest.mark.parametrize(
    "reactor",
    [
        pytest.param("twisted.internet.asyncioreactor.AsyncioSelectorReactor", id="aiohttp"),
        pytest.param("twisted.internet.epollreactor.EPollReactor", id="thread"),
    ],
)
def test_crawl_stores_every_event(
    clickhouse: ClickHouseTarget, sse_server: SSEServer, tmp_path: Path, reactor: str
) -> None:
    url = sse_server.url(f"/stream?n=300&chunk=7&key={unique_name('ch')}")
    settings = {
        "SSE_CLICKHOUSE_DATABASE": clickhouse.database,
        "SSE_CLICKHOUSE_TABLE": clickhouse.table,
        "SSE_CLICKHOUSE_CREATE_TABLE": "True",
        "SSE_BATCH_SIZE": 64,
        "TWISTED_REACTOR": reactor,
    }
    code, log = start_crawl(url, PIPELINE, settings, tmp_path).wait(timeout=90)
    assert code == 0, log[-3000:]
    assert ("with aiohttp" if reactor.endswith("AsyncioSelectorReactor") else "in a thread") in log
    rows = clickhouse.rows("toUInt64(id)")
    assert len(rows) == 300
    for i, row in enumerate(rows, 1):
        assert (row["url"], row["event"], row["id"]) == (url, "message", str(i))
        assert json.loads(row["data"]) == json.loads(row["json"]) == {"seq": i, "text": "é€😀"}
        assert isinstance(row["received_at"], float)
    assert log_stat(log, "sse/sink/clickhouse/rows_written") == 300


def test_text_values_arrive_as_they_were_in_either_format(
    clickhouse: ClickHouseTarget, tmp_path: Path
) -> None:
    # Rows with the same fields go as TabSeparated (escaped a column at a time), a
    # batch whose rows differ in their fields as JSONEachRow (a missing field takes
    # the column's default): both store every character as it was.
    clickhouse.query(
        f"CREATE TABLE {clickhouse.table} (n Int64, s Nullable(String), j String) "
        "ENGINE = MergeTree ORDER BY n"
    )
    text = 'tab\there\nnew line\rcr back\\slash \\N é€😀 "q"'
    uniform = [{"n": 1, "s": text, "j": JSONText('{"p": 1.50}')}, {"n": 2, "s": None, "j": ""}]
    mixed = [{"n": 3, "s": text, "j": "x\ty"}, {"n": 4, "s": text}]
    pipeline = make_pipeline(clickhouse, tmp_path, SSE_CLICKHOUSE_BATCH_SIZE=2)

    async def run() -> None:
        await pipeline.open()
        await pipeline.write_batch(uniform)
        await pipeline.write_batch(mixed)
        await pipeline.close()

    asyncio.run(run())
    rows = clickhouse.query(f"SELECT n, s, j FROM {clickhouse.table} ORDER BY n FORMAT JSONCompact")
    assert json.loads(rows)["data"] == [
        ["1", text, '{"p": 1.50}'],
        ["2", None, ""],
        ["3", text, "x\ty"],
        ["4", text, ""],  # (not NULL, which a String column cannot hold)
    ]


def test_an_encoded_batch_left_by_a_crash_is_sent_again_as_it_was(
    clickhouse: ClickHouseTarget, tmp_path: Path
) -> None:
    # The journal keeps a batch as the request that writes it (encoded once): after a
    # crash the next crawl sends that request again, with its token, and resumes the
    # stream after it; a spilled request (the server was down) is replayed as it was.
    clickhouse.query(
        f"CREATE TABLE {clickhouse.table} (n Int64, s Nullable(String)) "
        "ENGINE = MergeTree ORDER BY n"
    )
    cursor = Cursor("2", 2, Mark(2, 0), "3")

    async def run() -> None:
        crashed = make_pipeline(clickhouse, tmp_path)
        await crashed.open()
        payload = crashed.encode_batch([{"n": 1, "s": "a\tb"}, {"n": 2, "s": None}])
        assert payload is not None and "TabSeparated" in payload.splitlines()[0]
        crashed._write_journal([{}, {}], {"stream": cursor}, 1, "token-1", payload)
        spilled = crashed.encode_batch([{"n": 3, "s": "c"}])
        crashed._write_spill_file([{}], 2, {}, "token-2", spilled)
        await crashed.close()

        restarted = make_pipeline(clickhouse, tmp_path)
        await restarted.open_spider()
        assert restarted.stored == {"stream": cursor}
        await restarted.close_spider()

    asyncio.run(run())
    assert [(r["n"], r["s"]) for r in clickhouse.rows("n")] == [
        ("1", "a\tb"),
        ("2", None),
        ("3", "c"),
    ]
    spill = tmp_path / "spill" / "clickhouse"
    assert not list(spill.rglob("*.jsonl"))
