"""``BatchingPipeline``: batching by count and time, backpressure, retry, spill, replay.

Driven in-process with a real crawler (``get_crawler``) on a running asyncio loop, and a
sink that keeps its batches in memory and can be told to fail or to hang; spill files
are real files. Every wait is bounded; nothing is timed for speed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from scrapy.crawler import Crawler
from scrapy.utils.test import get_crawler

from scrapy_sse import SSEBatch, SSEEvent
from scrapy_sse.pipelines.base import (
    BatchingPipeline,
    JSONText,
    MissingDependencyError,
    UncheckedJSON,
    dump_rows,
    load_rows,
)

from .sink_spiders import AttrsItem, DataclassItem, ScrapyItem


class MemorySink(BatchingPipeline):
    """Keeps batches in memory; ``down``, ``fail_calls`` and ``gate`` inject faults."""

    setting_prefix = "SSE_TESTSINK"

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self.batches: list[list[dict[str, Any]]] = []
        self.events: list[str] = []
        self.down = False
        self.fail_calls: set[int] = set()  # 1-based numbers of write_batch calls that fail
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.active = self.max_active = 0
        self.in_write = 0  # rows of the last write_batch call

    async def open(self) -> None:
        self.events.append("open")

    async def write_batch(self, rows: list[dict[str, Any]], cursors: Any = None) -> None:
        self.calls += 1
        self.in_write = len(rows)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.down or self.calls in self.fail_calls:
                raise ConnectionError("sink down")
            self.batches.append(list(rows))
        finally:
            self.active -= 1

    async def close(self) -> None:
        self.events.append("close")

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [row for batch in self.batches for row in batch]


def run(main: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), timeout)

    asyncio.run(bounded())


async def until(predicate: Callable[[], object], timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def make_crawler(tmp_path: Path, **settings: Any) -> Crawler:
    return get_crawler(settings_dict={"SSE_SPILL_DIR": str(tmp_path / "spill"), **settings})


async def opened(tmp_path: Path, **settings: Any) -> MemorySink:
    sink = MemorySink.from_crawler(make_crawler(tmp_path, **settings))
    await sink.open_spider()
    return sink


def stat(sink: BatchingPipeline, name: str) -> Any:
    assert sink.crawler.stats is not None
    return sink.crawler.stats.get_value(f"sse/sink/{sink.name}/{name}", 0)


def spill_files(sink: BatchingPipeline) -> list[Path]:
    return sorted(sink.spill_dir.glob("*.jsonl"))


def test_settings_prefix_then_generic_then_default(tmp_path: Path) -> None:
    async def main() -> None:
        sink = MemorySink(
            make_crawler(
                tmp_path,
                SSE_TESTSINK_BATCH_SIZE=7,
                SSE_BATCH_SIZE=3,
                SSE_FLUSH_INTERVAL=2.5,
                SSE_TESTSINK_RETRY_TIMES=5,
            )
        )
        assert (sink.batch_size, sink.flush_interval, sink.max_buffer) == (7, 2.5, 28)
        assert (sink.retry_times, sink.retry_backoff) == (5, 0.5)
        default = MemorySink(make_crawler(tmp_path))
        assert (default.batch_size, default.flush_interval, default.max_buffer) == (500, 1.0, 2000)
        assert default.name == "testsink"
        assert default.spill_dir == tmp_path / "spill" / "testsink"

        crawler = make_crawler(tmp_path, SSE_TESTSINK_BATCH_SIZE=7)
        other = MemorySink.with_settings(crawler, {"SSE_TESTSINK_BATCH_SIZE": 9})
        assert other.batch_size == 9
        assert crawler.settings.getint("SSE_TESTSINK_BATCH_SIZE") == 7

    run(main)


def test_flush_by_count_keeps_the_rest_for_later(tmp_path: Path) -> None:
    async def main() -> None:
        # (MAX_BUFFER = batch size: no write can take more than one batch.)
        sink = await opened(tmp_path, SSE_BATCH_SIZE=5, SSE_MAX_BUFFER=5, SSE_FLUSH_INTERVAL=3600)
        for i in range(12):
            await sink.process_item({"i": i})
        await until(lambda: len(sink.batches) == 2)
        assert sink.buffered == 2
        await sink.close_spider()
        assert [[row["i"] for row in batch] for batch in sink.batches] == [
            [0, 1, 2, 3, 4],
            [5, 6, 7, 8, 9],
            [10, 11],
        ]
        assert sink.events == ["open", "close"]
        assert (stat(sink, "rows_written"), stat(sink, "batches")) == (12, 3)
        assert stat(sink, "flush_seconds_max") >= 0

    run(main)


def test_rows_that_pile_up_during_a_write_go_together_in_the_next(tmp_path: Path) -> None:
    # Group commit: a store slower per write than the stream gets fewer, bigger
    # writes (up to MAX_BUFFER rows), not a backlog of batch-sized ones.
    async def main() -> None:
        sink = await opened(tmp_path, SSE_BATCH_SIZE=5, SSE_MAX_BUFFER=12, SSE_FLUSH_INTERVAL=3600)
        sink.gate = asyncio.Event()  # the first write hangs until the gate opens
        for i in range(5):
            await sink.process_item({"i": i})
        await until(lambda: sink.active == 1)
        for i in range(5, 17):
            await sink.process_item({"i": i})
        assert sink.buffered == 12  # 5 rows in the hanging write, 12 piled up behind it
        sink.gate.set()
        await until(lambda: len(sink.batches) == 2)
        assert [len(batch) for batch in sink.batches] == [5, 12]
        assert [row["i"] for row in sink.rows] == list(range(17))
        await sink.close_spider()

    run(main)


def test_flush_by_time_without_waiting_for_a_full_batch(tmp_path: Path) -> None:
    async def main() -> None:
        sink = await opened(tmp_path, SSE_BATCH_SIZE=1000, SSE_FLUSH_INTERVAL=0.2)
        for i in range(3):
            await sink.process_item({"i": i})
        assert sink.batches == []  # not yet: the batch is far from full
        await until(lambda: sink.batches)
        assert [row["i"] for row in sink.rows] == [0, 1, 2]
        assert sink.buffered == 0
        await sink.process_item({"i": 3})  # the timer is armed again for later rows
        await until(lambda: len(sink.batches) == 2)
        assert sink.events == ["open"]  # both flushes happened before close
        await sink.close_spider()
        assert [row["i"] for row in sink.rows] == [0, 1, 2, 3]

    run(main)


def test_batch_items_are_buffered_in_one_call(tmp_path: Path) -> None:
    class Carrier:
        def __init__(self, members: list[Any]) -> None:
            self.sse_batch_rows = members

    async def main() -> None:
        sink = await opened(tmp_path, SSE_BATCH_SIZE=100, SSE_FLUSH_INTERVAL=3600)
        batch = [
            {"seq": 1},
            DataclassItem(seq=2, text="t", event_id="2", kind="dataclass"),
            AttrsItem(seq=3, text="t", event_id="3", kind="attrs"),
            ScrapyItem(seq=4, kind="scrapy"),
        ]
        assert await sink.process_item(batch) is batch
        carrier = Carrier([{"seq": 5}, {"seq": 6}])
        assert await sink.process_item(carrier) is carrier
        events = SSEBatch([SSEEvent("price", '{"p": 1.5}', "7"), SSEEvent("note", "hi", "8")])
        assert await sink.process_item(events) is events
        assert sink.buffered == 8
        await sink.close_spider()
        rows = sink.rows
        assert [row["seq"] for row in rows[:6]] == [1, 2, 3, 4, 5, 6]
        assert rows[1] == dict(seq=2, text="t", event_id="2", kind="dataclass", payload={})
        assert rows[3] == {"seq": 4, "kind": "scrapy"}
        assert {k: rows[6][k] for k in ("url", "event", "id", "data", "json")} == {
            "url": None,
            "event": "price",
            "id": "7",
            "data": '{"p": 1.5}',
            "json": '{"p": 1.5}',
        }
        # The event's JSON text, checked and marked as JSON (a sink stores it as JSON
        # without decoding and encoding it again); data that is not JSON: no value.
        assert type(rows[6]["json"]) is JSONText
        assert rows[7]["json"] is None
        assert len(sink.batches) == 1

    run(main)


def test_backpressure_bounds_the_buffer_while_a_flush_hangs(tmp_path: Path) -> None:
    async def main() -> None:
        sink = await opened(tmp_path, SSE_BATCH_SIZE=4, SSE_MAX_BUFFER=8, SSE_FLUSH_INTERVAL=3600)
        sink.gate = asyncio.Event()  # the sink hangs until the gate opens
        accepted: list[int] = []
        seen: list[int] = []

        async def produce(i: int) -> None:
            await sink.process_item({"i": i})
            accepted.append(i)
            seen.append(sink.buffered)

        tasks = [asyncio.create_task(produce(i)) for i in range(40)]
        # The hanging write took what was buffered when it started (a batch at least,
        # MAX_BUFFER at most), 8 more rows are buffered, the rest must wait.
        await until(lambda: sink.buffered == 8)
        await asyncio.sleep(0.2)  # a negative check: nobody else gets in meanwhile
        assert 4 <= sink.in_write <= 8
        assert len(accepted) == sink.in_write + 8
        assert sink.buffered == 8
        assert stat(sink, "backpressure_waits") >= 40 - 16  # every blocked producer waited
        sink.gate.set()
        await asyncio.gather(*tasks)
        await sink.close_spider()
        assert sorted(row["i"] for row in sink.rows) == list(range(40))
        assert max(seen) <= sink.max_buffer == 8
        assert sink.max_active == 1  # one flush at a time
        assert all(len(batch) <= 8 for batch in sink.batches)

    run(main)


def test_a_failed_write_is_retried_with_backoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        sink = await opened(
            tmp_path,
            SSE_BATCH_SIZE=2,
            SSE_TESTSINK_RETRY_TIMES=3,
            SSE_TESTSINK_RETRY_BACKOFF=0.01,
        )
        sink.fail_calls = {1, 2}
        await sink.process_item({"i": 0})
        await sink.process_item({"i": 1})
        await until(lambda: sink.batches)
        await sink.close_spider()
        assert [row["i"] for row in sink.rows] == [0, 1]
        assert (stat(sink, "retries"), stat(sink, "spilled_rows")) == (2, 0)
        assert spill_files(sink) == []

    with caplog.at_level(logging.WARNING):
        run(main)
    assert "retry 1 of 3" in caplog.text
    assert "retry 2 of 3" in caplog.text


def test_a_sink_that_stays_down_spills_and_replays_when_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        sink = await opened(
            tmp_path,
            SSE_BATCH_SIZE=3,
            SSE_MAX_BUFFER=3,  # (writes of one batch each)
            SSE_FLUSH_INTERVAL=3600,
            SSE_TESTSINK_RETRY_TIMES=1,
            SSE_TESTSINK_RETRY_BACKOFF=0.01,
        )
        sink.down = True
        for i in range(6):
            await sink.process_item({"i": i, "at": dt.datetime(2025, 1, 2, 3, 4, 5, i)})
        await until(lambda: stat(sink, "spilled_batches") == 2)
        files = spill_files(sink)
        assert [[row["i"] for row in load_rows(f.read_text())] for f in files] == [
            [0, 1, 2],
            [3, 4, 5],
        ]
        assert stat(sink, "spilled_rows") == 6
        # The first batch was retried; the second went straight to disk (sink down).
        assert stat(sink, "retries") == 1
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(str(files[0]) in m and "spilled 3 rows" in m for m in errors), errors

        sink.down = False  # the sink comes back
        for i in range(6, 9):
            await sink.process_item({"i": i, "at": dt.datetime(2025, 1, 2, 3, 4, 5, i)})
        await until(lambda: not spill_files(sink))
        await sink.close_spider()
        assert sorted(row["i"] for row in sink.rows) == list(range(9))
        assert all(row["at"] == dt.datetime(2025, 1, 2, 3, 4, 5, row["i"]) for row in sink.rows)
        assert (stat(sink, "rows_written"), stat(sink, "replayed_rows")) == (3, 6)

    with caplog.at_level(logging.INFO):
        run(main)
    assert "accepts writes again" in caplog.text


def test_spilled_rows_of_a_previous_crawl_are_replayed_at_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        first = await opened(tmp_path, SSE_BATCH_SIZE=10, SSE_TESTSINK_RETRY_TIMES=0)
        first.down = True
        await first.process_item({"i": 0})
        await first.process_item({"i": 1})
        await first.close_spider()  # the final flush fails: spilled, not lost
        assert first.events == ["open", "close"]
        assert len(spill_files(first)) == 1
        # The crawl ends normally; the close says what it leaves behind, and where.
        assert stat(first, "spilled_rows_left") == 2
        (closing,) = [r.getMessage() for r in caplog.records if "closes with" in r.getMessage()]
        assert f"2 rows in 1 spill file(s) under {first.spill_dir.resolve()}" in closing

        second = await opened(tmp_path, SSE_BATCH_SIZE=10)
        assert [row["i"] for row in second.rows] == [0, 1]
        assert spill_files(second) == []
        assert stat(second, "replayed_rows") == 2
        await second.close_spider()

    run(main)


def test_a_replay_that_fails_midway_never_writes_a_row_twice(tmp_path: Path) -> None:
    async def main() -> None:
        first = await opened(tmp_path, SSE_BATCH_SIZE=10, SSE_TESTSINK_RETRY_TIMES=0)
        first.down = True
        for i in range(5):
            await first.process_item({"i": i})
        await first.close_spider()

        second = MemorySink(
            make_crawler(tmp_path, SSE_BATCH_SIZE=2, SSE_MAX_BUFFER=2, SSE_FLUSH_INTERVAL=3600)
        )
        second.fail_calls = {2}  # replay chunks (of MAX_BUFFER rows) [0, 1] ok, [2, 3] fails
        await second.open_spider()
        assert [row["i"] for row in second.rows] == [0, 1]
        (left,) = spill_files(second)
        assert [row["i"] for row in load_rows(left.read_text())] == [2, 3, 4]
        for i in (5, 6):  # a successful flush replays the rest
            await second.process_item({"i": i})
        await until(lambda: not spill_files(second))
        await second.close_spider()
        assert sorted(row["i"] for row in second.rows) == list(range(7))

    run(main)


def test_rows_buffered_before_open_are_spilled_at_close(tmp_path: Path) -> None:
    async def main() -> None:
        sink = MemorySink(make_crawler(tmp_path, SSE_BATCH_SIZE=2))
        for i in range(3):
            await sink.process_item({"i": i})  # never opened: nothing flushes, nothing waits
        await sink.close_spider()
        assert sink.events == []  # close() only after a successful open()
        (spilled,) = spill_files(sink)
        assert [row["i"] for row in load_rows(spilled.read_text())] == [0, 1, 2]

    run(main)


def test_spill_format_restores_common_python_types() -> None:
    rows = [
        {
            "aware": dt.datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc),
            "naive": dt.datetime(2025, 1, 2),
            "date": dt.date(2025, 1, 2),
            "time": dt.time(3, 4, 5),
            "price": Decimal("1.10"),
            "raw": b"\x00\xff",
            "uid": uuid.UUID(int=7),
            "nested": {"when": [dt.date(2025, 1, 3)], "pair": (1, 2)},
            "text": "é€😀\n",
            "none": None,
            "json": JSONText('{"p": 1.5}'),
            "unchecked": UncheckedJSON("[1, 2"),
            "item": {"inner": DataclassItem(seq=1, text="t", event_id="1", kind="k")},
        }
    ]
    expected = dict(
        rows[0],
        nested={"when": [dt.date(2025, 1, 3)], "pair": [1, 2]},
        # (A nested item keeps its fields, as the sink itself would store them.)
        item={"inner": {"seq": 1, "text": "t", "event_id": "1", "kind": "k", "payload": {}}},
    )
    loaded = load_rows(dump_rows(rows))
    assert loaded == [expected]
    # JSON text stays JSON text: a replay into PostgreSQL stores an object, not a string.
    assert type(loaded[0]["json"]) is JSONText
    assert type(loaded[0]["unchecked"]) is UncheckedJSON  # (still to be checked)


def test_require_names_the_extra_to_install() -> None:
    assert BatchingPipeline.require("json", "unused").__name__ == "json"
    with pytest.raises(MissingDependencyError, match=r"pip install scrapy-sse\[fancy\]"):
        BatchingPipeline.require("no_such_driver_module", "fancy")
    assert issubclass(MissingDependencyError, ImportError)


class JournalingSink(MemorySink):
    """A sink for which writing one batch twice stores it once (as ClickHouse with
    insert deduplication tokens): batches are journaled before they are written."""

    write_ahead = True

    async def write_batch(self, rows: list[dict[str, Any]], cursors: Any = None) -> None:
        self.cursors_seen = dict(cursors or {})
        self.token_seen = self.batch_token
        await super().write_batch(rows, cursors)


def test_a_batch_left_in_the_journal_by_a_crash_is_written_again_with_its_cursors(
    tmp_path: Path,
) -> None:
    from scrapy_sse.durable import Cursor, Mark

    cursor = Cursor("42", 42, Mark(42, 0))

    async def main() -> None:
        crashed = JournalingSink.from_crawler(make_crawler(tmp_path))
        # What a crawl killed during an insert leaves: the batch, journaled.
        crashed._write_journal([{"i": 41}, {"i": 42}], {"stream": cursor}, 1, "token-1")
        sink = JournalingSink.from_crawler(make_crawler(tmp_path))
        await sink.open_spider()
        assert sink.rows == [{"i": 41}, {"i": 42}]
        # The same batch, with the same token (the store keeps one copy of it).
        assert (sink.cursors_seen, sink.token_seen) == ({"stream": cursor}, "token-1")
        assert sink.stored == {"stream": cursor}  # the stream resumes after 42
        assert stat(sink, "journal_batches_rewritten") == 1
        assert not list((sink.spill_dir / "journal").glob("*"))
        await sink.close_spider()
        reopened = JournalingSink.from_crawler(make_crawler(tmp_path))
        await reopened.open_spider()
        assert reopened.rows == []  # written once
        assert reopened.stored == {"stream": cursor}  # kept in cursors.json
        await reopened.close_spider()

    run(main)


def test_a_replayed_spill_file_keeps_its_cursors(tmp_path: Path) -> None:
    # A sink whose store holds no cursors (they go to cursors.json): a batch spilled
    # at the end of one crawl is written by the next, which must resume after it.
    from scrapy_sse.durable import Cursor, Mark

    cursor = Cursor("7", 7, Mark(7, 0))

    async def main() -> None:
        MemorySink.from_crawler(make_crawler(tmp_path))._write_spill_file(
            [{"i": 6}, {"i": 7}], 1, {"stream": cursor}, None
        )
        sink = JournalingSink.from_crawler(make_crawler(tmp_path))
        await sink.open_spider()
        assert sink.rows == [{"i": 6}, {"i": 7}]
        await sink.close_spider()
        reopened = MemorySink.from_crawler(make_crawler(tmp_path))
        await reopened.open_spider()
        assert reopened.stored == {"stream": cursor}
        assert reopened.rows == []
        await reopened.close_spider()

    run(main)


def test_a_batch_cursor_marks_its_furthest_row_whatever_came_after() -> None:
    # A batch callback that yields the SSEBatch and then an item of its own: the
    # item's row has no position of its own (it comes last, at the batch's first
    # event), and the cursor must still say the batch's 500 rows are stored.
    from scrapy_sse.durable import Mark, Track
    from scrapy_sse.pipelines.base import _cursors

    track = Track("k")
    slot = track.open("500", 500, "1")
    marks: list[Any] = [(slot, slot.first + i, 0) for i in range(500)]
    marks.append((slot, slot.first, -1))
    cursors, settling = _cursors(marks)
    assert cursors["k"].stored == Mark(500, 0)
    assert settling == {slot: 501}


def test_a_batch_the_sink_cannot_encode_is_written_as_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Unencodable(JournalingSink):
        def encode_batch(self, rows: list[dict[str, Any]]) -> str | None:
            raise ValueError("no encoding for this value")

    async def main() -> None:
        sink = Unencodable.from_crawler(make_crawler(tmp_path, SSE_BATCH_SIZE=2))
        await sink.open_spider()
        for i in range(2):
            await sink.process_item({"i": i})
        await sink.close_spider()
        assert sink.rows == [{"i": 0}, {"i": 1}]  # not lost with the encoding

    with caplog.at_level(logging.ERROR):
        run(main)
    assert "encoding a batch failed" in caplog.text
