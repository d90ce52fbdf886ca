"""Where a stream resumes: the ledger of deliveries (pure), a hand-written pipeline
that says what is durable, and a store's cursor against a ``JOBDIR`` checkpoint."""

from __future__ import annotations

import contextvars
import json
import sqlite3
from pathlib import Path

from scrapy_sse import durable
from scrapy_sse.durable import CURRENT, Cursor, Ledger, Mark, Track
from tests.crawl import run_crawl
from tests.servers.sse_server import SSEServer
from tests.sink_spiders import run_sink_crawl


def test_resume_point_passes_only_settled_deliveries_in_order() -> None:
    track = Track("k")
    first, second, third = track.open("1"), track.open("2"), track.open("3")
    second.pending += 1  # an item made from event 2, still in the pipelines
    for slot in (first, second, third):
        track.settle(slot)  # the spider is done with each event
    # Event 3 has nothing pending, but event 2 has: the stream may resume after 1 only.
    assert (track.resume_id, track.resume_seq) == ("1", 1)
    track.settle(second)
    assert (track.resume_id, track.resume_seq) == ("3", 3)
    assert not track.slots


def test_a_batch_of_events_is_one_delivery_with_its_own_positions() -> None:
    track = Track("k", resume_id="10", resume_seq=10)
    batch = track.open("15", count=5)
    assert (batch.first, batch.last) == (11, 15)
    track.settle(batch)
    assert (track.resume_id, track.resume_seq) == ("15", 15)


def test_resume_after_is_the_point_once_a_batch_commits() -> None:
    track = Track("k")
    a, b = track.open("a"), track.open("b")
    a.pending += 1  # a row of a sink's batch
    b.pending += 1  # a row still buffered for the next batch
    track.settle(a)
    track.settle(b)
    # b's row is not in this batch: resume after a, and b comes next.
    assert track.resume_after({a: 1}) == ("a", 1, "b")
    assert track.resume_after({a: 1, b: 1}) == ("b", 2, "")
    assert (track.resume_id, track.resume_seq) == ("", 0)  # nothing settled yet


def test_ledger_resumes_from_the_most_advanced_store_then_the_fallback() -> None:
    ledger = Ledger()
    ledger.fallback = {"k": ("3", 3), "other": ("7", 7)}
    ledger.load({"k": Cursor("5", 5, Mark(5, 0))})
    ledger.load({"k": Cursor("4", 4, Mark(9, 1))})  # another sink, less advanced
    assert ledger.resume_point("k") == ("5", 5)
    assert ledger.resume_point("other") == ("7", 7)
    track = ledger.track("k")
    assert track.open("6").first == 6  # numbering goes on from the cursor


def test_a_replay_is_matched_only_when_it_begins_where_the_cursor_expects() -> None:
    ledger = Ledger()
    ledger.load(
        {"k": Cursor("5", 5, Mark(7, 0), next_id="6"), "j": Cursor("5", 5, Mark(7, 0), "6")}
    )
    same = ledger.track("k")
    same.open("6")
    assert same.aligned  # the server resumed after 5
    other = ledger.track("j")
    other.open("1")  # a server that ignored Last-Event-ID and started over
    assert not other.aligned


def test_a_store_holds_rows_up_to_its_mark() -> None:
    cursor = Cursor("5", 5, Mark(6, 1))
    assert cursor.holds(Mark(6, 0)) and cursor.holds(Mark(6, 1)) and cursor.holds(Mark(2, 9))
    assert not cursor.holds(Mark(6, 2)) and not cursor.holds(Mark(7, 0))


def test_hold_follows_the_context_an_item_was_made_in() -> None:
    assert durable.hold() is None  # not made from a stream
    track = Track("k")
    slot = track.open("1")

    def in_item_task() -> durable.Hold | None:
        CURRENT.set(slot)
        return durable.hold()

    held = contextvars.copy_context().run(in_item_task)
    assert held is not None and held.stream_key == "k"
    track.settle(slot)
    assert track.resume_id == ""  # the hold keeps the stream before event 1
    durable.release([held, None])
    held.release()  # (idempotent)
    assert track.resume_id == "1"


