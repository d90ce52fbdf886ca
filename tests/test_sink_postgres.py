"""``PostgresPipeline`` against a real PostgreSQL: types, columns, reconnects, a lost
COMMIT reply, and real crawls (one with its backend killed over and over mid-crawl)
that must store every event exactly once."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from scrapy.utils.test import get_crawler

from scrapy_sse.durable import Cursor, Mark
from scrapy_sse.events import SSEBatch, SSEEvent
from scrapy_sse.pipelines.base import JSONText, batch_rows
from scrapy_sse.pipelines.postgres import PostgresPipeline, TableMissingError
from tests.servers.sse_server import SSEServer
from tests.services import (
    LoseReplyProxy,
    PostgresTarget,
    log_stat,
    postgres_target,
    sink_stat,
    start_crawl,
    unique_name,
    wait_until,
)

PIPELINE = "scrapy_sse.pipelines.postgres.PostgresPipeline"
UTC = dt.timezone.utc


@pytest.fixture
def postgres() -> Iterator[PostgresTarget]:
    with postgres_target() as target:
        yield target


def make_pipeline(pg: PostgresTarget, tmp_path: Path, **settings: Any) -> PostgresPipeline:
    crawler = get_crawler(
        settings_dict={
            "SSE_POSTGRES_DSN": pg.dsn,
            "SSE_POSTGRES_TABLE": pg.table,
            "SSE_SPILL_DIR": str(tmp_path / "spill"),
            "SSE_SINK_RETRY_BACKOFF": 0.05,
            **settings,
        }
    )
    return PostgresPipeline.from_crawler(crawler)


async def wait_written(pipeline: PostgresPipeline, rows: int, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.02)):
        if sink_stat(pipeline, "rows_written") >= rows:
            break
        await asyncio.sleep(0.02)
    assert sink_stat(pipeline, "rows_written") >= rows


def test_create_table_maps_types_and_stores_values(
    postgres: PostgresTarget, tmp_path: Path
) -> None:
    at = dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    items = [
        {
            "name": "é€😀",
            "n": 1,
            "x": 1.5,
            "ok": True,
            "at": at,
            "payload": {"k": [1, "é"], "when": at},
            "tags": ["a", "b"],
            "maybe": None,
            "price": Decimal("1.10"),
            "blob": b"\x00\xff",
            "day": dt.date(2024, 5, 6),
        },
        {"name": "second", "n": 2, "maybe": "a plain string", "tags": []},
    ]

    async def run() -> None:
        # One row per batch: the table is typed from the first row alone.
        pipeline = make_pipeline(
            postgres,
            tmp_path,
            SSE_POSTGRES_CREATE_TABLE=True,
            SSE_POSTGRES_BATCH_SIZE=1,
            SSE_POSTGRES_MAX_BUFFER=1,
        )
        await pipeline.open_spider()
        for item in items:
            await pipeline.process_item(item)
        await pipeline.close_spider()

    asyncio.run(run())
    types = postgres.query(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = %s ORDER BY ordinal_position",
        (postgres.table,),
    )
    assert types == [
        ("name", "text"),
        ("n", "bigint"),
        ("x", "double precision"),
        ("ok", "boolean"),
        ("at", "timestamp with time zone"),
        ("payload", "jsonb"),
        ("tags", "jsonb"),
        ("maybe", "jsonb"),  # null in the first batch: JSON takes anything later
        ("price", "numeric"),
        ("blob", "bytea"),
        ("day", "date"),
    ]
    rows = postgres.query(f'SELECT * FROM "{postgres.table}" ORDER BY n')
    assert rows == [
        (
            "é€😀",
            1,
            1.5,
            True,
            at,
            {"k": [1, "é"], "when": at.isoformat()},
            ["a", "b"],
            None,
            Decimal("1.10"),
            b"\x00\xff",
            dt.date(2024, 5, 6),
        ),
        ("second", 2, None, None, None, None, [], "a plain string", None, None, None),
    ]


def test_existing_table_explicit_columns_and_unknown_fields(
    postgres: PostgresTarget, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    postgres.query(f'CREATE TABLE "{postgres.table}" (id bigint, payload jsonb, note text)')

    async def run() -> None:
        explicit = make_pipeline(postgres, tmp_path, SSE_POSTGRES_COLUMNS="id,payload,note")
        await explicit.open_spider()
        await explicit.process_item({"id": 1, "payload": "text", "note": {"n": 1}, "x": 9})
        await explicit.close_spider()
        inferred = make_pipeline(postgres, tmp_path / "2")
        await inferred.open_spider()
        await inferred.process_item({"id": 2, "extra": "dropped", "payload": [1, 2]})
        await inferred.process_item({"id": 3, "note": "n3", "later": True})
        await inferred.close_spider()

    with caplog.at_level(logging.WARNING, logger="scrapy_sse.pipelines.postgres"):
        asyncio.run(run())
    rows = postgres.query(f'SELECT id, payload, note FROM "{postgres.table}" ORDER BY id')
    # A string in a jsonb column is a JSON string; a dict in a text column, JSON text.
    # Without SSE_POSTGRES_COLUMNS the columns are the first item's fields that the
    # table has, so "note" (absent from the first item) is not written for id 3:
    # columns left out keep their defaults.
    assert rows == [(1, "text", '{"n": 1}'), (2, [1, 2], None), (3, None, None)]
    warnings = [r.getMessage() for r in caplog.records if "have no column" in r.getMessage()]
    assert len(warnings) == 2  # once per pipeline instance, for the first unknown field
    assert "'extra'" in warnings[1]


def test_missing_table_fails_at_open(postgres: PostgresTarget, tmp_path: Path) -> None:
    pipeline = make_pipeline(postgres, tmp_path)
    with pytest.raises(TableMissingError, match="SSE_POSTGRES_CREATE_TABLE"):
        asyncio.run(pipeline.open())


def test_crawls_starting_together_create_their_tables_once(
    postgres: PostgresTarget, tmp_path: Path
) -> None:
    """Four crawls open at once on fresh tables (workers of a cluster starting
    together): each creates the cursor table and, at its first batch, the data table,
    and none fails on PostgreSQL's catalog race inside CREATE TABLE IF NOT EXISTS."""
    rounds = 6

    async def run() -> None:
        for r in range(rounds):
            sinks = [
                make_pipeline(
                    postgres,
                    tmp_path / f"{r}-{i}",
                    SSE_POSTGRES_TABLE=f"{postgres.table}_t{r}",
                    SSE_POSTGRES_CREATE_TABLE=True,
                    SSE_POSTGRES_CURSOR_TABLE=f"{postgres.table}_c{r}",
                )
                for i in range(4)
            ]
            await asyncio.gather(*(sink.open() for sink in sinks))
            await asyncio.gather(
                *(sink.write_batch([{"id": i, "round": r}]) for i, sink in enumerate(sinks))
            )
            for sink in sinks:
                await sink.close()

    try:
        asyncio.run(run())
        for r in range(rounds):
            ids = postgres.query(f'SELECT id FROM "{postgres.table}_t{r}" ORDER BY 1')
            assert [i for (i,) in ids] == [0, 1, 2, 3]
    finally:
        for r in range(rounds):
            postgres.query(f'DROP TABLE IF EXISTS "{postgres.table}_t{r}", "{postgres.table}_c{r}"')


