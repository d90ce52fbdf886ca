"""PostgreSQL sink: each batch is one ``COPY ... FROM STDIN`` in one transaction.

``COPY`` is the fastest way into PostgreSQL (one statement, rows streamed), and the
transaction makes a batch all-or-nothing: a connection killed mid-batch leaves no half
batch behind, so the retry that :class:`~scrapy_sse.pipelines.base.BatchingPipeline`
makes cannot duplicate rows.

One failure remains ambiguous in any database client: the connection dies after the
server committed but before the client heard so. To keep even that exactly-once, each
batch records its transaction id (``txid_current()``); when an attempt fails, the
batch is remembered as *in doubt* (by a fingerprint of its rows) and, when the same
rows come back (a retry, or a replay from a spill file), ``txid_status()`` tells
whether the earlier attempt committed, in which case the rows are not written again.

Each stream's cursor (where it resumes, and the last row stored) is upserted into
``SSE_POSTGRES_CURSOR_TABLE`` (default ``sse_cursors``, in the table's schema; one row
per table and stream) in the same transaction as the ``COPY``: after any crash the
rows and the cursor are both there or both not, and a crawl started anywhere against
this database resumes each stream where its rows end.

Columns come from ``SSE_POSTGRES_COLUMNS`` or the first item's fields. With
``SSE_POSTGRES_CREATE_TABLE`` the table is created at the first batch, typed from its
values (the first non-null value of each column): nested values (dict, list) and
columns that are null throughout the first batch become ``jsonb``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from scrapy.utils.asyncio import is_asyncio_available

from ..durable import Cursor, Mark
from .base import (
    NO_CURSORS,
    BatchingPipeline,
    Cursors,
    Fenced,
    JSONText,
    UncheckedJSON,
    checked_json,
    dump_rows,
    json_default,
)
from .tabular import Unencodable, encode_columns, number_text

if TYPE_CHECKING:
    from types import ModuleType

    from psycopg import AsyncConnection
    from psycopg.sql import Composed, Identifier
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a connection attempt may take (unless the DSN sets ``connect_timeout``).
CONNECT_TIMEOUT = 10
#: Types COPY's text format takes as they are: in a json/jsonb column JSON text only
#: (a plain string there is a JSON string value), in other columns any string.
_JSON_TEXT = frozenset({JSONText})
_JSON_OR_UNCHECKED = frozenset({JSONText, UncheckedJSON})
_TEXT = frozenset({str, JSONText})


def _json_text(value: Any) -> str | None:
    """A value for a json/jsonb column, as JSON text."""
    if type(value) is UncheckedJSON:
        return checked_json(value)  # type: ignore[no-any-return]
    return json.dumps(value, default=json_default, ensure_ascii=False)


def _column_text(value: Any) -> str | None:
    """A value for another column, in COPY's text format."""
    kind = type(value)
    if kind is UncheckedJSON:
        return checked_json(value)  # type: ignore[no-any-return]
    text = number_text(value, "t", "f")
    if text is not None:
        return text
    if kind is dict or kind is list or kind is tuple:
        return _json_text(value)
    raise Unencodable(kind.__name__)


#: A json/jsonb column takes these as they are (JSON text is parsed by the server).
_AS_JSON_TEXT = frozenset({type(None), JSONText})
#: Values other columns take as they are (others are checked: nested ones become JSON).
_SCALARS = frozenset({type(None), str, JSONText, int, float, bool})

#: How long to wait for the transaction of a failed attempt to end on the server
#: (a terminated backend rolls back within milliseconds) before retrying later.
IN_PROGRESS_WAIT = 5.0


def fingerprint(rows: list[dict[str, Any]]) -> str:
    """A digest of *rows* that survives a round trip through a spill file."""
    return hashlib.sha256(dump_rows(rows).encode()).hexdigest()


