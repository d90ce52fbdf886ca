"""Dead letters and validation: bad items are kept aside, good ones keep flowing."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pydantic
import pytest
from scrapy import Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import DropItem, NotConfigured
from scrapy.utils.test import get_crawler
from twisted.python.failure import Failure

from scrapy_sse import SSEEvent, SSEResponse
from scrapy_sse.deadletter import DeadLetters
from scrapy_sse.pipelines.base import load_rows
from scrapy_sse.pipelines.validation import InvalidItem, ValidationPipeline

from .servers.sse_server import SSEServer
from .sink_spiders import DataclassItem, run_sink_crawl
from .test_pipelines_base import run

STREAM = "https://user:pw@api.example.com/v1/stream?token=secret"
SCHEMA = {
    "type": "object",
    "properties": {"seq": {"type": "integer"}, "text": {"type": "string"}},
    "required": ["seq"],
}


def make_crawler(tmp_path: Path, spidercls: type[Spider] | None = None, **settings: Any) -> Crawler:
    crawler = get_crawler(
        spidercls,
        settings_dict={
            "ADDONS": {"scrapy_sse.SSEAddon": 0},
            "SSE_DEAD_LETTER_PATH": str(tmp_path / "dead" / "letters.jsonl"),
            "SSE_SPILL_DIR": str(tmp_path / "spill"),
            **settings,
        },
    )
    if spidercls is not None:
        crawler.spider = spidercls.from_crawler(crawler)
    return crawler


def letters(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "dead" / "letters.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def count(crawler: Crawler, kind: str) -> Any:
    assert crawler.stats is not None
    return crawler.stats.get_value(f"sse/dead_letters/{kind}", 0)


async def open_spider(crawler: Crawler) -> Spider:
    spider = crawler.spider or Spider("test")
    await crawler.signals.send_catch_log_async(signals.spider_opened, spider=spider)
    return spider


async def close(crawler: Crawler) -> None:
    spider = crawler.spider or Spider("test")
    await crawler.signals.send_catch_log_async(signals.spider_closed, spider=spider, reason="done")


# -- DeadLetters ----------------------------------------------------------------------


def test_record_writes_one_json_line_per_dead_letter(tmp_path: Path) -> None:
    crawler = make_crawler(tmp_path)
    store = DeadLetters.for_crawler(crawler)
    assert DeadLetters.for_crawler(crawler) is store
    assert DeadLetters.for_crawler(make_crawler(tmp_path)) is not store

    event = SSEEvent("price", '{"p": "x"}', "41", source=SSEResponse(STREAM))
    store.record("callback_error", event=event, error=KeyError("p"))
    store.record(
        "invalid_item",
        item=DataclassItem(seq="x", text="é", event_id="1", kind="dataclass"),
        url="https://api.example.com/other",
        error="seq is not an int",
    )
    first, second = letters(tmp_path)
    assert first["kind"] == "callback_error"
    assert first["url"] == "https://api.example.com/v1/stream?..."  # no credentials
    assert first["event"] == {"event": "price", "id": "41", "data": '{"p": "x"}'}
    assert (first["item"], first["error_type"], first["error_message"]) == (None, "KeyError", "'p'")
    assert first["time"].endswith("+00:00")
    assert second["item"] == {
        "seq": "x",
        "text": "é",
        "event_id": "1",
        "kind": "dataclass",
        "payload": {},
    }
    assert (second["error_type"], second["error_message"]) == (None, "seq is not an int")
    assert second["event"] is None
    assert (count(crawler, "callback_error"), count(crawler, "invalid_item")) == (1, 1)


def test_dead_letters_can_go_through_a_batching_sink(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite3"

    async def main() -> None:
        crawler = make_crawler(
            tmp_path,
            SSE_DEAD_LETTER_PIPELINE="scrapy_sse.pipelines.SQLitePipeline",
            SSE_SQLITE_PATH=str(db),
        )
        store = DeadLetters.for_crawler(crawler)
        await open_spider(crawler)
        for n in range(3):
            store.record("callback_error", event=SSEEvent(data=str(n), id=str(n)), error="boom")
        await close(crawler)
        assert crawler.stats is not None
        assert crawler.stats.get_value("sse/sink/sqlite_dead_letters/rows_written") == 3

    run(main)
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT kind, event, error_message FROM sse_dead_letters").fetchall()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert [json.loads(r[1])["data"] for r in rows] == ["0", "1", "2"]
    assert {(r[0], r[2]) for r in rows} == {("callback_error", "boom")}
    assert tables == {"sse_dead_letters", "sse_cursors"}  # not the items table
    assert letters(tmp_path) == []


def test_items_that_pipelines_reject_are_recorded(tmp_path: Path) -> None:
    async def main() -> None:
        crawler = make_crawler(tmp_path)
        DeadLetters.for_crawler(crawler).record_item_failures()
        DeadLetters.for_crawler(crawler).record_item_failures()  # idempotent: one record per drop
        response = SSEResponse(STREAM)
        spider = await open_spider(crawler)

        async def drop(exception: BaseException) -> None:
            await crawler.signals.send_catch_log_async(
                signals.item_dropped,
                item={"a": 1},
                response=response,
                exception=exception,
                spider=spider,
            )

        await drop(DropItem("duplicate"))
        await drop(InvalidItem(ValueError("bad seq")))
        await drop(InvalidItem(ValueError("seen"), recorded=True))  # recorded by the raiser
        try:
            raise RuntimeError("pipeline crashed")
        except RuntimeError:
            failure = Failure()
        await crawler.signals.send_catch_log_async(
            signals.item_error, item={"a": 2}, response=response, failure=failure, spider=spider
        )
        await close(crawler)

    run(main)
    assert [
        (d["kind"], d["error_type"], d["error_message"], d["item"]) for d in letters(tmp_path)
    ] == [
        ("item_dropped", "DropItem", "duplicate", {"a": 1}),
        ("invalid_item", "ValueError", "bad seq", {"a": 1}),
        ("item_error", "RuntimeError", "pipeline crashed", {"a": 2}),
    ]
    assert {d["url"] for d in letters(tmp_path)} == {"https://api.example.com/v1/stream?..."}


def test_plain_drops_can_be_left_out(tmp_path: Path) -> None:
    async def main() -> None:
        crawler = make_crawler(tmp_path, SSE_DEAD_LETTER_ITEM_DROPPED=False)
        DeadLetters.for_crawler(crawler).record_item_failures()
        spider = await open_spider(crawler)
        for exception in (DropItem("duplicate"), InvalidItem(ValueError("bad"))):
            await crawler.signals.send_catch_log_async(
                signals.item_dropped, item={}, response=None, exception=exception, spider=spider
            )
        await close(crawler)

    run(main)
    assert [d["kind"] for d in letters(tmp_path)] == ["invalid_item"]


# -- ValidationPipeline ---------------------------------------------------------------


class Quote(pydantic.BaseModel):
    seq: int
    text: str


class PydanticSpider(Spider):
    name = "validated"
    sse_validator = Quote


def positive(item: Any) -> bool:
    return bool(item["seq"] > 0)


async def not_thirteen(item: Any) -> None:
    if item["seq"] == 13:
        raise ValueError("unlucky")


async def outcome(pipeline: ValidationPipeline, item: Any) -> str:
    try:
        result = await pipeline.process_item(item)
    except InvalidItem as exc:
        return f"invalid: {type(exc.error).__name__}: {exc.error}"
    assert result is item
    return "valid"


def test_validators_from_settings_and_spider(tmp_path: Path) -> None:
    async def main() -> None:
        by_callable = ValidationPipeline(
            make_crawler(tmp_path, SSE_VALIDATOR="tests.test_deadletter.positive")
        )
        assert await outcome(by_callable, {"seq": 1}) == "valid"
        assert (
            await outcome(by_callable, {"seq": 0}) == "invalid: ValueError: positive returned False"
        )
        assert (await outcome(by_callable, {"x": 1})).startswith("invalid: KeyError")

        by_coroutine = ValidationPipeline(make_crawler(tmp_path, SSE_VALIDATOR=not_thirteen))
        assert await outcome(by_coroutine, {"seq": 12}) == "valid"
        assert await outcome(by_coroutine, {"seq": 13}) == "invalid: ValueError: unlucky"

        by_model = ValidationPipeline(make_crawler(tmp_path, PydanticSpider))
        assert (
            await outcome(by_model, DataclassItem(seq=1, text="a", event_id="", kind="")) == "valid"
        )
        assert (await outcome(by_model, {"seq": "one", "text": "a"})).startswith(
            "invalid: ValidationError"
        )

        both = ValidationPipeline(
            make_crawler(tmp_path, PydanticSpider, SSE_VALIDATOR="tests.test_deadletter.positive")
        )
        assert await outcome(both, {"seq": -1, "text": "a"}) == (
            "invalid: ValueError: positive returned False"
        )

    run(main)


def test_json_schema_from_a_dict_a_file_or_text(tmp_path: Path) -> None:
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))

    async def main() -> None:
        for value in (SCHEMA, str(schema_file), json.dumps(SCHEMA)):
            pipeline = ValidationPipeline(make_crawler(tmp_path, SSE_JSON_SCHEMA=value))
            assert await outcome(pipeline, {"seq": 1, "text": "a"}) == "valid"
            assert await outcome(pipeline, {"seq": "1"}) == (
                "invalid: ValueError: '1' is not of type 'integer' (at seq)"
            )
            assert await outcome(pipeline, {"text": "a"}) == (
                "invalid: ValueError: 'seq' is a required property (at the item)"
            )

    run(main)


def test_configuration_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NotConfigured, match="No validator"):
        ValidationPipeline(make_crawler(tmp_path))
    with pytest.raises(TypeError, match="SSE_VALIDATOR must be"):
        ValidationPipeline(make_crawler(tmp_path, SSE_VALIDATOR="tests.test_deadletter.SCHEMA_X"))
    import jsonschema

    with pytest.raises(jsonschema.SchemaError):
        ValidationPipeline(make_crawler(tmp_path, SSE_JSON_SCHEMA={"type": "no-such-type"}))
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # what an import sees without it
    with pytest.raises(NotConfigured, match=r"pip install scrapy-sse\[validation\]"):
        ValidationPipeline(make_crawler(tmp_path, SSE_JSON_SCHEMA=SCHEMA))


SCHEMA_X = 42  # not a validator


def test_a_batch_loses_only_its_bad_members(tmp_path: Path) -> None:
    async def main() -> None:
        crawler = make_crawler(tmp_path, SSE_VALIDATOR="tests.test_deadletter.positive")
        pipeline = ValidationPipeline(crawler)
        batch = [{"seq": 1}, {"seq": -2}, {"seq": 3}, {"seq": 0}]
        assert await pipeline.process_item(batch) is batch
        assert batch == [{"seq": 1}, {"seq": 3}]
        with pytest.raises(InvalidItem) as raised:
            await pipeline.process_item([{"seq": -5}])
        assert raised.value.sse_dead_letter_kind is None  # not recorded a second time
        assert count(crawler, "invalid_item") == 3

    run(main)
    assert [d["item"]["seq"] for d in letters(tmp_path)] == [-2, 0, -5]


# -- a real crawl ---------------------------------------------------------------------


def test_bad_items_go_to_dead_letters_while_good_ones_flow(
    sse_server: SSEServer, tmp_path: Path
) -> None:
    url = sse_server.url("/stream?n=100&done=1&key=dead-letters")
    stats, log = run_sink_crawl(
        tmp_path,
        settings={
            "ITEM_PIPELINES": {
                "scrapy_sse.pipelines.ValidationPipeline": 100,
                "scrapy_sse.pipelines.SQLitePipeline": 800,
            },
            "SSE_VALIDATOR": "tests.sink_spiders.validate_seq",
            "SSE_DEAD_LETTER_PATH": "dead/letters.jsonl",
            "SSE_BATCH_SIZE": 10,
        },
        args={"url": url, "bad_every": 10},
    )
    with closing(sqlite3.connect(tmp_path / "items.sqlite3")) as conn:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM items ORDER BY seq")]
    assert seqs == [n for n in range(1, 101) if n % 10], log
    dead = letters(tmp_path)
    assert [d["item"]["seq"] for d in dead] == [f"bad-{n}" for n in range(10, 101, 10)]
    assert {d["kind"] for d in dead} == {"invalid_item"}
    assert {d["error_message"] for d in dead} == {"validate_seq returned False"}
    assert {d["url"] for d in dead} == {url.split("?")[0] + "?..."}
    assert stats["sse/dead_letters/invalid_item"] == 10
    assert stats["sse/validation/invalid"] == 10
    assert stats["sse/sink/sqlite/rows_written"] == 90


def test_dead_letters_fall_back_to_the_file_when_their_sink_cannot_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The SQLite file's folder cannot be created (a regular file is in the way): no
    # dead letter may be lost. What the sink had buffered before it failed goes to its
    # spill folder; what comes after the failure, and after the close, to the file.
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")

    async def main() -> None:
        crawler = make_crawler(
            tmp_path,
            SSE_DEAD_LETTER_PIPELINE="scrapy_sse.pipelines.SQLitePipeline",
            SSE_SQLITE_PATH=str(blocker / "store.sqlite3"),
        )
        store = DeadLetters.for_crawler(crawler)
        store.record("callback_error", event=SSEEvent(data="early", id="1"), error="boom")
        await open_spider(crawler)
        store.record("callback_error", event=SSEEvent(data="after-failure", id="2"), error="boom")
        await close(crawler)
        store.record("callback_error", event=SSEEvent(data="after-close", id="3"), error="boom")
        assert count(crawler, "callback_error") == 3

    with caplog.at_level(logging.ERROR, logger="scrapy_sse.deadletter"):
        run(main)
    assert [d["event"]["data"] for d in letters(tmp_path)] == ["after-failure", "after-close"]
    spilled = [
        row
        for path in sorted((tmp_path / "spill" / "sqlite_dead_letters").glob("*.jsonl"))
        for row in load_rows(path.read_text(encoding="utf-8"))
    ]
    assert [row["event"]["data"] for row in spilled] == ["early"]
    assert [r.getMessage() for r in caplog.records if r.name == "scrapy_sse.deadletter"] == [
        "The dead-letter sink sqlite_dead_letters could not be opened; dead letters go to "
        f"{tmp_path / 'dead' / 'letters.jsonl'}, and those it had buffered to its spill folder"
    ]
    assert not (blocker / "store.sqlite3").exists()