def test_own_pipeline_says_what_is_durable(sse_server: SSEServer, tmp_path: Path) -> None:
    # A hand-written sink confirms ids 1..4 only: a restarted crawl resumes after 4,
    # and gets 5..8 again (at-least-once for what was never confirmed).
    url = sse_server.url("/stream?n=8&done=1&key=own-pipeline")
    settings = {"JOBDIR": str(tmp_path / "job"), "TEST_DURABLE_UP_TO": 4}
    first = run_crawl("PerEvent", args={"url": url}, settings=settings)
    assert [item["id"] for item in first.items] == [str(i) for i in range(1, 9)], first.log
    saved = json.loads((tmp_path / "job" / "sse_checkpoints.json").read_text())
    assert list(saved["last_event_ids"].values()) == ["4"]
    second = run_crawl("PerEvent", args={"url": url}, settings=settings)
    assert "after id '4' (the JOBDIR checkpoint)" in second.log, second.log
    assert [item["id"] for item in second.items] == ["5", "6", "7", "8"]


def test_the_store_wins_over_jobdir(sse_server: SSEServer, tmp_path: Path) -> None:
    url = sse_server.url("/stream?n=20&done=1&key=store-wins")
    settings = {
        "ITEM_PIPELINES": {"scrapy_sse.pipelines.SQLitePipeline": 800},
        "JOBDIR": str(tmp_path / "job"),
    }
    run_sink_crawl(tmp_path, settings=settings, args={"url": url, "kind": "dict"})
    checkpoint = tmp_path / "job" / "sse_checkpoints.json"
    saved = json.loads(checkpoint.read_text())
    assert list(saved["last_event_ids"].values()) == ["20"]
    # A JOBDIR copied from an older run says 3; the database holds rows up to 20.
    saved["last_event_ids"] = {key: "3" for key in saved["last_event_ids"]}
    saved["seqs"] = {key: 3 for key in saved["seqs"]}
    checkpoint.write_text(json.dumps(saved))
    _, log = run_sink_crawl(tmp_path, settings=settings, args={"url": url, "kind": "dict"})
    assert log.count("the JOBDIR checkpoint says id '3', its store says '20'") == 1, log
    assert "after id '20' (the cursor stored with its data)" in log
    with sqlite3.connect(tmp_path / "items.sqlite3") as conn:
        ids = [r[0] for r in conn.execute("SELECT event_id FROM items")]
        cursors = conn.execute("SELECT event_id, seq, stored_seq FROM sse_cursors").fetchall()
    assert sorted(ids, key=int) == [str(i) for i in range(1, 21)]
    assert cursors == [("20", 20, 20)]


def test_cursor_advances_with_scrapys_own_output_processing(
    sse_server: SSEServer, tmp_path: Path
) -> None:
    # SSE_ORDERED_ITEMS = False: Scrapy's CONCURRENT_ITEMS workers run the pipelines
    # in other tasks than the one reading the stream; provenance still follows.
    url = sse_server.url("/stream?n=30&done=1&key=unordered-cursor")
    settings = {
        "ITEM_PIPELINES": {"scrapy_sse.pipelines.SQLitePipeline": 800},
        "JOBDIR": str(tmp_path / "job"),
        "SSE_ORDERED_ITEMS": False,
    }
    _, log = run_sink_crawl(tmp_path, settings=settings, args={"url": url, "kind": "dict"})
    with sqlite3.connect(tmp_path / "items.sqlite3") as conn:
        cursors = conn.execute("SELECT event_id, seq FROM sse_cursors").fetchall()
    assert cursors == [("30", 30)], log
    saved = json.loads((tmp_path / "job" / "sse_checkpoints.json").read_text())
    assert list(saved["last_event_ids"].values()) == ["30"]


def test_a_stream_checks_its_first_event_against_the_stored_cursor() -> None:
    import asyncio

    from scrapy import Request

    from scrapy_sse.policy import SERVER_CLOSED
    from scrapy_sse.stream import SSEStream

    def replay(first_id: str) -> Track:
        ledger = Ledger()
        ledger.load({"k": Cursor("5", 5, Mark(6, 0), next_id="6")})
        stream = SSEStream(Request("https://example.com/s"), max_event_size=1000)
        stream.track = ledger.track("k")
        stream.feed(f"id: {first_id}\ndata: a\n\nid: 99\ndata: b\n\n".encode())
        stream.finish(SERVER_CLOSED)

        async def read() -> None:
            async for _event in stream:
                pass

        asyncio.run(read())
        assert stream.track.seq == 7  # (the events were numbered after the cursor)
        return stream.track

    assert replay("6").aligned  # the server resumed after id 5
    assert not replay("1").aligned  # it started over: nothing is skipped
