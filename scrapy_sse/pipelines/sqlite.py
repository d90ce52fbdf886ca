"""``SQLitePipeline``: the embedded default store (stdlib ``sqlite3``, no server).

Why these choices:

* WAL journal mode, so readers (a dashboard, ``sqlite3`` in a shell) never block the
  writer and the writer never blocks them;
* one transaction per batch, many rows per ``INSERT``: a commit (an fsync) per batch
  instead of per row is what keeps up with a busy feed;
* the table follows the items: columns come from ``SSE_SQLITE_COLUMNS`` or from the
  first items, and a field seen later adds a column (``ALTER TABLE``), so no field is
  silently lost; a missing field is ``NULL``; nested values (dict, list) are stored as
  JSON text, dates and times as ISO 8601 text, ``Decimal`` as text (no precision loss);
* a batch is written on the reactor, its ``COMMIT`` (an fsync of the WAL) included:
  the sqlite3 calls of a batch are CPU work that holds the GIL wherever it runs, and
  in a worker thread each call waited for the GIL to come back from a busy reactor
  (up to the 5 ms switch interval, several times per batch): a batch took 10-20 ms
  instead of about 2, and the stream stalled behind it (a crawl with a callback per
  event stored 0.5x as fast as it read; 0.8x or more on the reactor). The fsync is
  about a millisecond on a local SSD. Two cases go to a worker thread instead: when
  another connection holds the file's write lock (the batch waits for it there, up to
  ``SSE_SQLITE_TIMEOUT``), and always with ``SSE_SQLITE_WRITE_IN_THREAD = True``
  (a disk whose fsync takes tens of milliseconds, a network filesystem); opening,
  reading cursors and closing run in the thread too;
* each stream's cursor (where it resumes, and the last row stored) is upserted into
  ``SSE_SQLITE_CURSOR_TABLE`` (default ``sse_cursors``, one row per table and stream)
  in the transaction of the batch: after a crash, even a SIGKILL, the rows and the
  cursor are both there or both not, and the crawl resumes each stream where its rows
  end. (WAL keeps commits across a process crash; across a power cut too, since
  SQLite's default ``synchronous=FULL`` is left as is.)
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import sqlite3
import time
import uuid
from collections.abc import Iterable
from decimal import Decimal
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itemadapter import is_item
from scrapy.utils.asyncio import run_in_thread

from ..durable import Cursor, Mark
from .base import (
    NO_CURSORS,
    BatchingPipeline,
    Cursors,
    JSONText,
    UncheckedJSON,
    checked_json,
    json_default,
)

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

_INT64 = range(-(2**63), 2**63)


def quote_identifier(name: str) -> str:
    """``name`` as an SQL identifier (any characters, quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def sql_value(value: Any) -> Any:
    """A value SQLite stores without loss of information (module doc)."""
    if value is None or isinstance(value, str | float | bytes):
        return value
    if isinstance(value, enum.Enum):
        return sql_value(value.value)
    if isinstance(value, int):  # bool included: stored as 0/1
        return value if value in _INT64 else str(value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, dict | list | tuple | set | frozenset) or is_item(value):
        return json.dumps(value, ensure_ascii=False, default=json_default)
    return str(value)


def _fields(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Field names of *rows*, in first-seen order."""
    return list(dict.fromkeys(chain.from_iterable(rows)))


def _has_json_valid(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite has ``json_valid`` (built in since 3.38, an option before)."""
    try:
        conn.execute("SELECT json_valid('{}')").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


class SQLitePipeline(BatchingPipeline):
    """Stores items in an SQLite table, in batches (module doc for the settings)."""

    setting_prefix = "SSE_SQLITE"
    holds_cursors = True
    checks_json = True
    #: Each batch is a commit, and a commit an fsync on the reactor: at busy rates,
    #: fewer of them (batch delivery: 0.44x -> 0.51x of the crawl alone); a quiet
    #: feed still commits every SSE_FLUSH_INTERVAL.
    default_batch_size = 2000
    extra = None

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self.path = str(self.settings.get("SSE_SQLITE_PATH") or "items.sqlite3")
        self.table = str(self.settings.get("SSE_SQLITE_TABLE") or "items")
        self.create_table = self.settings.getbool("SSE_SQLITE_CREATE_TABLE", True)
        self.columns: list[str] = self.settings.getlist("SSE_SQLITE_COLUMNS")
        self.timeout = self.settings.getfloat("SSE_SQLITE_TIMEOUT", 5.0)
        self.write_in_thread = self.settings.getbool("SSE_SQLITE_WRITE_IN_THREAD", False)
        #: Where each stream's cursor is committed ("": nowhere, resume from JOBDIR).
        self.cursor_table = str(self.settings.get("SSE_SQLITE_CURSOR_TABLE", "sse_cursors"))
        self._conn: sqlite3.Connection | None = None
        # Lower-cased column name -> column name (SQLite names are case-insensitive);
        # None until read, and again after a rollback (which also undoes ALTER TABLE).
        self._known: dict[str, str] | None = None
        self._pending_known: dict[str, str] | None = None  # (until the COMMIT)
        self._json_valid = False  # whether this SQLite has json_valid (set at open)

    async def open(self) -> None:
        await run_in_thread(self._open)

    async def write_batch(self, rows: list[dict[str, Any]], cursors: Cursors = NO_CURSORS) -> None:
        # On the reactor, COMMIT (its fsync) included, unless another writer holds the
        # file's lock (module doc: why).
        if self.write_in_thread or not self._begin_now():
            await run_in_thread(self._write, rows, cursors)
            return
        conn = self._connection()
        self._statements(conn, rows, cursors)
        self._commit(conn)

    async def load_cursors(self) -> dict[str, Cursor]:
        return await run_in_thread(self._load_cursors)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await run_in_thread(conn.close)

    # -- in the worker thread ------------------------------------------------------------

    def _open(self) -> None:
        if self.path != ":memory:" and not self.path.startswith("file:"):
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), so
        # an ALTER TABLE and the INSERTs of a batch commit or roll back together.
        conn = sqlite3.connect(
            self.path,
            timeout=self.timeout,
            isolation_level=None,
            check_same_thread=False,  # the base class never runs two calls at once
            uri=self.path.startswith("file:"),
        )
        try:
            self._use_wal(conn)
            self._json_valid = _has_json_valid(conn)
            known = self._read_columns(conn)
            if not known:
                if not self.create_table:
                    raise ValueError(
                        f"SQLite table {self.table!r} does not exist in {self.path} "
                        "and SSE_SQLITE_CREATE_TABLE is False"
                    )
                if self.columns:
                    conn.execute(self._create_sql(self.columns))
                    known = self._read_columns(conn)
            if self.cursor_table:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {quote_identifier(self.cursor_table)} ("
                    "sink TEXT NOT NULL, stream_key TEXT NOT NULL, event_id TEXT NOT NULL, "
                    "seq INTEGER NOT NULL, stored_seq INTEGER NOT NULL, "
                    "stored_item INTEGER NOT NULL, next_id TEXT NOT NULL, "
                    "updated_at REAL NOT NULL, "
                    "PRIMARY KEY (sink, stream_key))"
                )
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._known = known

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL. Several crawls opening one new file at once can each
        hold a read lock and want the write lock: SQLite then answers "locked" at once,
        without waiting (it would deadlock), so the switch is retried here, in the
        worker thread, for up to ``SSE_SQLITE_TIMEOUT`` seconds."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def _read_columns(self, conn: sqlite3.Connection) -> dict[str, str]:
        info = conn.execute(f"PRAGMA table_info({quote_identifier(self.table)})").fetchall()
        return {row[1].lower(): row[1] for row in info}

    def _create_sql(self, columns: list[str]) -> str:
        cols = ", ".join(quote_identifier(c) for c in columns)
        return f"CREATE TABLE IF NOT EXISTS {quote_identifier(self.table)} ({cols})"

    def _load_cursors(self) -> dict[str, Cursor]:
        if not self.cursor_table or self._conn is None:
            return {}
        found = self._conn.execute(
            "SELECT stream_key, event_id, seq, stored_seq, stored_item, next_id "
            f"FROM {quote_identifier(self.cursor_table)} WHERE sink = ?",
            (self.table,),
        ).fetchall()
        return {
            key: Cursor(event_id, seq, Mark(s, i), next_id)
            for key, event_id, seq, s, i, next_id in found
        }

    def _save_cursors(self, conn: sqlite3.Connection, cursors: Cursors) -> None:
        """Upsert the cursors, keeping the most advanced part of each (a replayed
        spill carries older ones)."""
        if not cursors or not self.cursor_table:
            return
        table = quote_identifier(self.cursor_table)
        now = time.time()
        conn.executemany(
            f"INSERT INTO {table} AS c (sink, stream_key, event_id, seq, stored_seq, "
            "stored_item, next_id, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (sink, stream_key) DO UPDATE SET "
            "event_id = CASE WHEN excluded.seq >= c.seq THEN excluded.event_id "
            "ELSE c.event_id END, "
            "next_id = CASE WHEN excluded.seq >= c.seq THEN excluded.next_id "
            "ELSE c.next_id END, "
            "seq = max(c.seq, excluded.seq), "
            "stored_item = CASE WHEN (excluded.stored_seq, excluded.stored_item) > "
            "(c.stored_seq, c.stored_item) THEN excluded.stored_item ELSE c.stored_item END, "
            "stored_seq = max(c.stored_seq, excluded.stored_seq), "
            "updated_at = excluded.updated_at",
            [
                (self.table, key, c.event_id, c.seq, c.stored.seq, c.stored.item, c.next_id, now)
                for key, c in cursors.items()
            ],
        )

    def _write(self, rows: list[dict[str, Any]], cursors: Cursors = NO_CURSORS) -> None:
        """The whole batch, in the worker thread (when another writer holds the lock)."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        self._statements(conn, rows, cursors)
        self._commit(conn)

    def _begin_now(self) -> bool:
        """``BEGIN IMMEDIATE`` without waiting for the write lock (on the reactor);
        ``False`` when another connection holds it."""
        conn = self._connection()
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        return True

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("The SQLite sink is not open")
        return self._conn

    def _statements(
        self, conn: sqlite3.Connection, rows: list[dict[str, Any]], cursors: Cursors
    ) -> None:
        """The batch's statements, in the open transaction (rolled back if one fails)."""
        fields = _fields(rows)
        try:
            known = self._read_columns(conn) if self._known is None else dict(self._known)
            if not known and fields:
                if not self.create_table:
                    raise sqlite3.OperationalError(f"no such table: {self.table}")
                conn.execute(self._create_sql(self.columns + fields))
                known = self._read_columns(conn)
            targets: dict[str, list[str]] = {}  # column -> the fields stored in it
            for field in fields:
                column = known.get(field.lower())
                if column is None:
                    conn.execute(
                        f"ALTER TABLE {quote_identifier(self.table)} "
                        f"ADD COLUMN {quote_identifier(field)}"
                    )
                    column = known[field.lower()] = field
                targets.setdefault(column, []).append(field)
            self._insert(conn, rows, targets)
            self._save_cursors(conn, cursors)
        except BaseException:
            self._rollback(conn)
            raise
        self._pending_known = known

    def _commit(self, conn: sqlite3.Connection) -> None:
        """``COMMIT`` (and the WAL's fsync)."""
        try:
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise
        self._known = self._pending_known

    def _rollback(self, conn: sqlite3.Connection) -> None:
        self._known = None  # (a rollback also undoes ALTER TABLE)
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def _insert(
        self, conn: sqlite3.Connection, rows: list[dict[str, Any]], targets: dict[str, list[str]]
    ) -> None:
        table = quote_identifier(self.table)
        if not targets:  # items without any field: one row each, all NULL
            conn.executemany(f"INSERT INTO {table} DEFAULT VALUES", [() for _ in rows])
            return
        columns = list(targets)
        names = ", ".join(quote_identifier(c) for c in columns)
        by_column = [self._column(rows, targets[c]) for c in columns]
        # Columns of events' JSON left for SQLite to check (json_valid, in C): their
        # cell is "the value if it is JSON, else NULL".
        checked = tuple(type(values) is _InStore for values in by_column)
        values = list(chain.from_iterable(zip(*by_column, strict=True)))
        # Many rows per statement: one sqlite3_step (and one release of the GIL) per
        # chunk instead of per row. Per row, the reactor thread wins the GIL back at
        # every step and the writer waits for it (the convoy effect): a batch then
        # took ten times as long as the same INSERTs from an idle process.
        width = len(columns)
        per_chunk = max(1, min(MAX_ROWS_PER_INSERT, self._max_variables(conn) // width))
        for start in range(0, len(rows), per_chunk):
            count = min(per_chunk, len(rows) - start)
            conn.execute(
                f"INSERT INTO {table} ({names}) VALUES " + _values_sql(count, checked),
                values[start * width : (start + count) * width],
            )

    def _column(self, rows: list[dict[str, Any]], fields: list[str]) -> list[Any]:
        """:func:`_column`, with events' unchecked JSON checked here when SQLite
        cannot check it (no ``json_valid``, or other values in the column)."""
        values = _column(rows, fields)
        if UncheckedJSON not in set(map(type, values)):
            return values
        if self._json_valid and set(map(type, values)) <= _CHECKABLE:
            return _InStore(values)
        return [checked_json(v) for v in values]

    @staticmethod
    def _max_variables(conn: sqlite3.Connection) -> int:
        getlimit = getattr(conn, "getlimit", None)  # (Python 3.11+)
        if getlimit is None:
            return 999  # the lowest limit any SQLite build has had (before 3.32)
        return int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))


#: Rows per INSERT statement (SQLite also caps the statement's ``?`` parameters).
MAX_ROWS_PER_INSERT = 500

#: Columns SQLite checks with ``json_valid``: unchecked JSON, NULL, and numbers (valid
#: JSON, kept as they are); a text column could not tell ``"abc"`` (the JSON string,
#: decoded) from text that is not JSON.
_CHECKABLE = frozenset({UncheckedJSON, type(None), int, float})


class _InStore(list[Any]):
    """A column whose JSON SQLite checks (see ``SQLitePipeline._insert``)."""

    __slots__ = ()


@functools.lru_cache(maxsize=32)
def _values_sql(count: int, checked: tuple[bool, ...]) -> str:
    """``(?1, ?2, ...), (...)`` for *count* rows, a checked column's cell as
    ``CASE WHEN json_valid(?n) THEN ?n END`` (each parameter numbered, used twice)."""
    width = len(checked)
    rows = []
    for r in range(count):
        cells = []
        for c, check in enumerate(checked):
            n = r * width + c + 1
            cells.append(f"CASE WHEN json_valid(?{n}) THEN ?{n} END" if check else f"?{n}")
        rows.append("(" + ", ".join(cells) + ")")
    return ", ".join(rows)


#: Types SQLite stores as they are (ints only within 64 bits: checked apart).
_AS_IS = frozenset({str, float, bytes, type(None), JSONText, UncheckedJSON})


def _column(rows: list[dict[str, Any]], fields: list[str]) -> list[Any]:
    """One column's values for *rows*, converted by :func:`sql_value` only where a
    value needs it (a batch of events converts nothing)."""
    if len(fields) == 1:
        name = fields[0]
        values = [row.get(name) for row in rows]
    else:  # fields that differ only in case share a column: the first present wins
        values = [next((row[f] for f in fields if f in row), None) for row in rows]
    kinds = set(map(type, values))
    if kinds <= _AS_IS:
        return values
    if kinds <= _AS_IS | {int} and all(v in _INT64 for v in values if type(v) is int):
        return values
    return [sql_value(v) for v in values]
