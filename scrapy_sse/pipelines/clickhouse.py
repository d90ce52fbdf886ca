"""ClickHouse sink over its HTTP interface: a batch is one ``INSERT`` request, in
``TabSeparated`` when its rows share their fields (encoded a column at a time, the
format the server parses fastest of those every version has), else in ``JSONEachRow``
(a field missing from a row then takes the column's default). The request is encoded
once: the journal keeps it as it is sent.

HTTP needs no driver: aiohttp (which Scrapy already depends on) posts the batch when an
asyncio loop runs (Scrapy's default reactor, or reactorless mode); under another
reactor the request runs in a thread (urllib), so the reactor is never blocked.
ClickHouse answers a failed insert with a non-200 status and a plain-text explanation;
that text is the exception message, so the log says *why* (unknown table, bad value).

An insert of one batch is one block, which ClickHouse writes atomically, so a failed
batch is all-or-nothing. ClickHouse cannot commit a cursor with a block, so the
stream positions travel another way: each batch is journaled on local disk before
its insert (the base class's write-ahead journal) and carries a
random ``insert_deduplication_token`` kept with it; the cursors are kept
beside the spill files once the insert is acknowledged. A batch in flight when the
crawl is killed is sent again, whole and with the same token, at the next start, and
ClickHouse (22.2 and later) stores it once: a retry after a lost reply too. A table
created by this sink with a plain ``MergeTree`` gets
``non_replicated_deduplication_window`` so that the token is honoured (replicated
tables deduplicate by default). Older servers have no token: the one batch in flight
at a crash may then be stored twice, and the sink says so at open.

Values: nested values (dict, list) become JSON text for ``String`` columns, aware
datetimes are sent as Unix seconds (unambiguous whatever the server's time zone),
naive ones as ``YYYY-MM-DD hh:mm:ss`` (the server's time zone), booleans as 1/0
(``TabSeparated``) or JSON ``true``/``false`` (``JSONEachRow``: a ``UInt8`` column
stores 1/0 either way), other values as JSON.
Only fields that are columns of the table are sent (a warning names the others once),
so an extra item field does not fail every batch.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from scrapy.utils.asyncio import is_asyncio_available, run_in_thread

from .base import NO_CURSORS, BatchingPipeline, Cursors, JSONText, json_default
from .tabular import Unencodable, encode_columns, number_text

if TYPE_CHECKING:
    import aiohttp
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8123/"
DEFAULT_ENGINE = "MergeTree ORDER BY tuple()"
#: How many recent insert tokens a plain MergeTree table created here remembers.
DEDUP_WINDOW = 1000
#: The first version with ``insert_deduplication_token``.
TOKEN_VERSION = (22, 2)


class ClickHouseError(RuntimeError):
    """ClickHouse refused a request; the message is its own explanation."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"ClickHouse answered HTTP {status}: {text.strip()}")
        self.status = status
        self.text = text