def test_reconnects_at_next_batch_after_backend_killed(
    postgres: PostgresTarget, tmp_path: Path
) -> None:
    import psycopg

    rows = [{"id": i, "text": f"row {i}"} for i in range(30)]

    async def run() -> None:
        pipeline = make_pipeline(postgres, tmp_path, SSE_POSTGRES_CREATE_TABLE=True)
        await pipeline.open()
        await pipeline.write_batch(rows[:10])
        assert postgres.terminate_pipeline(wait=True) == 1
        with pytest.raises(psycopg.OperationalError):
            await pipeline.write_batch(rows[10:20])  # the dead connection is dropped
        await pipeline.write_batch(rows[10:20])  # a new one is opened
        await pipeline.write_batch(rows[20:])
        await pipeline.close()

    asyncio.run(run())
    stored = postgres.query(f'SELECT id FROM "{postgres.table}" ORDER BY id')
    assert [r[0] for r in stored] == list(range(30))


def test_connections_killed_at_random_moments_never_leave_the_sink_stuck(
    postgres: PostgresTarget, tmp_path: Path
) -> None:
    """For 2 s the pipeline's connections are killed every 0-3 ms while batches (each
    with its cursor) are written. Writes fail, and then, with the kills over, the next
    batches must succeed. A connection that died mid-exchange used to be kept (it did
    not look broken) and failed every later batch: a CI crawl spilled 3,650 of 4,000
    rows and ended with them still on disk."""
    cursor_table = f"{postgres.table}_cursors"

    async def run() -> tuple[int, list[bool]]:
        pipeline = make_pipeline(
            postgres,
            tmp_path,
            SSE_POSTGRES_CREATE_TABLE=True,
            SSE_POSTGRES_CURSOR_TABLE=cursor_table,
        )
        await pipeline.open()
        stop = threading.Event()

        def kill() -> None:
            rng = random.Random(15)
            while not stop.is_set():
                postgres.terminate_pipeline()
                time.sleep(rng.random() * 0.003)

        killer = threading.Thread(target=kill)
        killer.start()
        failures = 0
        deadline = time.monotonic() + 2
        seq = 0
        try:
            while time.monotonic() < deadline:
                seq += 1
                cursor = Cursor(str(seq), seq, Mark(seq, 0), "")
                try:
                    await pipeline.write_batch([{"id": seq}], {"s": cursor})
                except Exception:
                    failures += 1
        finally:
            stop.set()
            killer.join()
        after = []
        for _ in range(4):
            seq += 1
            cursor = Cursor(str(seq), seq, Mark(seq, 0), "")
            try:
                await pipeline.write_batch([{"id": seq}], {"s": cursor})
                after.append(True)
            except Exception:
                after.append(False)
        await pipeline.close()
        return failures, after

    try:
        failures, after = asyncio.run(run())
    finally:
        postgres.query(f'DROP TABLE IF EXISTS "{cursor_table}"')
    assert failures > 0  # the kills reached the writes
    # (The last kill may have hit the open connection: one more failure at most.)
    assert after[1:] == [True, True, True], after


