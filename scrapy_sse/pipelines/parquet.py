"""``ParquetPipeline``: items as Parquet files, for analytics (pyarrow, extra ``parquet``).

Files are named ``<SSE_PARQUET_TABLE>-<UTC time>-<pid>-<n>.parquet`` in
``SSE_PARQUET_DIR``. Each batch becomes a row group of the open file; the file is
closed and a new one started after ``SSE_PARQUET_ROLL_ROWS`` rows,
``SSE_PARQUET_ROLL_BYTES`` bytes or ``SSE_PARQUET_ROLL_SECONDS`` seconds (checked
between batches and by a timer, so a quiet feed still publishes its file), and at
close. A file is written as ``<name>.parquet.tmp`` and renamed when complete
(``os.replace``), so a reader globbing ``*.parquet`` never sees half a file. The cost:
rows in the open file are only readable once it is closed, and a hard kill
(``SIGKILL``, power loss) loses the file; a graceful stop (one Ctrl-C) closes it.

Nothing is lost that way, and nothing is stored twice: rows count as stored only
once their file is published, so the streams resume (after a kill) from where the
published files end. Each file carries the cursors of its streams in its footer
metadata (``scrapy_sse_cursors``); they are also kept in ``cursors.json`` beside the
spill files after each rename, and at open the footers of files newer than that are
read too (a kill between the rename and that write).

Column types follow the values: bool, int64, float64, string, binary, timestamp
(UTC when the datetimes are aware), date32, time64. Nested values (dict, list,
nested items) and ``Decimal`` are stored as JSON/text strings, not structs: a feed's
nested payloads change shape from event to event, and a string column never breaks.
A column whose values stop fitting its type (text in an int column) becomes a string
column; int becomes float64 when floats appear. A schema change (new field, widened
column) closes the current file and starts a new one, so each file has one schema.
All pyarrow work runs in a thread.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itemadapter import is_item
from scrapy.utils.asyncio import create_looping_call, run_in_thread
from scrapy.utils.defer import deferred_from_coro

from ..durable import Cursor, Slot
from .base import NO_CURSORS, BatchingPipeline, Cursors, json_default, merge_cursors, settle

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


@dataclass
class _OpenFile:
    writer: Any
    tmp: Path
    final: Path
    schema: Any
    started: float
    rows: int = 0
    #: The cursors of the rows written to it, and the holds they settle once published.
    cursors: dict[str, Cursor] = field(default_factory=dict)
    settling: list[dict[Slot, int]] = field(default_factory=list)
    published: bool = False


class ParquetPipeline(BatchingPipeline):
    """Writes items to rolling Parquet files (module doc)."""

    setting_prefix = "SSE_PARQUET"
    extra = "parquet"

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self.pa = self.require("pyarrow", "parquet")
        self.pq = self.require("pyarrow.parquet", "parquet")
        settings = self.settings
        self.directory = Path(settings.get("SSE_PARQUET_DIR") or "parquet")
        self.table = str(settings.get("SSE_PARQUET_TABLE") or "items")
        self.roll_rows = settings.getint("SSE_PARQUET_ROLL_ROWS", 1_000_000)
        self.roll_bytes = settings.getint("SSE_PARQUET_ROLL_BYTES", 128 * 1024 * 1024)
        self.roll_seconds = settings.getfloat("SSE_PARQUET_ROLL_SECONDS", 300.0)
        self.compression = settings.get("SSE_PARQUET_COMPRESSION", "zstd")
        self._file: _OpenFile | None = None
        self._types: dict[str, Any] = {}  # column -> arrow type, carried across files
        self._seq = 0
        self._roll_timer: Any = None
        self._last_file: _OpenFile | None = None  # the file the last batch went to
        self._published: list[_OpenFile] = []  # published, holds not yet settled

    async def open(self) -> None:
        await run_in_thread(self._open)
        if self.roll_seconds > 0:
            self._roll_timer = create_looping_call(self._check_age)
            self._roll_timer.start(min(max(self.roll_seconds / 4, 0.05), 5.0), now=False)

    async def write_batch(self, rows: list[dict[str, Any]], cursors: Cursors = NO_CURSORS) -> None:
        await run_in_thread(self._write, rows, cursors)

    async def committed(self, cursors: Cursors, settling: dict[Slot, int]) -> None:
        """The rows are in a file: they count as stored once it is published."""
        file = self._last_file
        if file is None:
            settle(settling)
            return
        file.settling.append(settling)
        await self._after_publishing()

    async def _after_publishing(self) -> None:
        """Keep the cursors of the files published since last time, and settle."""
        while self._published:
            file = self._published.pop(0)
            if file.cursors:
                await run_in_thread(self._save_local_cursors, file.cursors)
            for settling in file.settling:
                settle(settling)

    async def replayed(self, cursors: Cursors) -> None:
        """A spill file's rows are in the open file: publish it before the spill file
        is removed (a kill would lose them otherwise)."""
        await run_in_thread(self._finish)
        await self._after_publishing()
        await super().replayed(cursors)

    async def load_cursors(self) -> dict[str, Cursor]:
        return await run_in_thread(self._footer_cursors)

    async def close(self) -> None:
        if self._roll_timer is not None and self._roll_timer.running:
            self._roll_timer.stop()
        await run_in_thread(self._finish)
        await self._after_publishing()

    # -- time-based roll while idle ----------------------------------------------------

    def _check_age(self) -> None:
        if self._file is None or self._flushing or self._closing:
            return  # a flush checks the age itself when it is done
        if time.monotonic() - self._file.started >= self.roll_seconds:
            deferred_from_coro(self._exclusive(self._roll_old())).addErrback(self._log_failure)

    async def _roll_old(self) -> None:
        await run_in_thread(self._roll_if_old)
        await self._after_publishing()

    def _roll_if_old(self) -> None:
        if self._file is not None and time.monotonic() - self._file.started >= self.roll_seconds:
            self._finish()

    # -- in the worker thread ------------------------------------------------------------

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        stale = sorted(self.directory.glob(f"{self.table}-*.parquet.tmp"))
        if stale:
            logger.warning(
                "Sink %s: %d unfinished Parquet file(s) in %s, left by a crawl that was "
                "killed (their rows were never readable): %s",
                self.name,
                len(stale),
                self.directory,
                ", ".join(p.name for p in stale[:5]),
            )

    def _footer_cursors(self) -> dict[str, Cursor]:
        """The cursors in the footers of published files newer than ``cursors.json``
        (all of them when there is none)."""
        local = self._local_cursors_path
        since = local.stat().st_mtime - 1 if local.exists() else 0.0
        cursors: dict[str, Cursor] = {}
        for path in sorted(self.directory.glob(f"{self.table}-*.parquet")):
            if path.stat().st_mtime < since:
                continue
            try:
                metadata = self.pq.read_metadata(path).metadata or {}
            except (OSError, self.pa.ArrowException) as exc:
                logger.warning("Sink %s: cannot read the footer of %s (%s)", self.name, path, exc)
                continue
            found = metadata.get(_CURSORS_KEY.encode())  # (pyarrow's keys are bytes)
            if found:
                merge_cursors(cursors, _cursors_from_json(found))
        return cursors

    def _write(self, rows: list[dict[str, Any]], cursors: Cursors = NO_CURSORS) -> None:
        table = self._arrow_table(rows)
        if self._file is not None and not self._file.schema.equals(table.schema):
            self._finish()  # one schema per file
        if self._file is None:
            self._start(table.schema)
        assert self._file is not None
        try:
            self._file.writer.write_table(table)
        except BaseException:
            self._abandon()
            raise
        self._file.rows += len(rows)
        merge_cursors(self._file.cursors, cursors)
        self._last_file = self._file
        if (
            (self.roll_rows and self._file.rows >= self.roll_rows)
            or (self.roll_bytes and self._file.tmp.stat().st_size >= self.roll_bytes)
            or (self.roll_seconds and time.monotonic() - self._file.started >= self.roll_seconds)
        ):
            self._finish()

    def _start(self, schema: Any) -> None:
        self._seq += 1
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        final = self.directory / f"{self.table}-{stamp}-{os.getpid()}-{self._seq:05d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        writer = self.pq.ParquetWriter(str(tmp), schema, compression=self.compression)
        self._file = _OpenFile(writer, tmp, final, schema, time.monotonic())

    def _finish(self) -> None:
        """Close the open file and publish it under its final name."""
        file, self._file = self._file, None
        if file is None:
            return
        if file.cursors:
            file.writer.add_key_value_metadata({_CURSORS_KEY: _cursors_to_json(file.cursors)})
        file.writer.close()
        fd = os.open(file.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the name says the file is complete
        finally:
            os.close(fd)
        os.replace(file.tmp, file.final)
        file.published = True
        self._published.append(file)
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value(f"sse/sink/{self.name}/files_written")
        logger.info("Sink %s: wrote %s (%d rows)", self.name, file.final, file.rows)

    def _abandon(self) -> None:
        """After a failed write the writer is unusable: close it, keep what it had."""
        try:
            self._finish()
        except Exception:
            logger.exception("Sink %s: could not close the Parquet file after an error", self.name)
            self._file = None

    # -- rows to an Arrow table ------------------------------------------------------------

    def _arrow_table(self, rows: list[dict[str, Any]]) -> Any:
        pa = self.pa
        names = list(self._types)
        for row in rows:
            names.extend(k for k in row if k not in self._types and k not in names)
        arrays = []
        for name in names:
            values = [row.get(name) for row in rows]
            arrow_type = self._column_type(name, values)
            try:
                array = pa.array(_prepare(values, arrow_type, pa), type=arrow_type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                arrow_type = pa.string()
                array = pa.array(_prepare(values, arrow_type, pa), type=arrow_type)
            self._types[name] = arrow_type
            arrays.append(array)
        return pa.Table.from_arrays(arrays, names=names)

    def _column_type(self, name: str, values: list[Any]) -> Any:
        pa = self.pa
        current = self._types.get(name)
        inferred = _infer(values, pa)
        if current is None or pa.types.is_null(current):
            return inferred
        if pa.types.is_null(inferred) or inferred.equals(current):
            return current
        if pa.types.is_floating(current) and pa.types.is_integer(inferred):
            return current
        if pa.types.is_integer(current) and pa.types.is_floating(inferred):
            return pa.float64()
        return pa.string()


#: The footer metadata key of a file's cursors.
_CURSORS_KEY = "scrapy_sse_cursors"


def _cursors_to_json(cursors: dict[str, Cursor]) -> str:
    return json.dumps(
        {k: c.as_list() for k, c in cursors.items()},
        ensure_ascii=False,
    )


def _cursors_from_json(text: bytes | str) -> dict[str, Cursor]:
    return {key: Cursor.from_list(values) for key, values in json.loads(text).items()}


def _infer(values: list[Any], pa: Any) -> Any:
    """The Arrow type of a column, from its first non-null value (module doc)."""
    value = next((v for v in values if v is not None), None)
    if value is None:
        return pa.null()
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, bytes | bytearray):
        return pa.binary()
    if isinstance(value, dt.datetime):
        return pa.timestamp("us", tz="UTC" if value.tzinfo else None)
    if isinstance(value, dt.date):
        return pa.date32()
    if isinstance(value, dt.time):
        return pa.time64("us")
    return pa.string()


def _prepare(values: list[Any], arrow_type: Any, pa: Any) -> list[Any]:
    if not pa.types.is_string(arrow_type):
        return values
    return [None if v is None else _as_text(v) for v in values]


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, dict | list | tuple | set | frozenset) or is_item(value):
        return json.dumps(value, ensure_ascii=False, default=json_default)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)