def quote_identifier(name: str) -> str:
    """A ClickHouse identifier in backquotes, safe whatever characters it holds."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def clickhouse_value(value: Any) -> Any:
    """A JSON-ready value for ``JSONEachRow`` (module doc)."""
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, dict | list | tuple | set | frozenset):
        return json.dumps(value, default=json_default, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            return int(value.timestamp())
        return value.isoformat(sep=" ", timespec="seconds")
    return json_default(value)


#: Values TabSeparated takes as they are.
_TEXT = frozenset({str, JSONText})


def _column_text(value: Any) -> str | None:
    """A value in ``TabSeparated`` (``None``: NULL), as :func:`clickhouse_value`
    would store it."""
    text = number_text(value, "1", "0")
    if text is not None:
        return text
    converted = clickhouse_value(value)
    if converted is None or isinstance(converted, str):
        return converted
    if type(converted) is int:
        return str(converted)
    raise Unencodable(type(value).__name__)


def clickhouse_type(value: Any) -> str:
    """The column type created for a column whose first non-null value is *value*."""
    if isinstance(value, bool):
        base = "UInt8"
    elif isinstance(value, int):
        base = "Int64"
    elif isinstance(value, float):
        base = "Float64"
    elif isinstance(value, dt.datetime):
        base = "DateTime"
    elif isinstance(value, dt.date):
        base = "Date"
    else:  # text, nested values as JSON text, and columns null in the first batch
        base = "String"
    return f"Nullable({base})"


class ClickHousePipeline(BatchingPipeline):
    """Inserts items into a ClickHouse table over HTTP, a request per batch."""

    setting_prefix = "SSE_CLICKHOUSE"
    extra = None  # aiohttp comes with Scrapy
    write_ahead = True
    #: Each insert becomes a part the server merges in the background, on the cores the
    #: crawl needs; ClickHouse asks for inserts of thousands of rows (per-event crawls:
    #: 0.69x of the crawl alone with 500, 0.85x with 5,000).
    default_batch_size = 5000

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        settings = self.settings
        self.url: str = settings.get("SSE_CLICKHOUSE_URL") or DEFAULT_URL
        table: str = settings.get("SSE_CLICKHOUSE_TABLE") or ""
        if not table:
            raise ValueError("ClickHousePipeline needs SSE_CLICKHOUSE_TABLE")
        database: str | None = settings.get("SSE_CLICKHOUSE_DATABASE") or None
        self.table_sql = (
            f"{quote_identifier(database)}.{quote_identifier(table)}"
            if database
            else quote_identifier(table)
        )
        self._database = database
        self._table = table
        self.user: str | None = settings.get("SSE_CLICKHOUSE_USER") or None
        self.password: str = settings.get("SSE_CLICKHOUSE_PASSWORD") or ""
        self.create_table = settings.getbool("SSE_CLICKHOUSE_CREATE_TABLE", False)
        self.engine: str = settings.get("SSE_CLICKHOUSE_ENGINE") or DEFAULT_ENGINE
        self.timeout = settings.getfloat("SSE_CLICKHOUSE_TIMEOUT", 30.0)
        #: Extra ClickHouse settings sent with every insert (query parameters).
        self.query_settings: dict[str, Any] = settings.getdict("SSE_CLICKHOUSE_SETTINGS")
        self._session: aiohttp.ClientSession | None = None
        self._columns: frozenset[str] | None = None
        self._warned_unknown = False
        #: Whether the server takes ``insert_deduplication_token`` (set at open).
        self.tokens = False

    # -- BatchingPipeline ------------------------------------------------------------

    async def open(self) -> None:
        if is_asyncio_available():
            import aiohttp

            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), headers=self._auth_headers()
            )
        where = urllib.parse.urlsplit(self.url)
        logger.info(
            "Sink %s: posting to %s://%s:%s %s",  # no user info: it may hold a password
            self.name,
            where.scheme,
            where.hostname,
            where.port,
            "with aiohttp" if self._session is not None else "with urllib in a thread",
        )
        version = (await self._request("SELECT version()")).strip()
        self.tokens = server_version(version) >= TOKEN_VERSION
        if not self.tokens:
            logger.warning(
                "Sink %s: ClickHouse %s has no insert_deduplication_token (22.2 and later): "
                "a batch being inserted when the crawl is killed may be stored twice",
                self.name,
                version,
            )
        columns = await self._table_columns()
        if columns:
            self._columns = columns
            await self._check_deduplication()
        elif not self.create_table:
            raise ClickHouseError(
                404,
                f"table {self.table_sql} does not exist; create it or set "
                "SSE_CLICKHOUSE_CREATE_TABLE = True",
            )

    async def write_batch(self, rows: list[dict[str, Any]], cursors: Cursors = NO_CURSORS) -> None:
        if not rows:
            return
        if self._columns is None:
            await self._create(rows)
        payload = self.encode_batch(rows)
        if payload is not None:
            await self.write_encoded(payload)

    def encode_batch(self, rows: list[dict[str, Any]]) -> str | None:
        """The INSERT (its query on the first line, as JSON text) and its data: what
        the journal keeps and :meth:`write_encoded` sends, encoded once. ``None``
        before the table's columns are known (the first batch creates the table)."""
        columns = self._columns
        if columns is None or not rows:
            return None
        if not self._warned_unknown:
            for row in rows:
                if not row.keys() <= columns:
                    self._warn_unknown([field for field in row if field not in columns])
                    break
        names = [name for name in rows[0] if name in columns]
        body = self._tab_separated(rows, names)
        if body is not None:
            fields = ", ".join(map(quote_identifier, names))
            query = f"INSERT INTO {self.table_sql} ({fields}) FORMAT TabSeparated"
        else:
            query = f"INSERT INTO {self.table_sql} FORMAT JSONEachRow"
            body = "".join(
                json.dumps(
                    {k: clickhouse_value(v) for k, v in row.items() if k in columns},
                    ensure_ascii=False,
                    separators=(",", ":"),
                )
                + "\n"
                for row in rows
            )
        return json.dumps(query, ensure_ascii=False) + "\n" + body

    async def write_encoded(self, payload: str) -> None:
        first, _, body = payload.partition("\n")
        token = self.batch_token if self.tokens else None
        await self._request(json.loads(first), body.encode(), token)

    @staticmethod
    def _tab_separated(rows: list[dict[str, Any]], names: list[str]) -> str | None:
        """The batch as ``TabSeparated`` (the format ClickHouse parses fastest of
        those it has had since 1.1, and one we encode a column at a time, see
        :mod:`~scrapy_sse.pipelines.tabular`); ``None`` when its rows do not all have
        the same fields (a field missing from a row must get the column's default,
        which only ``JSONEachRow`` says) or a value has no text form here."""
        first = rows[0].keys()
        if not names or any(row.keys() != first for row in rows):
            return None
        columns = [[row[name] for row in rows] for name in names]
        try:
            return encode_columns(columns, [_TEXT] * len(names), [_column_text] * len(names))
        except Unencodable:
            return None

    async def _check_deduplication(self) -> None:
        """Warn when an existing table would ignore the tokens."""
        if not self.tokens:
            return
        engine = await self._request(
            "SELECT engine_full FROM system.tables WHERE database = "
            + (_quote_string(self._database) if self._database else "currentDatabase()")
            + f" AND name = {_quote_string(self._table)}"
        )
        if "Replicated" not in engine and "non_replicated_deduplication_window" not in engine:
            logger.warning(
                "Sink %s: table %s is not replicated and has no "
                "non_replicated_deduplication_window setting, so ClickHouse ignores insert "
                "deduplication tokens: a batch being inserted when the crawl is killed may "
                "be stored twice (ALTER TABLE ... MODIFY SETTING "
                "non_replicated_deduplication_window = %d)",
                self.name,
                self.table_sql,
                DEDUP_WINDOW,
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- table -----------------------------------------------------------------------

    async def _table_columns(self) -> frozenset[str]:
        """Column names of the table; empty when it does not exist."""
        exists = await self._request(f"EXISTS TABLE {self.table_sql}")
        if exists.strip() != "1":
            return frozenset()
        described = await self._request(f"DESCRIBE TABLE {self.table_sql} FORMAT JSONEachRow")
        return frozenset(json.loads(line)["name"] for line in described.splitlines() if line)

    async def _create(self, rows: list[dict[str, Any]]) -> None:
        """Create the table from the first batch (first non-null value of each field)."""
        fields = list(rows[0])
        types = {
            name: clickhouse_type(next((r[name] for r in rows if r.get(name) is not None), None))
            for name in fields
        }
        columns = ", ".join(f"{quote_identifier(name)} {types[name]}" for name in fields)
        engine = self.engine
        if self.tokens and engine.startswith("MergeTree") and "SETTINGS" not in engine.upper():
            engine += f" SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"
        await self._request(
            f"CREATE TABLE IF NOT EXISTS {self.table_sql} ({columns}) ENGINE = {engine}"
        )
        logger.info("Sink %s: created table %s", self.name, self.table_sql)
        self._columns = await self._table_columns()

    def _warn_unknown(self, fields: list[str]) -> None:
        self._warned_unknown = True
        logger.warning(
            "Sink %s: item fields %s have no column in %s and are not stored (warned once)",
            self.name,
            fields,
            self.table_sql,
        )

    # -- HTTP ------------------------------------------------------------------------

    async def _request(
        self, query: str, body: bytes | None = None, token: str | None = None
    ) -> str:
        """Run *query* (with *body* as its data, for an insert); the response text."""
        params = {"query": query, **self.query_settings} if body is not None else {}
        if token is not None:
            params["insert_deduplication_token"] = token
        separator = "&" if "?" in self.url else "?"
        url = self.url + (separator + urllib.parse.urlencode(params) if params else "")
        data = body if body is not None else query.encode()
        if self._session is not None:
            async with self._session.post(url, data=data) as response:
                text = await response.text(errors="replace")
                status = response.status
        else:
            status, text = await run_in_thread(self._post_blocking, url, data)
        if status != 200:
            raise ClickHouseError(status, text)
        return text

    def _auth_headers(self) -> dict[str, str]:
        """HTTP basic auth, which every ClickHouse version accepts."""
        if not self.user:
            return {}
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}

    def _post_blocking(self, url: str, data: bytes) -> tuple[int, str]:
        """The same POST with urllib, for a thread (no asyncio loop to use aiohttp)."""
        request = urllib.request.Request(url, data=data, headers=self._auth_headers())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return int(response.status), response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")


def server_version(text: str) -> tuple[int, int]:
    """``"24.8.4.13"`` -> ``(24, 8)`` (``(0, 0)`` when unreadable)."""
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


def _quote_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