def test_killed_backend_mid_stream_through_base_retries(
    postgres: PostgresTarget, tmp_path: Path
) -> None:
    async def run() -> PostgresPipeline:
        pipeline = make_pipeline(
            postgres, tmp_path, SSE_POSTGRES_CREATE_TABLE=True, SSE_POSTGRES_BATCH_SIZE=10
        )
        await pipeline.open_spider()
        for i in range(20):
            await pipeline.process_item({"id": i})
        await wait_written(pipeline, 20)
        postgres.terminate_pipeline()
        for i in range(20, 45):
            await pipeline.process_item({"id": i})
        await pipeline.close_spider()
        return pipeline

    pipeline = asyncio.run(run())
    stored = postgres.query(f'SELECT id FROM "{postgres.table}" ORDER BY id')
    assert [r[0] for r in stored] == list(range(45))
    assert sink_stat(pipeline, "retries") >= 1
    assert sink_stat(pipeline, "spilled_rows") == 0


def test_lost_commit_reply_is_not_written_twice(postgres: PostgresTarget, tmp_path: Path) -> None:
    """The server commits, the reply never arrives: the retry must find out (by the
    transaction id) and not COPY the batch again."""

    async def run() -> tuple[PostgresPipeline, int]:
        commit = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # psycopg's COMMIT, simple query protocol
        async with LoseReplyProxy(5432, commit) as proxy:
            dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
            pipeline = make_pipeline(
                postgres,
                tmp_path,
                SSE_POSTGRES_DSN=f"{dsn}?application_name={postgres.app_name}",
                SSE_POSTGRES_CREATE_TABLE=True,
                SSE_POSTGRES_BATCH_SIZE=10,
            )
            await pipeline.open_spider()
            for i in range(10):
                await pipeline.process_item({"id": i})
            await wait_written(pipeline, 10)
            proxy.arm()
            for i in range(10, 20):
                await pipeline.process_item({"id": i})
            await wait_written(pipeline, 20)
            for i in range(20, 25):
                await pipeline.process_item({"id": i})
            await pipeline.close_spider()
            return pipeline, proxy.cuts

    pipeline, cuts = asyncio.run(run())
    assert cuts == 1
    stored = postgres.query(f'SELECT id FROM "{postgres.table}" ORDER BY id')
    assert [r[0] for r in stored] == list(range(25))
    assert sink_stat(pipeline, "retries") == 1
    assert sink_stat(pipeline, "in_doubt_batches_skipped") == 1


# --- real crawls ---------------------------------------------------------------------


def expected_event(i: int) -> dict[str, Any]:
    return {"seq": i, "text": "é€😀"}