class InDoubtBatches(Generic[T]):
    """Batches whose last attempt failed but may have reached the sink, each with what
    the sink needs to find out (a transaction id, a batch token).

    Keyed by :func:`fingerprint`, computed only after a failure and while something is
    in doubt, so the normal path costs nothing. Two different batches with identical
    rows are indistinguishable, and that is harmless: whichever comes first is skipped
    if the earlier attempt committed, the other is written, and the sink ends up with
    the right number of copies. Bounded: the oldest entries are forgotten first.
    """

    def __init__(self, limit: int = 1024) -> None:
        self._entries: OrderedDict[str, T] = OrderedDict()
        self._limit = limit

    def __bool__(self) -> bool:
        return bool(self._entries)

    def get(self, key: str) -> T | None:
        return self._entries.get(key)

    def pop(self, key: str) -> T | None:
        return self._entries.pop(key, None)

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)

    def add(self, key: str, value: T) -> None:
        self._entries[key] = value
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)


def postgres_type(value: Any) -> str:
    """The column type created for a column whose first non-null value is *value*."""
    if value is None or isinstance(value, dict | list | tuple | JSONText | UncheckedJSON):
        return "jsonb"  # a JSON column accepts any later value
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, float):
        return "double precision"
    if isinstance(value, Decimal):
        return "numeric"
    if isinstance(value, bytes | bytearray):
        return "bytea"
    if isinstance(value, dt.datetime):
        return "timestamptz" if value.tzinfo is not None else "timestamp"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, dt.time):
        return "time"
    if isinstance(value, uuid.UUID):
        return "uuid"
    return "text"


class TableMissingError(RuntimeError):
    """The table does not exist and ``SSE_POSTGRES_CREATE_TABLE`` is off."""


