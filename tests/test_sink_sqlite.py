"""``SQLitePipeline``: real SQLite files, in-process and in real crawls.

The crawls run ``tests/sink_spiders.py`` with ``scrapy runspider`` against the
fault-injecting SSE server; "the sink goes down" is another connection holding an
EXCLUSIVE lock on the database, as a backup job or a long migration would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from scrapy.utils.test import get_crawler

from scrapy_sse.events import SSEBatch, SSEEvent
from scrapy_sse.pipelines.base import batch_rows
from scrapy_sse.pipelines.sqlite import SQLitePipeline

from .servers.sse_server import SSEServer
from .sink_spiders import AttrsItem, DataclassItem, ScrapyItem, SinkCrawl, run_sink_crawl
from .test_pipelines_base import run, stat, until

SINK = {"scrapy_sse.pipelines.SQLitePipeline": 800}


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def pipeline(tmp_path: Path, **settings: Any) -> SQLitePipeline:
    crawler = get_crawler(
        settings_dict={
            "SSE_SQLITE_PATH": str(tmp_path / "db" / "items.sqlite3"),
            "SSE_SPILL_DIR": str(tmp_path / "spill"),
            "SSE_FLUSH_INTERVAL": 3600,
            **settings,
        }
    )
    return SQLitePipeline.from_crawler(crawler)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock from another connection: the sink is "down"."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_any_items_become_rows(tmp_path: Path) -> None:
    db = tmp_path / "db" / "items.sqlite3"

    async def main() -> None:
        sink = pipeline(tmp_path, SSE_BATCH_SIZE=3)
        await sink.open_spider()
        await sink.process_item({"seq": 1, "text": "é€😀", "payload": {"a": [1, 2]}})
        await sink.process_item(DataclassItem(seq=2, text="b", event_id="2", kind="dataclass"))
        await sink.process_item(AttrsItem(seq=3, text="c", event_id="3", kind="attrs"))
        await sink.process_item(ScrapyItem(seq=4))  # fields left out: NULL
        await sink.process_item(
            {
                "seq": 5,
                "late": True,  # a field never seen before: a new column
                "price": Decimal("1.10"),
                "at": dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
                "big": 2**70,
                "raw": b"\x00\x01",
                "ratio": 0.5,
                "tags": ("x", "y"),
            }
        )
        await sink.close_spider()

    run(main)
    columns = [row[1] for row in query(db, "PRAGMA table_info(items)")]
    assert columns == [
        "seq",
        "text",
        "payload",
        "event_id",
        "kind",
        "late",
        "price",
        "at",
        "big",
        "raw",
        "ratio",
        "tags",
    ]
    rows = query(db, "SELECT seq, text, payload, event_id, kind FROM items ORDER BY rowid")
    assert rows == [
        (1, "é€😀", '{"a": [1, 2]}', None, None),
        (2, "b", "{}", "2", "dataclass"),
        (3, "c", "{}", "3", "attrs"),
        (4, None, None, None, None),
        (5, None, None, None, None),
    ]
    (last,) = query(
        db,
        "SELECT late, price, at, big, raw, ratio, tags, typeof(seq), typeof(ratio), "
        "typeof(raw) FROM items WHERE seq = 5",
    )
    assert last == (
        1,
        "1.10",
        "2025-01-02T03:04:05+00:00",
        str(2**70),
        b"\x00\x01",
        0.5,
        '["x", "y"]',
        "integer",
        "real",
        "blob",
    )
    assert query(db, "PRAGMA journal_mode") == [("wal",)]


def test_configured_columns_and_an_existing_table(tmp_path: Path) -> None:
    db = tmp_path / "db" / "items.sqlite3"

    async def main() -> None:
        sink = pipeline(tmp_path, SSE_SQLITE_COLUMNS=["seq", "price"], SSE_SQLITE_TABLE="quotes")
        await sink.open_spider()  # the table exists before the first row
        assert [r[1] for r in query(db, "PRAGMA table_info(quotes)")] == ["seq", "price"]
        await sink.process_item({"price": 2.5, "seq": 1, "note": "n"})
        await sink.close_spider()

        missing = pipeline(tmp_path, SSE_SQLITE_CREATE_TABLE=False, SSE_SQLITE_TABLE="nope")
        with pytest.raises(ValueError, match="SSE_SQLITE_CREATE_TABLE"):
            await missing.open_spider()

        existing = pipeline(tmp_path, SSE_SQLITE_CREATE_TABLE=False, SSE_SQLITE_TABLE="quotes")
        await existing.open_spider()
        await existing.process_item({"seq": 2, "price": 3.0})
        await existing.close_spider()

    run(main)
    assert query(db, "SELECT seq, price, note FROM quotes ORDER BY seq") == [
        (1, 2.5, "n"),
        (2, 3.0, None),
    ]


def test_a_batch_is_one_transaction(tmp_path: Path) -> None:
    """A failing row rolls back its whole batch (and its ALTER TABLE), which is spilled."""
    db = tmp_path / "db" / "items.sqlite3"
    db.parent.mkdir()
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE items (seq INTEGER UNIQUE)")
        conn.execute("INSERT INTO items VALUES (3)")
        conn.commit()

    async def main() -> None:
        sink = pipeline(tmp_path, SSE_BATCH_SIZE=3, SSE_SQLITE_RETRY_TIMES=0)
        await sink.open_spider()
        for seq in (1, 2, 3):  # 3 violates UNIQUE
            await sink.process_item({"seq": seq, "new": "x"})
        await until(
            lambda: (
                sink.crawler.stats and sink.crawler.stats.get_value("sse/sink/sqlite/spilled_rows")
            )
        )
        assert query(db, "SELECT seq FROM items") == [(3,)]
        assert [r[1] for r in query(db, "PRAGMA table_info(items)")] == ["seq"]
        for seq in (4, 5, 6):  # the next batch works: columns are read again
            await sink.process_item({"seq": seq, "other": "y"})
        await sink.close_spider()

    run(main)
    assert query(db, "SELECT seq, other FROM items ORDER BY seq") == [
        (3, None),
        (4, "y"),
        (5, "y"),
        (6, "y"),
    ]
    assert len(list((tmp_path / "spill" / "sqlite").glob("*.jsonl"))) == 1  # kept, not lost


def test_a_locked_database_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "db" / "items.sqlite3"

    async def main() -> None:
        sink = pipeline(
            tmp_path,
            SSE_BATCH_SIZE=5,
            SSE_SQLITE_TIMEOUT=0.05,
            SSE_SQLITE_RETRY_TIMES=1,
            SSE_SQLITE_RETRY_BACKOFF=0.01,
        )
        await sink.open_spider()
        stats = sink.crawler.stats
        assert stats is not None
        for seq in range(5):
            await sink.process_item({"seq": seq})
        await until(lambda: stats.get_value("sse/sink/sqlite/rows_written") == 5)
        with exclusive_lock(db):
            for seq in range(5, 15):
                await sink.process_item({"seq": seq})
            await until(lambda: stats.get_value("sse/sink/sqlite/spilled_rows") == 10)
        for seq in range(15, 20):  # the lock is gone: this flush replays the spill
            await sink.process_item({"seq": seq})
        await until(lambda: stats.get_value("sse/sink/sqlite/replayed_rows") == 10)
        await sink.close_spider()

    run(main)
    assert sorted(r[0] for r in query(db, "SELECT seq FROM items")) == list(range(20))
    assert not list((tmp_path / "spill" / "sqlite").glob("*.jsonl"))


# -- real crawls ----------------------------------------------------------------------


def test_a_crawl_stores_every_item_exactly(sse_server: SSEServer, tmp_path: Path) -> None:
    url = sse_server.url("/stream?n=200&done=1&chunk=7&key=sqlite-crawl")
    stats, log = run_sink_crawl(
        tmp_path,
        settings={"ITEM_PIPELINES": SINK, "SSE_BATCH_SIZE": 16, "SSE_FLUSH_INTERVAL": 0.2},
        args={"url": url, "kind": "mixed"},
    )
    rows = query(tmp_path / "items.sqlite3", "SELECT * FROM items ORDER BY seq")
    assert len(rows) == 200, log
    assert [r[0] for r in rows] == list(range(1, 201))
    assert {r[1] for r in rows} == {"é€😀"}
    assert [r[2] for r in rows] == [str(i) for i in range(1, 201)]
    assert {r[3] for r in rows} == {"dict", "dataclass", "attrs", "scrapy"}
    assert json.loads(rows[41][4]) == {"seq": 42, "tags": ["a", "b"]}
    assert stats["sse/sink/sqlite/rows_written"] == 200 == stats["item_scraped_count"]
    # Batched: at most the buffer's bound (4 x 16 rows) per write, rows that piled up
    # while one write ran going together into the next.
    assert 200 // 64 <= stats["sse/sink/sqlite/batches"] < 200
    # A crawl that goes well says so quietly: no warning (a component that disables
    # itself by design must not log one either).
    assert not [line for line in log.splitlines() if " WARNING: " in line or " ERROR: " in line]


def test_batch_delivery_reaches_the_sink_without_unpacking(
    sse_server: SSEServer, tmp_path: Path
) -> None:
    url = sse_server.url("/stream?n=300&done=1&chunk=0&key=sqlite-batches")
    stats, log = run_sink_crawl(
        tmp_path,
        settings={"ITEM_PIPELINES": SINK, "SSE_BATCH_SIZE": 100},
        args={"url": url, "batch": 50},
    )
    rows = query(tmp_path / "items.sqlite3", "SELECT id, event, url, json FROM items")
    assert sorted(int(r[0]) for r in rows) == list(range(1, 301)), log
    assert {r[1] for r in rows} == {"message"}
    assert {r[2] for r in rows} == {url}
    assert json.loads(rows[0][3])["seq"] == int(rows[0][0])
    assert stats["item_scraped_count"] < 300  # one pipeline call per batch of events
    assert stats["sse/sink/sqlite/rows_written"] == 300


def test_ctrl_c_flushes_what_is_buffered(sse_server: SSEServer, tmp_path: Path) -> None:
    # A batch size and interval that never flush during the crawl: every row that
    # reaches the database was written by the final flush of the graceful stop.
    url = sse_server.url("/stream?n=100000&delay=0.002&key=sqlite-sigint")
    crawl = SinkCrawl(
        tmp_path,
        settings={
            "ITEM_PIPELINES": SINK,
            "SSE_BATCH_SIZE": 1_000_000,
            "SSE_FLUSH_INTERVAL": 3600,
        },
        args={"url": url, "ready_after": 100},
    )
    try:
        crawl.wait_log("SINK-READY")
        assert not (tmp_path / "items.sqlite3").exists() or not query(
            tmp_path / "items.sqlite3", "SELECT name FROM sqlite_master WHERE name = 'items'"
        )
        crawl.stop()
        stats = crawl.finish()
    finally:
        crawl.kill()
    count = stats["item_scraped_count"]
    assert count >= 100
    seqs = [r[0] for r in query(tmp_path / "items.sqlite3", "SELECT seq FROM items ORDER BY seq")]
    assert seqs == list(range(1, count + 1)), crawl.log
    assert stats["sse/sink/sqlite/batches"] == 1


def test_a_sink_that_goes_down_mid_crawl_and_comes_back_loses_nothing(
    sse_server: SSEServer, tmp_path: Path
) -> None:
    url = sse_server.url("/stream?n=100000&delay=0.005&key=sqlite-down")
    db = tmp_path / "items.sqlite3"
    crawl = SinkCrawl(
        tmp_path,
        settings={
            "ITEM_PIPELINES": SINK,
            "SSE_BATCH_SIZE": 20,
            "SSE_FLUSH_INTERVAL": 0.1,
            "SSE_SQLITE_TIMEOUT": 0.05,
            "SSE_SQLITE_RETRY_TIMES": 1,
            "SSE_SQLITE_RETRY_BACKOFF": 0.05,
        },
        args={"url": url, "ready_after": 40},
    )
    try:
        crawl.wait_log("SINK-READY")
        crawl.wait_log("[scrapy_sse.pipelines.base] INFO: Sink sqlite")
        with exclusive_lock(db):
            crawl.wait_log("spilled", count=3)
        crawl.wait_log("replayed", count=3)
        crawl.stop()
        stats = crawl.finish()
    finally:
        crawl.kill()
    count = stats["item_scraped_count"]
    seqs = sorted(r[0] for r in query(db, "SELECT seq FROM items"))
    assert seqs == list(range(1, count + 1)), crawl.log
    spilled = stats["sse/sink/sqlite/spilled_rows"]
    assert spilled > 0
    assert stats["sse/sink/sqlite/replayed_rows"] == spilled
    assert stats["sse/sink/sqlite/rows_written"] + spilled == count
    assert not list((tmp_path / "sse_spill" / "sqlite").glob("*.jsonl"))


def test_items_sqlite_pipeline_is_importable_from_the_package() -> None:
    from scrapy_sse.pipelines import SQLitePipeline as Exported

    assert Exported is SQLitePipeline
    assert asyncio.iscoroutinefunction(SQLitePipeline.process_item)


def test_crawls_opening_one_new_file_at_once_all_open_it(tmp_path: Path) -> None:
    # Three pipelines (the demo runs three crawls on one file) switch a new file to
    # WAL at the same moment, 20 times over; SQLite answers some of them "database is
    # locked" at once (a would-be deadlock, no busy wait): none may fail to open.
    for attempt in range(20):
        settings = {"SSE_SQLITE_PATH": str(tmp_path / f"race{attempt}.sqlite3")}
        sinks = [pipeline(tmp_path, **settings, SSE_SQLITE_TABLE=f"t{i}") for i in range(3)]
        barrier = threading.Barrier(len(sinks))

        def open_at_once(sink: SQLitePipeline, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            sink._open()

        with ThreadPoolExecutor(len(sinks)) as pool:
            for future in [pool.submit(open_at_once, sink) for sink in sinks]:
                future.result()
        for sink in sinks:
            assert sink._conn is not None
            sink._conn.close()


@pytest.mark.parametrize("in_store", [True, False], ids=["json_valid", "python"])
def test_events_json_is_checked_by_sqlite_or_by_python_alike(
    tmp_path: Path, in_store: bool
) -> None:
    # Batch delivery leaves an event's JSON unchecked for this sink: SQLite checks it
    # (json_valid) as it inserts, or Python does where SQLite cannot. Valid JSON is
    # stored as sent, anything else as NULL, and a batch spilled on the way keeps it so.
    db = tmp_path / "db" / "items.sqlite3"
    datas = ['{"p": 1.50}', "[1, 2]", "[DONE]", "{not json", "7", '"abc"', "plain"]
    events = [SSEEvent("m", data, str(i)) for i, data in enumerate(datas, 1)]

    async def main() -> None:
        sink = pipeline(tmp_path)
        await sink.open_spider()
        sink._json_valid = in_store
        await sink.process_item(SSEBatch(events[:4]))
        await sink.close_spider()
        # A batch spilled while the file was locked, replayed by the next crawl.
        spilled = pipeline(tmp_path)
        spilled._write_spill_file(batch_rows(SSEBatch(events[4:]), check_json=False), 1, {}, None)
        replay = pipeline(tmp_path)
        await replay.open_spider()
        await replay.close_spider()

    run(main)
    rows = query(db, "SELECT id, json FROM items ORDER BY CAST(id AS INTEGER)")
    assert rows == [
        ("1", '{"p": 1.50}'),
        ("2", "[1, 2]"),
        ("3", None),
        ("4", None),
        ("5", 7),
        ("6", "abc"),
        ("7", None),
    ]


def test_a_locked_file_is_waited_for_in_a_thread_not_on_the_reactor(tmp_path: Path) -> None:
    # Another connection holds the write lock until the reactor tells it to let go: a
    # sink that waited for the lock on the reactor would never let that happen (until
    # its lock timeout, then retries and a spill).
    db = tmp_path / "db" / "items.sqlite3"
    release = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        with exclusive_lock(db):
            holding.set()
            release.wait(20)

    async def main() -> None:
        sink = pipeline(tmp_path, SSE_BATCH_SIZE=1, SSE_SQLITE_TIMEOUT=10)
        await sink.open_spider()
        await sink.process_item({"seq": 1})
        await until(lambda: stat(sink, "rows_written") == 1)
        holder = threading.Thread(target=hold)
        holder.start()
        await until(holding.is_set)
        await sink.process_item({"seq": 2})  # its write waits for the lock
        await asyncio.sleep(0.3)
        assert stat(sink, "rows_written") == 1
        release.set()  # (only possible while the reactor turns)
        await until(lambda: stat(sink, "rows_written") == 2)
        holder.join()
        await sink.close_spider()
        assert stat(sink, "retries") == stat(sink, "spilled_rows") == 0

    run(main)
    assert query(db, "SELECT seq FROM items ORDER BY seq") == [(1,), (2,)]


def test_sqlite_batches_default_to_2000_rows_unless_set(tmp_path: Path) -> None:
    # (A commit is an fsync: fewer, bigger ones at busy rates; the interval still
    # commits a quiet feed every second.)
    assert pipeline(tmp_path).batch_size == 2000
    assert pipeline(tmp_path, SSE_BATCH_SIZE=100).batch_size == 100
    assert pipeline(tmp_path, SSE_BATCH_SIZE=100, SSE_SQLITE_BATCH_SIZE=7).batch_size == 7