def test_crawl_stores_every_event(
    postgres: PostgresTarget, sse_server: SSEServer, tmp_path: Path
) -> None:
    url = sse_server.url(f"/stream?n=300&chunk=7&key={unique_name('pg')}")
    crawl = start_crawl(
        url,
        PIPELINE,
        {
            "SSE_POSTGRES_DSN": postgres.dsn,
            "SSE_POSTGRES_TABLE": postgres.table,
            "SSE_POSTGRES_CREATE_TABLE": "True",
            "SSE_BATCH_SIZE": 64,
        },
        tmp_path,
    )
    code, log = crawl.wait(timeout=90)
    assert code == 0, log[-3000:]
    rows = postgres.query(
        f'SELECT url, event, id, data, json, received_at FROM "{postgres.table}" ORDER BY id::int'
    )
    assert len(rows) == 300
    for i, (row_url, event, event_id, data, parsed, received_at) in enumerate(rows, 1):
        assert (row_url, event, event_id) == (url, "message", str(i))
        assert json.loads(data) == parsed == expected_event(i)
        assert isinstance(received_at, float)
    assert log_stat(log, "sse/sink/postgres/rows_written") == 300


def test_crawl_loses_nothing_when_backend_is_killed_repeatedly(
    postgres: PostgresTarget, sse_server: SSEServer, tmp_path: Path
) -> None:
    """For 1.5 s every connection the pipeline opens is killed: batches are retried,
    then spilled, then replayed; every event must still be stored exactly once."""
    n = 4000
    url = sse_server.url(f"/stream?n={n}&delay=0.001&ascii=1&key={unique_name('pg')}")
    crawl = start_crawl(
        url,
        PIPELINE,
        {
            "SSE_POSTGRES_DSN": postgres.dsn,
            "SSE_POSTGRES_TABLE": postgres.table,
            "SSE_POSTGRES_CREATE_TABLE": "True",
            "SSE_BATCH_SIZE": 50,
            "SSE_FLUSH_INTERVAL": 0.1,
            "SSE_SINK_RETRY_TIMES": 1,
            "SSE_SINK_RETRY_BACKOFF": 0.05,
        },
        tmp_path,
    )
    try:
        assert wait_until(lambda: postgres.count() >= 200, timeout=60), "no rows arrived"
        kills = 0
        deadline = time.monotonic() + 1.5
        rng = random.Random(4000)
        while time.monotonic() < deadline and crawl.running:
            kills += postgres.terminate_pipeline()
            time.sleep(rng.random() * 0.01)  # (kills land at every step of a write)
        assert kills >= 2
        assert crawl.running, "the stream ended before the outage did; make it longer"
    finally:
        code, log = crawl.wait(timeout=120)
    assert code == 0, log[-3000:]
    ids = [r[0] for r in postgres.query(f'SELECT id::int FROM "{postgres.table}" ORDER BY 1')]
    missing = sorted(set(range(1, n + 1)) - set(ids))
    twice = len(ids) - len(set(ids))
    assert not missing and not twice, f"{len(missing)} missing, {twice} twice\n{log[-6000:]}"
    spilled = log_stat(log, "sse/sink/postgres/spilled_rows")
    # The outage reached the pipeline: writes failed and were retried, or spilled
    # (which one depends on when the kills land), and every spilled row came back.
    assert log_stat(log, "sse/sink/postgres/retries") + spilled > 0, log[-3000:]
    assert log_stat(log, "sse/sink/postgres/replayed_rows") == spilled
    assert not list((tmp_path / "spill").rglob("*.jsonl"))


def test_events_json_is_stored_as_json_also_when_replayed_from_a_spill_file(
    postgres: PostgresTarget, tmp_path: Path
) -> None:
    # Batch delivery hands the events' JSON text to the jsonb column as it came (the
    # server parses it); a batch spilled while the store was down must come back as
    # JSON too, not as a JSON string.
    events = [
        SSEEvent("price", '{"p": 1.50, "s": "é"}', "1"),
        SSEEvent("note", "[1, 2]", "2"),
        SSEEvent("note", "7", "3"),
        SSEEvent("note", "{not json", "4"),
    ]
    spilled = batch_rows(SSEBatch(events[:2]))
    make_pipeline(postgres, tmp_path)._write_spill_file(spilled, 1, {}, None)

    pipeline = make_pipeline(postgres, tmp_path, SSE_POSTGRES_CREATE_TABLE=True)

    async def run() -> None:
        await pipeline.open_spider()  # (writes the spilled rows first)
        await pipeline.process_item(SSEBatch(events[2:]))
        await pipeline.close_spider()

    asyncio.run(run())
    # The batch left its JSON to the server to check; "{not json" made it refuse the
    # batch once, and the batch went again checked in Python.
    assert sink_stat(pipeline, "json_rechecked_batches") == 1
    rows = postgres.query(f'SELECT id, json, data FROM "{postgres.table}" ORDER BY id')
    assert rows == [
        ("1", {"p": 1.5, "s": "é"}, '{"p": 1.50, "s": "é"}'),
        ("2", [1, 2], "[1, 2]"),
        ("3", 7, "7"),
        ("4", None, "{not json"),
    ]