class PostgresPipeline(BatchingPipeline):
    """Writes items to a PostgreSQL table with ``COPY``, a transaction per batch.

    Needs the asyncio reactor (Scrapy's default) for psycopg's async connection.
    """

    setting_prefix = "SSE_POSTGRES"
    holds_cursors = True
    fences_streams = True
    checks_json = True
    extra = "postgres"

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self.dsn: str = self.settings.get("SSE_POSTGRES_DSN") or ""
        table: str = self.settings.get("SSE_POSTGRES_TABLE") or ""
        if not self.dsn or not table:
            raise ValueError("PostgresPipeline needs SSE_POSTGRES_DSN and SSE_POSTGRES_TABLE")
        #: ``schema.table`` or ``table``.
        self.table_parts = tuple(table.split(".", 1))
        self.create_table = self.settings.getbool("SSE_POSTGRES_CREATE_TABLE", False)
        self.column_setting: list[str] = self.settings.getlist("SSE_POSTGRES_COLUMNS")
        cursor_table = str(self.settings.get("SSE_POSTGRES_CURSOR_TABLE", "sse_cursors"))
        #: ``schema.name`` of the cursor table (empty: no cursors, resume from JOBDIR).
        self.cursor_parts: tuple[str, ...] = (
            () if not cursor_table else (*self.table_parts[:-1], cursor_table)
        )
        self._psycopg: ModuleType | None = None
        self._conn: AsyncConnection[Any] | None = None
        self._columns: list[str] | None = None
        self._column_set: frozenset[str] = frozenset()
        self._json_columns: list[bool] = []
        self._copy_sql: Composed | None = None
        self._unknown_fields_seen = False
        self._in_doubt: InDoubtBatches[int] = InDoubtBatches()
        self._sent_unchecked = False  # the last COPY left JSON for the server to check

    # -- BatchingPipeline ------------------------------------------------------------

    async def open(self) -> None:
        self._psycopg = self.require("psycopg", "postgres")
        if not is_asyncio_available():
            raise RuntimeError(
                "PostgresPipeline needs the asyncio reactor (Scrapy's default "
                "TWISTED_REACTOR) or TWISTED_REACTOR_ENABLED = False"
            )
        conn = await self._connection()
        if not self.create_table and not await self._table_columns(conn):
            raise TableMissingError(
                f"table {'.'.join(self.table_parts)!r} does not exist; create it or set "
                "SSE_POSTGRES_CREATE_TABLE = True"
            )
        if self.cursor_parts:
            sql = self._sql()
            statements = [
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (sink text NOT NULL, stream_key text NOT NULL, "
                    "event_id text NOT NULL, seq bigint NOT NULL, stored_seq bigint NOT NULL, "
                    "stored_item bigint NOT NULL, next_id text NOT NULL, "
                    "updated_at timestamptz NOT NULL, fence bigint, "
                    "PRIMARY KEY (sink, stream_key))"
                ).format(sql.Identifier(*self.cursor_parts))
            ]
            if self.fences is not None:  # (a cursor table from before fencing)
                statements.append(
                    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS fence bigint").format(
                        sql.Identifier(*self.cursor_parts)
                    )
                )
            await self._ddl(conn, ".".join(self.cursor_parts), statements)
        elif self.fences is not None:
            raise ValueError(
                "PostgresPipeline in a cluster (SSE_CLUSTER_URL) needs its cursor table "
                "(SSE_POSTGRES_CURSOR_TABLE must not be empty): it holds the fences"
            )

    async def _ddl(self, conn: AsyncConnection[Any], name: str, statements: list[Any]) -> None:
        """Run DDL on table ``name`` under a transaction-scoped advisory lock: two
        crawls creating the same table at once (workers of a cluster starting together)
        would otherwise race inside ``CREATE TABLE IF NOT EXISTS`` and one would fail
        with a unique violation in the catalog."""
        lock = int.from_bytes(hashlib.sha256(f"scrapy-sse:{name}".encode()).digest()[:8], "big")
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock - (1 << 63),))
            for statement in statements:
                await conn.execute(statement)

    async def load_cursors(self) -> dict[str, Cursor]:
        if not self.cursor_parts:
            return {}
        conn = await self._connection()
        sql = self._sql()
        cur = await conn.execute(
            sql.SQL(
                "SELECT stream_key, event_id, seq, stored_seq, stored_item, next_id "
                "FROM {} WHERE sink = %s"
            ).format(sql.Identifier(*self.cursor_parts)),
            (self._sink_name,),
        )
        return {
            key: Cursor(event_id, int(seq), Mark(int(s), int(i)), next_id)
            for key, event_id, seq, s, i, next_id in await cur.fetchall()
        }

    async def claim_fence(self, key: str, token: int) -> Cursor | None:
        conn = await self._connection()
        sql = self._sql()
        try:
            cur = await conn.execute(
                sql.SQL(
                    "INSERT INTO {} AS c (sink, stream_key, event_id, seq, stored_seq, "
                    "stored_item, next_id, updated_at, fence) "
                    "VALUES (%s, %s, '', 0, 0, 0, '', now(), %s) "
                    "ON CONFLICT (sink, stream_key) DO UPDATE SET "
                    "fence = GREATEST(COALESCE(c.fence, 0), excluded.fence) "
                    "RETURNING event_id, seq, stored_seq, stored_item, next_id, fence"
                ).format(sql.Identifier(*self.cursor_parts)),
                (self._sink_name, key, token),
            )
            row = await cur.fetchone()
        except BaseException:
            await self._drop_unless_clean(conn)
            raise
        assert row is not None
        event_id, seq, stored_seq, stored_item, next_id, fence = row
        if int(fence) > token:
            raise Fenced([key])
        if not seq and not event_id:
            return None  # (nothing stored yet: the row only holds the fence)
        return Cursor(event_id, int(seq), Mark(int(stored_seq), int(stored_item)), next_id)

    @property
    def _sink_name(self) -> str:
        """The cursors' ``sink`` column: the table the rows go to."""
        return ".".join(self.table_parts)

    async def _save_cursors(self, cur: Any, cursors: Cursors) -> None:
        """Upsert the cursors, keeping the most advanced part of each (a replayed
        spill carries older ones).

        One statement for all of them: psycopg's ``executemany`` runs in pipeline mode,
        and a connection killed mid-pipeline can be left stuck in that mode while it
        still looks open (every later query failed with "cannot exit pipeline mode
        while busy" until the crawl ended, each batch spilled).
        """
        if not cursors or not self.cursor_parts:
            return
        sql = self._sql()
        fenced = self.fences is not None
        # In a cluster, a stream's row is updated only where the stored fence is not
        # newer than this worker's token for it; a stream refused fences off the whole
        # batch (raised inside its transaction: nothing of it is committed).
        row = (
            "(%s, %s, %s, %s, %s, %s, %s, now(), %s)"
            if fenced
            else ("(%s, %s, %s, %s, %s, %s, %s, now())")
        )
        await cur.execute(
            sql.SQL(
                "INSERT INTO {} AS c (sink, stream_key, event_id, seq, stored_seq, stored_item, "
                "next_id, updated_at{}) VALUES {} "
                "ON CONFLICT (sink, stream_key) DO UPDATE SET "
                "event_id = CASE WHEN excluded.seq >= c.seq THEN excluded.event_id "
                "ELSE c.event_id END, "
                "next_id = CASE WHEN excluded.seq >= c.seq THEN excluded.next_id "
                "ELSE c.next_id END, "
                "seq = GREATEST(c.seq, excluded.seq), "
                "stored_item = CASE WHEN (excluded.stored_seq, excluded.stored_item) > "
                "(c.stored_seq, c.stored_item) THEN excluded.stored_item ELSE c.stored_item END, "
                "stored_seq = GREATEST(c.stored_seq, excluded.stored_seq), "
                "updated_at = now(){}"
            ).format(
                sql.Identifier(*self.cursor_parts),
                sql.SQL(", fence" if fenced else ""),
                sql.SQL(", ").join([sql.SQL(row)] * len(cursors)),
                sql.SQL(
                    ", fence = excluded.fence WHERE COALESCE(c.fence, 0) <= excluded.fence "
                    "RETURNING stream_key"
                    if fenced
                    else ""
                ),
            ),
            [
                value
                for key, c in cursors.items()
                for value in (
                    self._sink_name,
                    key,
                    c.event_id,
                    c.seq,
                    c.stored.seq,
                    c.stored.item,
                    c.next_id,
                    *((self.fence_for(key),) if fenced else ()),
                )
            ],
        )
        if fenced:
            written = {key for (key,) in await cur.fetchall()}
            if len(written) < len(cursors):
                raise Fenced(key for key in cursors if key not in written)

    async def write_batch(self, rows: list[dict[str, Any]], cursors: Cursors = NO_CURSORS) -> None:
        if not rows:
            return
        conn = await self._connection()
        key = ""
        if self._in_doubt:
            key = fingerprint(rows)
            earlier = self._in_doubt.get(key)
            # If the check fails (the connection broke again), the batch stays in doubt.
            try:
                committed = earlier is not None and await self._committed(conn, earlier)
            except BaseException:
                await self._drop_unless_clean(conn)
                raise
            self._in_doubt.discard(key)
            if committed:
                self._stat_inc("in_doubt_batches_skipped")
                logger.info(
                    "Sink %s: %d rows were committed by an attempt that lost its "
                    "connection; not writing them again",
                    self.name,
                    len(rows),
                )
                return
        await self._prepare(conn, rows)
        try:
            await self._copy(conn, rows, cursors, key, check_json=False)
        except Exception as exc:
            if not (self._sent_unchecked and self._refused(exc)):
                raise
            # An event's data that starts like JSON but is not: the server refused the
            # batch (and rolled it back). Checked in Python, the batch goes again.
            logger.debug("Sink %s: a batch held JSON the server refused (%s)", self.name, exc)
            self._stat_inc("json_rechecked_batches")
            await self._copy(conn, rows, cursors, key, check_json=True)

    async def _copy(
        self,
        conn: AsyncConnection[Any],
        rows: list[dict[str, Any]],
        cursors: Cursors,
        key: str,
        *,
        check_json: bool,
    ) -> None:
        """The batch's transaction: its ``COPY`` and its cursors."""
        assert self._copy_sql is not None
        self._sent_unchecked = False
        xid = None
        try:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute("SELECT txid_current()")
                xid = int((await cur.fetchone() or (0,))[0])
                async with cur.copy(self._copy_sql) as copy:
                    body = self._encode(rows, check_json=check_json)
                    if body is not None:
                        await copy.write(body)  # (in the connection's encoding)
                    else:  # (a value the text format cannot carry: psycopg's dumpers)
                        for values in self._values(rows):
                            await copy.write_row(values)
                await self._save_cursors(cur, cursors)
        except BaseException as exc:
            # (Data the server refused, or a fenced batch, was rolled back: not in doubt.)
            if xid is not None and not self._refused(exc) and not isinstance(exc, Fenced):
                self._in_doubt.add(key or fingerprint(rows), xid)
            await self._drop_unless_clean(conn)
            raise

    async def _drop_unless_clean(self, conn: AsyncConnection[Any]) -> None:
        """After a failed attempt: keep *conn* only if it is open, idle and out of
        pipeline mode (the server refused a value and rolled back); any other state
        left by a connection that broke mid-exchange is not worth recovering."""
        psycopg = self._psycopg
        assert psycopg is not None
        clean = (
            not (conn.broken or conn.closed)
            and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            and conn.pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF
        )
        if not clean:
            await self._drop_connection()

    def _refused(self, exc: BaseException) -> bool:
        """Whether *exc* is the server refusing a value (SQLSTATE class 22)."""
        psycopg = self._psycopg
        return psycopg is not None and isinstance(exc, psycopg.errors.DataError)

    async def close(self) -> None:
        await self._drop_connection()

    # -- connection --------------------------------------------------------------------

    async def _connection(self) -> AsyncConnection[Any]:
        """The open connection, or a new one (after a broken one was dropped)."""
        if self._conn is not None and not (self._conn.broken or self._conn.closed):
            return self._conn
        await self._drop_connection()
        psycopg = self._psycopg or self.require("psycopg", "postgres")
        info = psycopg.conninfo.conninfo_to_dict(self.dsn)
        kwargs: dict[str, Any] = {"fallback_application_name": "scrapy-sse"}
        if "connect_timeout" not in info:
            kwargs["connect_timeout"] = CONNECT_TIMEOUT
        conn: AsyncConnection[Any] = await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, **kwargs
        )
        # Nested values may hold datetimes, items and the like (base.json_default).
        dumps = functools.partial(json.dumps, default=json_default, ensure_ascii=False)
        psycopg.types.json.set_json_dumps(dumps, context=conn)
        self._conn = conn
        return conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except Exception:  # already broken: nothing more to release
                logger.debug("Sink %s: closing a broken connection failed", self.name)

    async def _committed(self, conn: AsyncConnection[Any], xid: int) -> bool:
        """Whether transaction *xid* (a failed attempt of this batch) committed.

        Waits (bounded) while it is still in progress: the server has not yet noticed
        the lost connection. If it is still running after that, this raises, so the
        base class retries later.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + IN_PROGRESS_WAIT
        while True:
            cur = await conn.execute("SELECT txid_status(%s)", (xid,))
            status = (await cur.fetchone() or (None,))[0]
            if status != "in progress":
                break
            if loop.time() >= deadline:
                raise RuntimeError(f"an earlier attempt (transaction {xid}) is still running")
            await asyncio.sleep(0.1)
        if status is None:  # too old for the server to remember: write, at least once
            logger.warning("Sink %s: outcome of transaction %d unknown", self.name, xid)
        return status == "committed"

    # -- table and columns -----------------------------------------------------------

    def _table_sql(self) -> Identifier:
        table: Identifier = self._sql().Identifier(*self.table_parts)
        return table

    def _sql(self) -> Any:
        psycopg = self._psycopg or self.require("psycopg", "postgres")
        return psycopg.sql

    async def _table_columns(self, conn: AsyncConnection[Any]) -> dict[str, str]:
        """Column name -> type name of the table; empty when it does not exist."""
        cur = await conn.execute(
            "SELECT a.attname, t.typname FROM pg_attribute a "
            "JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (self._table_sql().as_string(conn),),
        )
        return {name: typ for name, typ in await cur.fetchall()}

    async def _prepare(self, conn: AsyncConnection[Any], rows: list[dict[str, Any]]) -> None:
        """At the first batch: create the table if asked, settle the columns."""
        if self._columns is not None:
            return
        sql = self._sql()
        wanted = self.column_setting or list(rows[0])
        table_columns = await self._table_columns(conn)
        if not table_columns:
            if not self.create_table:
                raise TableMissingError(f"table {'.'.join(self.table_parts)!r} does not exist")
            types = {
                col: postgres_type(next((r[col] for r in rows if r.get(col) is not None), None))
                for col in wanted
            }
            create = sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                self._table_sql(),
                sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(col), sql.SQL(types[col]))
                    for col in wanted
                ),
            )
            await self._ddl(conn, ".".join(self.table_parts), [create])
            logger.info("Sink %s: created table %s", self.name, ".".join(self.table_parts))
            table_columns = await self._table_columns(conn)
        missing = [col for col in wanted if col not in table_columns]
        if missing and self.column_setting:
            raise ValueError(f"SSE_POSTGRES_COLUMNS names columns the table lacks: {missing}")
        columns = [col for col in wanted if col in table_columns]
        if not columns:
            raise ValueError(f"no field of the items is a column of the table: {wanted}")
        if missing:
            self._warn_unknown(missing)
        self._json_columns = [table_columns[col] in {"json", "jsonb"} for col in columns]
        self._columns = columns
        self._column_set = frozenset(columns)
        self._copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
            self._table_sql(), sql.SQL(", ").join(sql.Identifier(col) for col in columns)
        )

    def _encode(self, rows: list[dict[str, Any]], *, check_json: bool) -> str | None:
        """The rows in COPY's text format, a column at a time (module
        :mod:`~scrapy_sse.pipelines.tabular`); ``None`` when a value needs one of
        psycopg's dumpers (dates, ``Decimal``, bytes...)."""
        self._check_all_fields(rows)
        columns = [[row.get(column) for row in rows] for column in self._columns or []]
        # Events' unchecked JSON goes to a json/jsonb column as it is: the server checks
        # it (and refuses the batch when it is not JSON, see write_batch).
        as_json = _JSON_TEXT if check_json else _JSON_OR_UNCHECKED
        types = [as_json if j else _TEXT for j in self._json_columns]
        convert = [_json_text if j else _column_text for j in self._json_columns]
        if not check_json:
            self._sent_unchecked = any(
                json_column and UncheckedJSON in set(map(type, values))
                for json_column, values in zip(self._json_columns, columns, strict=True)
            )
        try:
            return encode_columns(columns, types, convert)
        except Unencodable:
            self._sent_unchecked = False  # (psycopg's dumpers: checked, see _to_json)
            return None

    def _check_all_fields(self, rows: list[dict[str, Any]]) -> None:
        if not self._unknown_fields_seen:
            for row in rows:
                self._check_fields(row)
                if self._unknown_fields_seen:
                    break

    def _values(self, rows: list[dict[str, Any]]) -> Iterator[tuple[Any, ...]]:
        """The COPY values of *rows*, a tuple per row in column order, converted column
        by column and only where a value needs it (the JSON text of events goes to a
        ``jsonb`` column as it came: the server parses it)."""
        self._check_all_fields(rows)
        columns = self._columns or []
        by_column = []
        for column, json_column in zip(columns, self._json_columns, strict=True):
            values = [row.get(column) for row in rows]
            kinds = set(map(type, values))
            if json_column and not kinds <= _AS_JSON_TEXT:
                values = [self._to_json(v) for v in values]
            elif not json_column and not kinds <= _SCALARS:
                values = [self._nested_to_json(v) for v in values]
            by_column.append(values)
        return zip(*by_column, strict=True)

    def _to_json(self, value: Any) -> Any:
        """For a json/jsonb column: any value, a string included, as a JSON value."""
        if type(value) is UncheckedJSON:
            return checked_json(value)
        if value is None or type(value) is JSONText:
            return value
        assert self._psycopg is not None
        return self._psycopg.types.json.Jsonb(value)

    def _nested_to_json(self, value: Any) -> Any:
        """For other columns: nested values as JSON text, the rest as is."""
        if type(value) is UncheckedJSON:
            return checked_json(value)
        if isinstance(value, dict | list | tuple):
            assert self._psycopg is not None
            return self._psycopg.types.json.Jsonb(value)
        return value

    def _check_fields(self, row: dict[str, Any]) -> None:
        """Warn (once) about item fields that have no column, instead of failing."""
        if not row.keys() <= self._column_set:
            self._warn_unknown([field for field in row if field not in self._column_set])

    def _warn_unknown(self, fields: list[str]) -> None:
        self._unknown_fields_seen = True
        logger.warning(
            "Sink %s: item fields %s have no column in %s and are not stored (warned once)",
            self.name,
            fields,
            ".".join(self.table_parts),
        )
