"""``ParquetPipeline``: real Parquet files, read back with pyarrow; one real crawl."""

from __future__ import annotations

import datetime as dt
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from scrapy.utils.test import get_crawler

from scrapy_sse.pipelines.base import MissingDependencyError
from scrapy_sse.pipelines.parquet import ParquetPipeline

from .servers.sse_server import SSEServer
from .sink_spiders import AttrsItem, DataclassItem, ScrapyItem, run_sink_crawl
from .test_pipelines_base import run, until

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def pipeline(tmp_path: Path, **settings: Any) -> ParquetPipeline:
    crawler = get_crawler(
        settings_dict={
            "SSE_PARQUET_DIR": str(tmp_path / "out"),
            "SSE_SPILL_DIR": str(tmp_path / "spill"),
            "SSE_FLUSH_INTERVAL": 3600,
            **settings,
        }
    )
    return ParquetPipeline.from_crawler(crawler)


def published(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.parquet"))


def unfinished(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.tmp"))


def read_rows(directory: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in published(directory):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def test_any_items_with_typed_columns_and_nested_values_as_json(tmp_path: Path) -> None:
    out = tmp_path / "out"

    async def main() -> None:
        sink = pipeline(tmp_path, SSE_BATCH_SIZE=100)
        await sink.open_spider()
        at = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
        for item in (
            {
                "seq": 1,
                "text": "é€😀",
                "payload": {"a": [1, 2]},
                "ok": True,
                "at": at,
                "price": Decimal("1.10"),
                "raw": b"\x00",
                "ratio": 0.5,
            },
            DataclassItem(seq=2, text="b", event_id="2", kind="dataclass"),
            AttrsItem(seq=3, text="c", event_id="3", kind="attrs", payload={"k": "v"}),
            ScrapyItem(seq=4),
        ):
            await sink.process_item(item)
        await sink.close_spider()

    run(main)
    (path,) = published(out)
    assert path.name.startswith("items-")
    assert unfinished(out) == []
    table = pq.read_table(path)
    schema = {field.name: str(field.type) for field in table.schema}
    assert schema == {
        "seq": "int64",
        "text": "string",
        "payload": "string",
        "ok": "bool",
        "at": "timestamp[us, tz=UTC]",
        "price": "string",
        "raw": "binary",
        "ratio": "double",
        "event_id": "string",
        "kind": "string",
    }
    rows = table.to_pylist()
    assert [row["seq"] for row in rows] == [1, 2, 3, 4]
    assert rows[0]["text"] == "é€😀"
    assert json.loads(rows[0]["payload"]) == {"a": [1, 2]}
    assert rows[0]["at"] == dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert (rows[0]["price"], rows[0]["raw"], rows[0]["ok"]) == ("1.10", b"\x00", True)
    assert json.loads(rows[2]["payload"]) == {"k": "v"}
    assert rows[3] == dict.fromkeys(schema, None) | {"seq": 4}


def test_files_roll_by_rows_and_by_bytes(tmp_path: Path) -> None:
    async def main() -> None:
        by_rows = pipeline(tmp_path, SSE_BATCH_SIZE=5, SSE_MAX_BUFFER=5, SSE_PARQUET_ROLL_ROWS=10)
        await by_rows.open_spider()
        for seq in range(25):
            await by_rows.process_item({"seq": seq})
        await by_rows.close_spider()

        by_bytes = pipeline(
            tmp_path,
            SSE_BATCH_SIZE=5,
            SSE_MAX_BUFFER=5,
            SSE_PARQUET_DIR=str(tmp_path / "bytes"),
            SSE_PARQUET_ROLL_BYTES=1,  # every batch fills a file
        )
        await by_bytes.open_spider()
        for seq in range(15):
            await by_bytes.process_item({"seq": seq})
        await by_bytes.close_spider()

    run(main)
    files = published(tmp_path / "out")
    assert [pq.read_metadata(f).num_rows for f in files] == [10, 10, 5]
    assert [row["seq"] for row in read_rows(tmp_path / "out")] == list(range(25))
    assert [pq.read_metadata(f).num_rows for f in published(tmp_path / "bytes")] == [5, 5, 5]
    assert unfinished(tmp_path / "out") == unfinished(tmp_path / "bytes") == []


def test_a_quiet_feed_still_publishes_its_file_after_the_roll_time(tmp_path: Path) -> None:
    out = tmp_path / "out"

    async def main() -> None:
        sink = pipeline(tmp_path, SSE_BATCH_SIZE=3, SSE_PARQUET_ROLL_SECONDS=1.5)
        await sink.open_spider()
        for seq in range(3):
            await sink.process_item({"seq": seq})
        await until(lambda: sink.crawler.stats.get_value("sse/sink/parquet/rows_written"))
        # The batch is in the open file, which readers of *.parquet do not see.
        assert len(unfinished(out)) == 1
        assert published(out) == []
        await until(lambda: published(out))  # no further write: the timer rolls it
        assert unfinished(out) == []
        assert [row["seq"] for row in read_rows(out)] == [0, 1, 2]
        await sink.close_spider()

    run(main)
    assert len(published(out)) == 1


def test_a_schema_change_starts_a_new_file(tmp_path: Path) -> None:
    out = tmp_path / "out"

    async def main() -> None:
        sink = pipeline(tmp_path, SSE_BATCH_SIZE=2, SSE_MAX_BUFFER=2)
        await sink.open_spider()
        for item in (
            {"seq": 1, "v": 1},
            {"seq": 2, "v": 2},
            {"seq": 3, "v": 2.5},  # int -> float64
            {"seq": 4, "v": 3},
            {"seq": 5, "v": "text"},  # -> string
            {"seq": 6, "v": None, "extra": [1]},  # new column
        ):
            await sink.process_item(item)
        await sink.close_spider()

    run(main)
    files = published(out)
    assert [str(pq.read_schema(f).field("v").type) for f in files] == ["int64", "double", "string"]
    assert "extra" in pq.read_schema(files[-1]).names
    rows = read_rows(out)
    assert [(row["seq"], row["v"]) for row in rows] == [
        (1, 1),
        (2, 2),
        (3, 2.5),
        (4, 3.0),
        (5, "text"),
        (6, None),
    ]
    assert rows[-1]["extra"] == "[1]"


def test_missing_pyarrow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an import sees without it
    with pytest.raises(MissingDependencyError, match=r"pip install scrapy-sse\[parquet\]"):
        pipeline(tmp_path)


def test_a_crawl_writes_every_item_to_parquet(sse_server: SSEServer, tmp_path: Path) -> None:
    url = sse_server.url("/stream?n=120&done=1&key=parquet-crawl")
    stats, log = run_sink_crawl(
        tmp_path,
        settings={
            "ITEM_PIPELINES": {"scrapy_sse.pipelines.ParquetPipeline": 800},
            "SSE_BATCH_SIZE": 25,
            "SSE_MAX_BUFFER": 25,
            "SSE_PARQUET_ROLL_ROWS": 50,
        },
        args={"url": url},
    )
    out = tmp_path / "parquet"
    rows = read_rows(out)
    assert sorted(row["seq"] for row in rows) == list(range(1, 121)), log
    assert {row["kind"] for row in rows} == {"dict", "dataclass", "attrs", "scrapy"}
    assert json.loads(rows[0]["payload"])["tags"] == ["a", "b"]
    assert unfinished(out) == []
    assert stats["sse/sink/parquet/rows_written"] == 120
    assert stats["sse/sink/parquet/files_written"] == len(published(out)) >= 3


def test_a_published_file_gives_its_streams_resume_point_without_cursors_json(
    tmp_path: Path,
) -> None:
    # A crawl killed right after publishing a file, before it recorded the file's
    # cursors in cursors.json: the next crawl reads them from the file's footer, or
    # it would read the stream from the start again and store the file's rows twice.
    from scrapy_sse.durable import Cursor, Mark

    cursor = Cursor("1500", 1500, Mark(1500, 0), "1501")

    async def main() -> None:
        crashed = pipeline(tmp_path, SSE_PARQUET_ROLL_ROWS=2)
        await crashed.open_spider()
        await crashed.write_batch([{"i": 1499}, {"i": 1500}], {"stream": cursor})
        assert len(published(tmp_path / "out")) == 1  # (rolled at 2 rows: published)
        assert not (tmp_path / "spill" / "parquet" / "cursors.json").exists()

        restarted = pipeline(tmp_path)
        await restarted.open_spider()
        assert restarted.stored == {"stream": cursor}
        await restarted.close_spider()

    run(main)