def test_copy_text_keeps_every_character_and_type(postgres: PostgresTarget, tmp_path: Path) -> None:
    # The batch goes as COPY text (escaped a column at a time): tabs, newlines,
    # backslashes and a literal "\N" must come back as they were, NULL as NULL.
    postgres.query(
        f'CREATE TABLE "{postgres.table}" (id bigint, text text, flag boolean, n bigint, '
        "x double precision, doc jsonb, js jsonb, note text)"
    )
    rows = [
        {
            "id": 1,
            "text": "a\tb\nc\rd\\e \\N é",
            "flag": True,
            "n": 2**40,
            "x": 1.5,
            "doc": {"k": "v\t"},
            "js": JSONText('{"a": "\\t"}'),
            "note": {"nested": [1, "\n"]},
        },
        {"id": 2, "text": None, "flag": False, "n": None, "x": float("inf"), "doc": "s"},
        {"id": 3, "text": "", "flag": None, "n": -1, "x": None, "doc": None, "js": None},
    ]

    async def run() -> None:
        pipeline = make_pipeline(
            postgres, tmp_path, SSE_POSTGRES_COLUMNS="id,text,flag,n,x,doc,js,note"
        )
        await pipeline.open_spider()
        for row in rows:
            await pipeline.process_item(row)
        await pipeline.close_spider()

    asyncio.run(run())
    stored = postgres.query(f'SELECT * FROM "{postgres.table}" ORDER BY id')
    assert stored == [
        (
            1,
            "a\tb\nc\rd\\e \\N é",
            True,
            2**40,
            1.5,
            {"k": "v\t"},
            {"a": "\t"},
            '{"nested": [1, "\\n"]}',
        ),
        (2, None, False, None, float("inf"), "s", None, None),
        (3, "", None, -1, None, None, None, None),
    ]


def test_a_slow_table_pauses_the_stream_and_keeps_memory_flat(
    postgres: PostgresTarget, sse_server: SSEServer, tmp_path: Path
) -> None:
    # A trigger makes every row cost 1 ms: the table takes about 1,000 rows/s, the
    # server offers 100,000 events at once. The crawl must read only what the sink
    # can hold (the socket pauses), and store at close all it read.
    table = postgres.table
    function = f"{table}_slow"
    postgres.query(
        f'CREATE TABLE "{table}" (url text, event text, id text, data text, json jsonb, '
        "received_at double precision)"
    )
    postgres.query(
        f'CREATE FUNCTION "{function}"() RETURNS trigger LANGUAGE plpgsql AS '
        "$$ BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END $$"
    )
    try:
        postgres.query(
            f'CREATE TRIGGER slow BEFORE INSERT ON "{table}" '
            f'FOR EACH ROW EXECUTE FUNCTION "{function}"()'
        )
        url = sse_server.url(f"/stream?n=100000&ascii=1&hold=30&key={unique_name('slowpg')}")
        crawl = start_crawl(
            url,
            PIPELINE,
            {
                "SSE_POSTGRES_DSN": postgres.dsn,
                "SSE_POSTGRES_TABLE": table,
                "SSE_BATCH_SIZE": 200,
                "CLOSESPIDER_TIMEOUT": 6,
                "MEMUSAGE_CHECK_INTERVAL_SECONDS": 0.5,
            },
            tmp_path,
        )
        code, log = crawl.wait(timeout=120)
        assert code == 0, log[-3000:]
        stored = int(postgres.query(f'SELECT count(*) FROM "{table}"')[0][0])
    finally:
        postgres.query(f'DROP TABLE IF EXISTS "{table}"')
        postgres.query(f'DROP FUNCTION IF EXISTS "{function}"()')
    # Every item the spider made is stored at close; events read but not yet handed
    # to the spider when it closed are not (their stream's cursor is before them).
    assert (
        stored
        == log_stat(log, "sse/sink/postgres/rows_written")
        == log_stat(log, "item_scraped_count")
    )
    assert 1000 < stored < 30_000  # the table's pace, not the server's
    # Read ahead of the table: at most the stream's queue (1,000) and a read or two.
    assert log_stat(log, "sse/events") - stored < 1000 + 3000
    assert log_stat(log, "sse/backpressure_pauses") >= 1
    assert log_stat(log, "sse/sink/postgres/backpressure_waits") >= 1
    # Flat: the sink holds at most 2 x 800 rows, the stream its queue and one read.
    growth = log_stat(log, "memusage/max") - log_stat(log, "memusage/startup")
    assert growth < 40 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB"
