"""``BatchingPipeline``: the batching, retrying, spilling core of every sink.

A feed at market open can deliver thousands of events per second; one INSERT per item
falls behind, and a sink that is down for a minute must neither stop the stream nor
lose rows. This class holds the parts every sink needs so that a sink only writes one
batch (:meth:`BatchingPipeline.write_batch`):

* rows are buffered and a write starts at ``<prefix>_BATCH_SIZE`` rows or after
  ``<prefix>_FLUSH_INTERVAL`` seconds, whichever comes first, one flush at a time;
* flushes run in the background, so ``process_item`` returns at once; only when the
  buffer holds ``<prefix>_MAX_BUFFER`` rows (4 batches by default) does it wait for the
  running flush: memory stays bounded (at most twice that many rows: the buffer and
  the write in flight) and the stream slows down (TCP backpressure) instead of the
  process growing without limit;
* group commit: a flush takes what piled up while the previous one ran, up to
  ``<prefix>_MAX_BUFFER`` rows, so a store slower per write than the stream gets
  fewer, bigger transactions (fewer commits, round trips and fsyncs per row) instead
  of a backlog of batch-sized ones;
* a failed write is retried with exponential backoff; when the sink stays down the
  batch is spilled to a JSON-lines file under ``SSE_SPILL_DIR``, and spilled files are
  replayed into the sink (then removed) after the next successful write and at open;
* the final flush happens in ``close_spider``, which Scrapy also runs on the graceful
  stop after Ctrl-C, so nothing buffered is lost at shutdown.

An item may also be a batch: a ``list`` of items, or any object with an
``sse_batch_rows`` attribute (an iterable of items). All of its items are buffered by
one ``process_item`` call and the batch object is returned unchanged.
"""

from __future__ import annotations

import abc
import base64
import datetime as dt
import importlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from itemadapter import ItemAdapter, is_item
from scrapy.utils.asyncio import call_later, run_in_thread, sleep
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from twisted.internet.defer import Deferred

from ..durable import CURRENT, Cursor, Mark, Slot, Track
from ..events import SSEBatch, SSEEvent, SSEEventItem, parse_json_or_none

if TYPE_CHECKING:
    from types import ModuleType

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings
    from scrapy.utils.asyncio import CallLaterResult
    from twisted.python.failure import Failure
    from typing_extensions import Self

    from ..extension import SSEExtension

logger = logging.getLogger(__name__)

#: Longest wait between two attempts of one batch, whatever the backoff settings say.
MAX_RETRY_DELAY = 60.0

#: Stream key -> the cursor a batch commits for that stream (see :mod:`scrapy_sse.durable`).
Cursors = Mapping[str, Cursor]
NO_CURSORS: Cursors = MappingProxyType({})


class Fenced(Exception):
    """The store refused a batch: for the streams ``keys``, another worker of the
    cluster has claimed a newer fencing token (it took them over while this one was
    paused or cut off). Their rows are not this worker's to write any more."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = frozenset(keys)
        super().__init__(f"fenced off streams: {sorted(self.keys)}")


class MissingDependencyError(ImportError):
    """A sink's driver is not installed; the message names the pip extra to install.

    An ``ImportError`` rather than ``NotConfigured`` on purpose: Scrapy silently
    disables a component that raises ``NotConfigured``, and a storage pipeline that the
    user enabled must not turn into a crawl that stores nothing.
    """


def default_sink_name(prefix: str) -> str:
    """``"SSE_SQLITE"`` -> ``"sqlite"``: the name in stats, logs and the spill folder."""
    name = prefix.lower()
    return name[4:] if name.startswith("sse_") else name


def item_fields(item: Any) -> dict[str, Any]:
    """The fields of any item as a dict; an ``SSEEvent`` (batch mode) as an
    ``SSEEventItem`` would have them, so both modes store the same columns. (Sinks
    take :func:`sink_row`: the same columns, an event's ``json`` kept as the text it
    came as, where per-event items give theirs as a pipeline may have changed it.)"""
    if isinstance(item, SSEEvent):
        return _event_row(item, parse_json_or_none(item.data))
    if type(item) is SSEEventItem:
        # A plain field copy: ItemAdapter.asdict() walks into the parsed ``json``
        # value of every event, which was half of a sink's per-row cost.
        return {
            "url": item.url,
            "event": item.event,
            "id": item.id,
            "data": item.data,
            "json": item.json,
            "received_at": item.received_at,
        }
    return ItemAdapter(item).asdict()


class JSONText(str):
    """JSON text that is known to be valid (an event's ``data``): a sink stores it as
    JSON as it came (a ``jsonb`` value, JSON text) instead of decoding it into Python
    objects and encoding them again, which was most of a row's cost."""

    __slots__ = ()


class UncheckedJSON(str):
    """An event's ``data`` that starts as a JSON object or array does, not yet checked:
    for a sink that checks JSON where it is cheapest, in the store (SQLite's
    ``json_valid``, PostgreSQL's ``jsonb`` input), instead of parsing it in Python
    (about 2 µs an event, a third of what a sink may spend per row). Such a sink
    stores it as JSON when it is valid, else NULL; :func:`checked_json` does that in
    Python."""

    __slots__ = ()


def checked_json(value: Any) -> Any:
    """*value*, with an :class:`UncheckedJSON` checked: its :class:`JSONText`, or
    ``None`` when it is not JSON."""
    if type(value) is not UncheckedJSON:
        return value
    return JSONText(value) if parse_json_or_none(value) is not None else None


#: Value types a row keeps as they are (a sink knows how to store each).
_PLAIN = frozenset({str, int, float, bool, type(None), dict, list, JSONText, UncheckedJSON})


def sink_row(item: Any) -> dict[str, Any]:
    """The row a sink stores for *item*: :func:`item_fields`, without the work a sink
    does not need (a plain dict is copied, not walked; nested items in it are encoded
    by the sink as JSON, as :func:`json_default` does)."""
    if type(item) is dict:
        row = item.copy()
        for value in row.values():
            if type(value) not in _PLAIN:
                return ItemAdapter(item).asdict()
        return row
    if type(item) is SSEEvent:
        return _event_row(item, event_json(item.data))
    return item_fields(item)


def _event_row(event: SSEEvent, json_value: Any) -> dict[str, Any]:
    """An event's row (the fields of an ``SSEEventItem``), received now."""
    return {
        "url": getattr(event.response, "safe_url", None) or event.url,
        "event": event.event,
        "id": event.id,
        "data": event.data,
        "json": json_value,
        "received_at": time.time(),
    }


def event_json(data: str, *, check: bool = True) -> Any:
    """The ``json`` column of an event: an object or array as :class:`JSONText` (checked,
    not kept decoded; unchecked as :class:`UncheckedJSON` when *check* is false),
    another JSON value decoded, ``None`` when ``data`` is not JSON."""
    if data[:1] in ("{", "["):
        if not check:
            return UncheckedJSON(data)
        return JSONText(data) if parse_json_or_none(data) is not None else None
    return parse_json_or_none(data)


def batch_rows(batch: SSEBatch, *, check_json: bool = True) -> list[dict[str, Any]]:
    """The rows of a batch of events (batch delivery): :func:`sink_row` of each, with
    one clock reading and one URL lookup per batch (``check_json``: see
    :func:`event_json`)."""
    url = getattr(batch.response, "safe_url", None) or batch.url
    now = time.time()
    return [
        {
            "url": url if url is not None else event.url,
            "event": event.event,
            "id": event.id,
            "data": event.data,
            "json": event_json(event.data, check=check_json),
            "received_at": now,
        }
        for event in batch
    ]


def batch_members(item: Any) -> list[Any]:
    """The items carried by *item*: itself, or every member of a batch item."""
    if isinstance(item, list):
        return item
    members = getattr(item, "sse_batch_rows", None)
    if members is not None:
        return list(members)
    return [item]


def json_default(value: Any) -> Any:
    """``json.dumps`` default for nested values: items as objects, the rest as text."""
    if is_item(value):
        return ItemAdapter(value).asdict()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


# -- spill files: JSON lines that give back the Python types of common values ---------

_TAG = "__sse_type__"


def _encode(value: Any) -> Any:
    """``json.dumps`` default: tag the types JSON has not, so a replay restores them."""
    if is_item(value):  # (a nested item in a dict row: its fields, as json_default)
        return ItemAdapter(value).asdict()
    if isinstance(value, dt.datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {_TAG: "time", "v": value.isoformat()}
    if isinstance(value, Decimal):
        return {_TAG: "decimal", "v": str(value)}
    if isinstance(value, bytes | bytearray):
        return {_TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
    if isinstance(value, uuid.UUID):
        return {_TAG: "uuid", "v": str(value)}
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)  # last resort: keep the information, as text


_DECODERS: dict[str, Any] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "decimal": Decimal,
    "bytes": base64.b64decode,
    "uuid": uuid.UUID,
    "json": JSONText,
    "json?": UncheckedJSON,
}


def _decode(obj: dict[str, Any]) -> Any:
    kind = obj.get(_TAG)
    if isinstance(kind, str) and kind in _DECODERS and len(obj) == 2 and "v" in obj:
        return _DECODERS[kind](obj["v"])
    return obj


def dump_rows(rows: Iterable[dict[str, Any]]) -> str:
    """Rows as JSON lines (the spill format)."""
    return "".join(
        json.dumps(_tag_json_text(row), default=_encode, ensure_ascii=False, separators=(",", ":"))
        + "\n"
        for row in rows
    )


def _tag_json_text(row: dict[str, Any]) -> dict[str, Any]:
    """*row* with its :class:`JSONText` and :class:`UncheckedJSON` values tagged
    (``json`` writes a ``str`` subclass as a plain string, without asking
    ``default``)."""
    kinds = set(map(type, row.values()))
    if JSONText not in kinds and UncheckedJSON not in kinds:
        return row
    return {k: _JSON_TAGS[type(v)](v) if type(v) in _JSON_TAGS else v for k, v in row.items()}


_JSON_TAGS: dict[type, Callable[[Any], dict[str, str]]] = {
    JSONText: lambda v: {_TAG: "json", "v": str(v)},
    UncheckedJSON: lambda v: {_TAG: "json?", "v": str(v)},
}


def load_rows(text: str) -> list[dict[str, Any]]:
    """The inverse of :func:`dump_rows`."""
    return [json.loads(line, object_hook=_decode) for line in text.splitlines() if line]


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


class BatchingPipeline(abc.ABC):
    """Abstract item pipeline that writes items to a sink in batches (module doc).

    Subclasses set :attr:`setting_prefix` (and :attr:`extra`), read their own settings
    from ``self.settings`` after ``super().__init__(crawler)``, and implement
    :meth:`open`, :meth:`write_batch` and :meth:`close`. All three run on the
    reactor thread and must not block it: use an async driver or
    :func:`scrapy.utils.asyncio.run_in_thread`. The base class guarantees that they
    are never run concurrently with each other for one pipeline instance.
    """

    #: Prefix of the sink's settings, e.g. ``"SSE_SQLITE"``.
    setting_prefix: ClassVar[str]
    #: pip extra that installs the sink's driver (``pip install scrapy-sse[<extra>]``).
    extra: ClassVar[str | None] = None
    #: Whether :meth:`write_batch` commits the cursors in the rows' own transaction
    #: (and :meth:`load_cursors` reads them back). Otherwise the base class keeps
    #: them in ``cursors.json`` in the sink's spill folder, written right after each
    #: committed batch.
    holds_cursors: ClassVar[bool] = False
    #: Whether each batch is first written to the sink's ``journal`` folder and
    #: removed once committed, so that after a crash the very same batch (rows and
    #: cursors) is written again: for stores where writing the same batch twice
    #: stores it once (ClickHouse's insert deduplication token).
    write_ahead: ClassVar[bool] = False

    #: Rows per batch unless ``<prefix>_BATCH_SIZE`` or ``SSE_BATCH_SIZE`` say otherwise:
    #: a store whose every write costs a lot (an fsync, a part to merge) takes more.
    default_batch_size: ClassVar[int] = 500

    #: Whether the sink stores an :class:`UncheckedJSON` value as JSON when it is valid
    #: and as NULL otherwise, checking it in the store: batch delivery then leaves
    #: events' JSON unchecked for it.
    checks_json: ClassVar[bool] = False

    #: Whether the sink can fence (see :meth:`claim`): required of every sink that
    #: stores stream rows when the crawl is a worker of a cluster (``SSE_CLUSTER_URL``).
    fences_streams: ClassVar[bool] = False

    #: For :attr:`write_ahead` sinks, in :meth:`write_batch`: the batch's random token,
    #: the same for every attempt, the journal's replay and a spill file's replay.
    batch_token: str | None = None

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.settings: BaseSettings = self._effective_settings(crawler)
        prefix = self.setting_prefix
        #: Name in stats (``sse/sink/<name>/...``), logs and the spill folder.
        self.name: str = self.settings.get(f"{prefix}_SINK_NAME") or default_sink_name(prefix)
        self.batch_size = max(1, self._int("BATCH_SIZE", "SSE_BATCH_SIZE", self.default_batch_size))
        self.flush_interval = self._float("FLUSH_INTERVAL", "SSE_FLUSH_INTERVAL", 1.0)
        self.max_buffer = max(
            self.batch_size, self._int("MAX_BUFFER", "SSE_MAX_BUFFER", 4 * self.batch_size)
        )
        self.retry_times = max(0, self._int("RETRY_TIMES", "SSE_SINK_RETRY_TIMES", 3))
        self.retry_backoff = max(0.0, self._float("RETRY_BACKOFF", "SSE_SINK_RETRY_BACKOFF", 0.5))
        self.spill_dir = Path(self.settings.get("SSE_SPILL_DIR") or "sse_spill") / self.name

        self._buffer: list[dict[str, Any]] = []
        # Beside each buffered row, where it came from: (slot, seq, ordinal), or None
        # for a row that comes from no stream (see scrapy_sse.durable).
        self._marks: list[tuple[Slot, int, int] | None] = []
        # Per stream: the last delivery this sink took rows from, and the ordinal of
        # the last of them.
        self._ordinals: dict[Track, tuple[Slot, int]] = {}
        #: Per stream key, the cursor this sink's store held at open: replayed rows up
        #: to its mark are already stored, and are skipped.
        self.stored: dict[str, Cursor] = {}
        self._opened = False
        self._closing = False
        self._flushing = False
        self._due = False  # the flush interval elapsed while rows were buffered
        self._sink_down = False  # the last batch was spilled: skip retries until a write works
        self._spill_pending = False
        self._spill_seq = 0
        self._timer: CallLaterResult | None = None
        self._waiters: list[Deferred[None]] = []
        self._drain_d: Deferred[None] | None = None
        self._local_cursors: dict[str, Cursor] | None = None
        #: In a cluster (``SSE_CLUSTER_URL``): per stream key, the fencing token of this
        #: worker's lease, which :meth:`write_batch` writes with the stream's cursor;
        #: ``None`` outside a cluster (nothing is fenced).
        self.fences: dict[str, int] | None = {} if self.settings.get("SSE_CLUSTER_URL") else None
        self._replay_fences: dict[str, int] | None = None  # (a spill file's, while replayed)
        self._claims_waiting = 0  # (claims waiting for their turn between two writes)
        # (A token replaced or forgotten: rows of an earlier holding may be buffered.)
        self._stale_fences = False

    # -- for subclasses ------------------------------------------------------------

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    @classmethod
    def with_settings(cls, crawler: Crawler, overrides: dict[str, Any]) -> Self:
        """An instance that sees ``crawler.settings`` with *overrides* applied.

        Used to run a second instance of a sink next to the main one (dead letters into
        another table, for example) without touching the crawler's settings.
        """
        self = cls.__new__(cls)
        self.__dict__["_settings_overrides"] = dict(overrides)
        self.__init__(crawler)  # type: ignore[misc]
        return self

    @classmethod
    def dead_letter_settings(cls) -> dict[str, Any]:
        """Settings of this sink's dead-letter instance (``SSE_DEAD_LETTER_PIPELINE``).

        They must point it at another destination than the items; the default suits
        sinks whose destination is ``<prefix>_TABLE``. ``SSE_DEAD_LETTER_SETTINGS``
        (from the user) is applied on top.
        """
        prefix = cls.setting_prefix
        return {
            f"{prefix}_TABLE": "sse_dead_letters",
            f"{prefix}_SINK_NAME": f"{default_sink_name(prefix)}_dead_letters",
        }

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, and create the table if asked; called once from ``open_spider``."""

    @abc.abstractmethod
    async def write_batch(self, rows: list[dict[str, Any]], cursors: Cursors = NO_CURSORS) -> None:
        """Write *rows* (do not modify them: a failed batch is retried or spilled).

        A sink that can hold cursors writes *cursors* (per stream key) in the same
        transaction as the rows, keeping per stream the most advanced of what it held
        and what it is given (a replayed spill may carry older ones), and reads them
        back in :meth:`load_cursors`. Raise on failure; the base class retries, spills
        and replays.
        """

    def encode_batch(self, rows: list[dict[str, Any]]) -> str | None:
        """For a :attr:`write_ahead` sink: *rows* as the request that writes them,
        encoded once, for the journal and for :meth:`write_encoded` (``None``:
        journal the rows, write them with :meth:`write_batch`)."""
        return None

    async def write_encoded(self, payload: str) -> None:
        """Write a batch :meth:`encode_batch` encoded (a journal's or a spill file's
        too). Raise on failure, as :meth:`write_batch`."""
        raise NotImplementedError

    async def load_cursors(self) -> dict[str, Cursor]:
        """The cursors the store holds (called at open, after spilled batches were
        replayed). A sink that cannot hold cursors returns none: its streams resume
        from ``JOBDIR``, at-least-once across a crash."""
        return {}

    async def claim_fence(self, key: str, token: int) -> Cursor | None:
        """In the store, in one transaction: make ``token`` the fencing token of the
        stream ``key`` unless a newer one is there (then raise :class:`Fenced`), and
        read the stream's cursor (``None``: nothing stored yet). From then on a batch
        written with an older token is refused. Sinks with :attr:`fences_streams`
        implement it."""
        raise NotImplementedError(f"sink {self.name} cannot fence streams")

    def fence_for(self, key: str) -> int | None:
        """The token to write with the cursor of stream ``key`` (``None``: no fence):
        this worker's, or, for a spill file's rows, the one they were read under."""
        fences = self._replay_fences if self._replay_fences is not None else self.fences
        return None if fences is None else fences.get(key, 0)

    def forget_fence(self, key: str) -> None:
        """This worker no longer holds stream ``key``: its rows are not written."""
        if self.fences is not None and self.fences.pop(key, None) is not None:
            self._stale_fences = True

    @property
    def spill_pending(self) -> bool:
        """Whether rows wait in spill files for the store to take them."""
        return self._spill_pending

    async def claim(self, key: str, token: int) -> Cursor | None:
        """Claim stream ``key`` for this worker (:meth:`claim_fence`, between two
        writes), and forget what the store held for it before: the cursor read now is
        where its rows end."""
        assert self.fences is not None
        result: list[Cursor | None] = []

        async def run() -> None:
            result.append(await self.claim_fence(key, token))

        # (Between two writes, ahead of the next: a sink kept busy by a fast stream
        # would otherwise never let the claim in.)
        self._claims_waiting += 1
        try:
            await self._exclusive(run(), claim=True)
        finally:
            self._claims_waiting -= 1
        if self.fences.get(key, token) != token:
            self._stale_fences = True  # (rows of the earlier holding may be buffered)
        self.fences[key] = token
        cursor = result[0]
        if cursor is None:
            self.stored.pop(key, None)
        else:
            self.stored[key] = cursor
        return cursor

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection; called once, after the final flush (if open worked)."""

    def to_row(self, item: Any) -> dict[str, Any]:
        """The row written for *item*: its fields as a dict (any item type), see
        :func:`sink_row`."""
        return sink_row(item)

    def to_rows(self, item: Any) -> list[dict[str, Any]]:
        """The rows written for *item*: :meth:`to_row` of each of its members (a batch
        of events without a :meth:`to_row` of the sink's own, in one pass)."""
        if type(item) is SSEBatch and type(self).to_row is BatchingPipeline.to_row:
            return batch_rows(item, check_json=not self.checks_json)
        return [self.to_row(member) for member in batch_members(item)]

    @staticmethod
    def require(module: str, extra: str) -> ModuleType:
        """Import a sink's driver, or fail with the pip command that installs it."""
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            raise MissingDependencyError(
                f"{module} is not installed; it is needed by this scrapy-sse sink: "
                f"pip install scrapy-sse[{extra}]"
            ) from exc

    # -- Scrapy item pipeline --------------------------------------------------------

    async def open_spider(self) -> None:
        await self.open()
        self._opened = True
        state = _crawl_state(self.crawler)
        if state is not None:
            state.sinks.append(self)
        logger.info(
            "Sink %s: batches of %d rows, flushed at least every %.3g s",
            self.name,
            self.batch_size,
            self.flush_interval,
        )
        if self.write_ahead:
            await self._exclusive(self._replay_journal())
        self._spill_pending = await run_in_thread(self._has_spill_files)
        if self._spill_pending:
            await self._exclusive(self._replay_spills())
        await self._load_stored()
        self._arm_timer()
        self._kick()

    async def _load_stored(self) -> None:
        """Read where the store's data ends, per stream (with what spilled files not
        yet written hold): the crawl resumes each stream from there."""
        cursors = await self.load_cursors()
        if not self.holds_cursors:
            for key, cursor in (await run_in_thread(self._read_local_cursors)).items():
                cursors[key] = _most_advanced(cursors.get(key), cursor)
        for path in await run_in_thread(self._spill_files):
            try:
                spilled = (await run_in_thread(_read_spill, path)).cursors
            except (OSError, ValueError):
                continue  # (reported when it is replayed)
            for key, cursor in spilled.items():
                cursors[key] = _most_advanced(cursors.get(key), cursor)
        self.stored = cursors
        if cursors:
            logger.info("Sink %s holds the resume points of %d stream(s)", self.name, len(cursors))
            state = _crawl_state(self.crawler)
            if state is not None:
                state.ledger.load(cursors)

    async def process_item(self, item: Any) -> Any:
        slot = CURRENT.get()
        rows = self.to_rows(item)
        waited = False
        while len(self._buffer) >= self.max_buffer:
            self._kick()
            if not self._flushing:
                break  # not open yet, or closing: nothing to wait for
            if not waited:
                waited = True
                self._stat_inc("backpressure_waits")
            await self._wait()
        self._take(rows, slot, item)
        self._arm_timer()
        self._kick()
        return item

    @property
    def buffered(self) -> int:
        """Rows waiting for a flush (not counting the batch being written)."""
        return len(self._buffer)

    async def close_spider(self) -> None:
        self._closing = True
        self._cancel_timer()
        while self._flushing:
            await self._wait()
        if not self._opened:
            if self._buffer:  # open failed or never ran: keep the rows on disk
                rows, self._buffer = self._buffer, []
                marks, self._marks = self._marks, []
                cursors, settling = _cursors(marks)
                if await self._spill(rows, "the sink was never opened", cursors):
                    settle(settling)
            return
        await self._exclusive(self._drain(force=True))
        if self._spill_pending:
            await self._report_spill_left()
        await self.close()

    async def _report_spill_left(self) -> None:
        """At close, with spill files not yet written to the store: say so once, with
        where they are and what brings them in (the crawl's exit status does not)."""
        files = await run_in_thread(self._spill_files)
        if not files:
            return
        rows = 0
        for path in files:
            try:
                rows += (await run_in_thread(_read_spill, path)).row_count
            except (OSError, ValueError):
                continue  # (reported when it is replayed)
        self._stat_inc("spilled_rows_left", rows)
        logger.error(
            "Sink %s closes with %d rows in %d spill file(s) under %s that it could not "
            "write: the next crawl with this sink and SSE_SPILL_DIR writes them first%s",
            self.name,
            rows,
            len(files),
            self.spill_dir.resolve(),
            ""
            if self.fences is None
            else " (in a cluster, those of streams another worker took over since are "
            "left out: that worker re-reads them)",
        )

    def buffer_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Buffer rows that are already rows (no :meth:`to_row`), without waiting.

        For producers that cannot await, such as :meth:`DeadLetters.record
        <scrapy_sse.deadletter.DeadLetters.record>`; they give up backpressure.
        Rows made while a stream event is read hold that event, as items do.
        """
        self._take(list(rows), CURRENT.get(), None)
        self._arm_timer()
        self._kick()

    def _take(self, rows: list[dict[str, Any]], slot: Slot | None, item: Any) -> None:
        """Buffer *rows*, each with its position, and hold the delivery they came
        from until they are committed; skip those the store already holds."""
        if slot is None:
            self._buffer.extend(rows)
            self._marks.extend([None] * len(rows))
            return
        track = slot.track
        first = slot.first
        marks: list[tuple[Slot, int, int]]
        if type(item) is SSEBatch and len(rows) == slot.last - first + 1:
            # A batch of events: a row per event, each at its own position.
            marks = [(slot, first + i, 0) for i in range(len(rows))]
        elif slot.last != first:
            # Items a callback made from a batch of events: a replay may batch the
            # events otherwise, so no position of these rows could be matched against
            # what is stored (they are never skipped: at-least-once for that batch).
            marks = [(slot, first, _NO_POSITION)] * len(rows)
        else:
            last = self._ordinals.get(track)
            start = last[1] + 1 if last is not None and last[0] is slot else 0
            self._ordinals[track] = (slot, start + len(rows) - 1)
            marks = [(slot, first, start + i) for i in range(len(rows))]
        if self.stored:
            rows, marks = self._not_stored(track, rows, marks)
        slot.pending += len(rows)
        self._buffer.extend(rows)
        self._marks.extend(marks)

    def _not_stored(
        self, track: Track, rows: list[dict[str, Any]], marks: list[tuple[Slot, int, int]]
    ) -> tuple[list[dict[str, Any]], list[tuple[Slot, int, int]]]:
        """Drop the rows of a replay (after a crash) that the store holds already:
        only when the replay is the stream the stored positions describe (it began
        with the event the cursor expects)."""
        key = track.key
        cursor = self.stored.get(key)
        if cursor is None:
            return rows, marks
        if not track.aligned:
            del self.stored[key]
            if cursor.stored.seq > track.resume_seq:
                logger.warning(
                    "Sink %s: stream %s did not resume with the event after its stored "
                    "cursor (id %r expected): its rows are not matched against what is "
                    "stored, and up to %d event(s) may be stored twice",
                    self.name,
                    key,
                    cursor.next_id,
                    cursor.stored.seq - track.resume_seq,
                )
            return rows, marks
        keep = [
            i
            for i, mark in enumerate(marks)
            if mark[2] == _NO_POSITION or not cursor.holds(Mark(mark[1], mark[2]))
        ]
        if len(keep) < len(rows):
            self._stat_inc("rows_already_stored", len(rows) - len(keep))
            rows = [rows[i] for i in keep]
            marks = [marks[i] for i in keep]
        if keep:
            del self.stored[key]  # (the stream's rows come in order: the replay is over)
        return rows, marks

    # -- flushing ------------------------------------------------------------------

    def _kick(self) -> None:
        """Start a background flush if one is due and none is running."""
        if (
            self._flushing
            or self._claims_waiting
            or not self._opened
            or self._closing
            or not self._buffer
        ):
            return
        if self._due or len(self._buffer) >= self.batch_size:
            self._flushing = True
            self._drain_d = deferred_from_coro(self._run_drain())
            self._drain_d.addErrback(self._log_failure)

    async def _run_drain(self) -> None:
        try:
            await self._drain(force=False)
        finally:
            self._release()

    async def _exclusive(self, coro: Any, *, claim: bool = False) -> None:
        """Run *coro* (a flush, a replay, a cluster's claim) as the one flush of this
        pipeline; claims go first."""
        while self._flushing or (self._claims_waiting and not claim):
            await self._wait()
        self._flushing = True
        try:
            await coro
        finally:
            self._release()

    def _release(self) -> None:
        self._flushing = False
        self._notify()
        self._arm_timer()
        self._kick()

    async def _drain(self, *, force: bool) -> None:
        while self._buffer and (force or self._due or len(self._buffer) >= self.batch_size):
            if self._claims_waiting and not force:
                break  # (a claim takes its turn; the release starts the next drain)
            # Group commit: what piled up while the last write ran goes in one write
            # (up to the buffer's bound), so a store that is slower per write than the
            # stream writes fewer, bigger transactions instead of falling behind.
            size = self.max_buffer
            batch = self._buffer[:size]
            marks = self._marks[:size]
            del self._buffer[:size]
            del self._marks[:size]
            if not self._buffer:
                self._due = False
                self._cancel_timer()
            self._notify()  # room in the buffer for items waiting on backpressure
            await self._flush(batch, marks)

    async def _flush(
        self, rows: list[dict[str, Any]], marks: list[tuple[Slot, int, int] | None]
    ) -> None:
        started = time.monotonic()
        if self._stale_fences:
            rows, marks = self._drop_stale(rows, marks)
            if not rows:
                return
        cursors, settling = _cursors(marks)
        journal = None
        payload = None
        if self.write_ahead:
            self.batch_token = uuid.uuid4().hex
            try:
                payload = self.encode_batch(rows)
            except Exception:
                # (Written as rows instead: a failure there is retried, then spilled.)
                logger.exception("Sink %s: encoding a batch failed", self.name)
                payload = None
            if cursors:
                self._spill_seq += 1
                # (On the reactor: a write to the page cache, shorter than the hop to a
                # worker thread, which waits for the GIL behind a busy reactor.)
                journal = self._write_journal(
                    rows, cursors, self._spill_seq, self.batch_token, payload
                )
        try:
            error = await self._write_with_retries(rows, cursors, payload)
        except Fenced as fenced:
            if journal is not None:
                await run_in_thread(journal.unlink, missing_ok=True)
            rows, marks = self._drop_fenced(fenced.keys, rows, marks)
            if rows:
                await self._flush(rows, marks)  # (the other streams' rows)
            return
        if self.crawler.stats is not None:
            self.crawler.stats.max_value(
                f"sse/sink/{self.name}/flush_seconds_max", round(time.monotonic() - started, 6)
            )
        if error is not None:
            # A spill file is durable too (written whole, fsynced), and its cursors
            # count at the next start: the streams may resume past its rows.
            # (A write-ahead sink's encoded batch is spilled as it is: its replay is
            # then the very request that may have reached the store, same token.)
            fences = None
            if self.fences is not None:  # (the tokens the rows were read under)
                fences = {
                    m[0].track.key: m[0].track.fence or self.fences.get(m[0].track.key, 0)
                    for m in marks
                    if m is not None
                }
            runs = _stream_runs(marks)
            if await self._spill(rows, error, cursors, payload, streams=runs, fences=fences):
                if journal is not None:
                    await run_in_thread(journal.unlink, missing_ok=True)
                settle(settling)
            return
        await self.committed(cursors, settling)
        if journal is not None:
            journal.unlink(missing_ok=True)  # (same turn as the cursors, see committed)
        self._stat_inc("rows_written", len(rows))
        self._stat_inc("batches")
        if self._spill_pending:
            await self._replay_spills()

    async def _write_with_retries(
        self, rows: list[dict[str, Any]], cursors: Cursors, payload: str | None = None
    ) -> BaseException | None:
        """Write *rows* (as *payload* when the sink encoded them); the last error if
        every attempt failed, else ``None``."""
        attempts = 1 if self._sink_down else self.retry_times + 1
        error: BaseException | None = None
        for attempt in range(attempts):
            try:
                if payload is not None:
                    await self.write_encoded(payload)
                else:
                    await self.write_batch(rows, cursors)
            except Fenced:
                raise  # (a definite refusal: neither retried nor spilled)
            except Exception as exc:
                error = exc
                if attempt + 1 == attempts:
                    break
                delay = min(self.retry_backoff * 2**attempt, MAX_RETRY_DELAY)
                self._stat_inc("retries")
                logger.warning(
                    "Sink %s: writing %d rows failed (%s: %s); retry %d of %d in %.2f s",
                    self.name,
                    len(rows),
                    type(exc).__name__,
                    exc,
                    attempt + 1,
                    attempts - 1,
                    delay,
                )
                await sleep(delay)
            else:
                if self._sink_down:
                    logger.info("Sink %s accepts writes again", self.name)
                self._sink_down = False
                return None
        self._sink_down = True
        return error

    def _drop_fenced(
        self,
        keys: frozenset[str],
        rows: list[dict[str, Any]],
        marks: list[tuple[Slot, int, int] | None],
    ) -> tuple[list[dict[str, Any]], list[tuple[Slot, int, int] | None]]:
        """Leave out the rows of streams another worker took over (the store refused
        them): that worker resumed each stream from the cursor it found, before these
        rows, and writes them itself."""
        for key in keys:
            self.forget_fence(key)
        state = _crawl_state(self.crawler)
        if state is not None and state.cluster is not None:
            state.cluster.fenced(keys)
        return self._leave_out(rows, marks, lambda track: track.key in keys)

    def _drop_stale(
        self, rows: list[dict[str, Any]], marks: list[tuple[Slot, int, int] | None]
    ) -> tuple[list[dict[str, Any]], list[tuple[Slot, int, int] | None]]:
        """Leave out the rows read under a lease this worker no longer has on their
        stream (lost, or handed over and taken back since: the holder in between
        resumed before them and stored them)."""
        fences = self.fences
        assert fences is not None
        stale = {
            m[0].track
            for m in marks
            if m is not None
            and m[0].track.fence is not None
            and m[0].track.fence != fences.get(m[0].track.key)
        }
        if not stale:
            return rows, marks
        return self._leave_out(rows, marks, stale.__contains__)

    def _leave_out(
        self,
        rows: list[dict[str, Any]],
        marks: list[tuple[Slot, int, int] | None],
        gone: Callable[[Track], bool],
    ) -> tuple[list[dict[str, Any]], list[tuple[Slot, int, int] | None]]:
        """*rows* without those of the tracks ``gone`` says; their deliveries settle
        (this worker's resume points for those streams no longer matter)."""
        keep = [i for i, m in enumerate(marks) if m is None or not gone(m[0].track)]
        kept = set(keep)
        dropped = [mark for i, mark in enumerate(marks) if i not in kept]
        settle(_cursors(dropped)[1])
        keys = sorted({m[0].track.key for m in dropped if m is not None})
        self._stat_inc("fenced_rows", len(dropped))
        logger.info(
            "Sink %s: %d rows of stream(s) %s not written: another worker of the cluster "
            "holds them now (a newer fencing token) and resumed them from its stored cursor",
            self.name,
            len(dropped),
            ", ".join(keys),
        )
        return [rows[i] for i in keep], [marks[i] for i in keep]

    async def committed(self, cursors: Cursors, settling: dict[Slot, int]) -> None:
        """A batch is committed: keep its cursors (if the store does not) and let its
        streams' resume points pass its rows. A sink whose written rows become
        durable only later (Parquet: when its file is published) settles then."""
        if cursors and not self.holds_cursors:
            # On the reactor thread, in the turn the store's answer arrived: a few
            # hundred bytes, and no thread hop for a crash to fall into between the
            # store's commit and this record of it.
            self._save_local_cursors(cursors)
        settle(settling)

    async def replayed(self, cursors: Cursors) -> None:
        """A spill file's rows are written: keep its cursors (if the store does not),
        before the file is removed."""
        if cursors and not self.holds_cursors:
            await run_in_thread(self._save_local_cursors, cursors)

    # -- cursors kept beside the spill files ------------------------------------------

    @property
    def _local_cursors_path(self) -> Path:
        return self.spill_dir / "cursors.json"

    def _read_local_cursors(self) -> dict[str, Cursor]:
        path = self._local_cursors_path
        if not path.exists():
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
        return {key: Cursor.from_list(values) for key, values in data.get("cursors", {}).items()}

    def _save_local_cursors(self, cursors: Cursors) -> None:
        """Merge *cursors* into ``cursors.json`` (whole file replaced: a crash leaves
        the old or the new one). Not fsynced: it survives the crawl's crash, not the
        machine's; the journal and the store's own deduplication cover that gap."""
        known = self._local_cursors
        if known is None:
            known = self._local_cursors = self._read_local_cursors()
        merge_cursors(known, cursors)
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(
            {"cursors": {k: c.as_list() for k, c in known.items()}},
            ensure_ascii=False,
        )
        path = self._local_cursors_path
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    # -- write-ahead journal ----------------------------------------------------------

    @property
    def _journal_dir(self) -> Path:
        return self.spill_dir / "journal"

    def _write_journal(
        self,
        rows: list[dict[str, Any]],
        cursors: Cursors,
        seq: int,
        token: str | None,
        payload: str | None = None,
    ) -> Path:
        self._journal_dir.mkdir(parents=True, exist_ok=True)
        path = self._journal_dir / f"{time.time_ns():020d}-{os.getpid()}-{seq:06d}.jsonl"
        # (Not fsynced: it covers a crash of the crawl, as cursors.json does.)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(_spill_text(rows, cursors, token, payload), encoding="utf-8")
        os.replace(tmp, path)
        return path

    async def _replay_journal(self) -> None:
        """Write again the batches a crash left in the journal (the store keeps one
        copy of each), oldest first; one that fails becomes a spill file."""
        journal = self._journal_dir
        if not journal.is_dir():
            return
        for path in sorted(journal.glob("*.jsonl")):
            spilled = await run_in_thread(_read_spill, path)
            rows, cursors = spilled.rows, spilled.cursors
            self.batch_token = spilled.token or uuid.uuid4().hex
            try:
                if spilled.payload is not None:
                    await self.write_encoded(spilled.payload)
                else:
                    await self.write_batch(rows, cursors)
            except Exception as exc:
                self.spill_dir.mkdir(parents=True, exist_ok=True)
                await run_in_thread(os.replace, path, self.spill_dir / path.name)
                self._spill_pending = True
                logger.warning(
                    "Sink %s: writing again the batch a crash left in %s failed (%s: %s); "
                    "it is kept as a spill file",
                    self.name,
                    path,
                    type(exc).__name__,
                    exc,
                )
                continue
            if cursors:
                await run_in_thread(self._save_local_cursors, cursors)
            await run_in_thread(path.unlink)
            self._stat_inc("journal_batches_rewritten")
            logger.info(
                "Sink %s: wrote again the batch of %d rows a crash left in %s",
                self.name,
                spilled.row_count,
                path,
            )

    # -- timer ---------------------------------------------------------------------

    def _arm_timer(self) -> None:
        if (
            self._timer is None
            and self._buffer
            and self.flush_interval > 0
            and self._opened
            and not self._closing
        ):
            self._timer = call_later(self.flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._buffer:
            self._due = True
            self._kick()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- waiting for the running flush -----------------------------------------------

    async def _wait(self) -> None:
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        await maybe_deferred_to_future(waiter)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- spill and replay ------------------------------------------------------------

    async def _spill(
        self,
        rows: list[dict[str, Any]],
        error: BaseException | str,
        cursors: Cursors,
        payload: str | None = None,
        *,
        streams: list[list[Any]] | None = None,
        fences: dict[str, int] | None = None,
    ) -> bool:
        """Keep *rows* in a spill file; ``False`` when even that failed (they are lost
        to this crawl, and their events keep holding their streams' resume points, so
        a restart reads them again)."""
        reason = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
        self._spill_seq += 1
        try:
            path = await run_in_thread(
                self._write_spill_file,
                rows,
                self._spill_seq,
                cursors,
                self.batch_token,
                payload,
                streams=streams,
                fences=fences,
            )
        except Exception:
            self._stat_inc("lost_rows", len(rows))
            logger.critical(
                "Sink %s is unavailable (%s) and %d rows could not be spilled to %s: they are "
                "not stored, and their streams do not resume past them (a restart reads "
                "their events again)",
                self.name,
                reason,
                len(rows),
                self.spill_dir,
                exc_info=True,
            )
            return False
        self._spill_pending = True
        self._stat_inc("spilled_rows", len(rows))
        self._stat_inc("spilled_batches")
        logger.error(
            "Sink %s is unavailable (%s): spilled %d rows to %s; they are written to the "
            "sink when it accepts writes again",
            self.name,
            reason,
            len(rows),
            path.resolve(),
        )
        return True

    def _write_spill_file(
        self,
        rows: list[dict[str, Any]],
        seq: int,
        cursors: Cursors,
        token: str | None,
        payload: str | None = None,
        *,
        streams: list[list[Any]] | None = None,
        fences: dict[str, int] | None = None,
    ) -> Path:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        # Names sort in spill order, so replays keep the order of the stream.
        path = self.spill_dir / f"{time.time_ns():020d}-{os.getpid()}-{seq:06d}.jsonl"
        _atomic_write(
            path, _spill_text(rows, cursors, token, payload, streams=streams, fences=fences)
        )
        return path

    def _spill_files(self) -> list[Path]:
        if not self.spill_dir.is_dir():
            return []
        return sorted(self.spill_dir.glob("*.jsonl"))

    def _has_spill_files(self) -> bool:
        return bool(self._spill_files())

    async def _replay_spills(self) -> None:
        """Write spilled files into the sink, oldest first, removing each when written.

        Stops at the first failure (the sink went down again); what was not written
        stays on disk for the next successful flush.
        """
        for path in await run_in_thread(self._spill_files):
            try:
                spilled = await run_in_thread(_read_spill, path)
            except (OSError, ValueError) as exc:
                logger.error(
                    "Sink %s: cannot read spill file %s (%s); left in place", self.name, path, exc
                )
                continue
            rows, cursors, token = spilled.rows, spilled.cursors, spilled.token
            done = 0
            if self.fences is not None:
                # (Written with the tokens they were read under; none recorded: a
                # token older than any holder's, so only an unclaimed stream takes them.)
                self._replay_fences = spilled.fences or {}
            try:
                if spilled.payload is not None:  # a journaled batch: one request, as it was
                    self.batch_token = token or uuid.uuid4().hex
                    await self.write_encoded(spilled.payload)
                    done = spilled.row_count
                # (Chunks of MAX_BUFFER rows: a batch this crawl spilled is replayed
                # whole, as the write that failed, with its token. In a cluster, any
                # file whole: each write must carry the cursors its fence is checked by.)
                size = self.max_buffer if self.fences is None else max(1, len(rows))
                for number, chunk in enumerate(_chunks(rows, size)):
                    last = done + len(chunk) >= len(rows)
                    # (A write-ahead sink's spilled batch may have been stored by an
                    # attempt that lost its reply: the same token stores it once.)
                    self.batch_token = (
                        (token if number == 0 else f"{token}-{number}")
                        if token
                        else uuid.uuid4().hex
                    )
                    # (The file's cursors go with its last rows.)
                    await self.write_batch(chunk, cursors if last else NO_CURSORS)
                    done += len(chunk)
            except Fenced as fenced:
                self._replay_fences = None
                await self._replay_fenced(path, spilled, fenced.keys)
                return await self._replay_spills()  # (the file again, without them)
            except Exception as exc:
                if done:  # never write the same rows twice
                    text = _spill_text(rows[done:], cursors, None, fences=spilled.fences)
                    await run_in_thread(_atomic_write, path, text)
                    self._stat_inc("replayed_rows", done)
                logger.warning(
                    "Sink %s: replaying %s failed after %d of %d rows (%s: %s); the rest is "
                    "kept for a later flush",
                    self.name,
                    path,
                    done,
                    spilled.row_count,
                    type(exc).__name__,
                    exc,
                )
                return
            finally:
                self._replay_fences = None
            await self.replayed(cursors)
            await run_in_thread(path.unlink, missing_ok=True)
            self._stat_inc("replayed_rows", spilled.row_count)
            logger.info(
                "Sink %s: replayed %d spilled rows from %s", self.name, spilled.row_count, path
            )
        self._spill_pending = False

    async def _replay_fenced(self, path: Path, spilled: _Spilled, keys: frozenset[str]) -> None:
        """A spill file holds rows of streams another worker took over since (it
        resumed them from its stored cursor, before these rows): rewrite the file
        without them, or set it aside when its rows do not say their streams."""
        # (This worker may hold those streams again, under a newer token: the rows
        # read under the older one were stored by the holder in between.)
        cursors = {k: c for k, c in spilled.cursors.items() if k not in keys}
        fences = {k: t for k, t in (spilled.fences or {}).items() if k not in keys}
        if spilled.payload is not None or spilled.streams is None:
            aside = self.spill_dir / "fenced" / path.name
            await run_in_thread(aside.parent.mkdir, parents=True, exist_ok=True)
            await run_in_thread(os.replace, path, aside)
            self._stat_inc("fenced_rows", spilled.row_count)
            logger.error(
                "Sink %s: spill file %s holds rows of stream(s) %s, which another worker "
                "holds now, and does not say which rows: set aside as %s, not written",
                self.name,
                path,
                ", ".join(sorted(keys)),
                aside,
            )
            return
        rows, runs, dropped = _without_streams(keys, spilled.rows, spilled.streams)
        self._stat_inc("fenced_rows", dropped)
        logger.info(
            "Sink %s: %d spilled rows of stream(s) %s not written: another worker holds "
            "them now and resumed them from its stored cursor",
            self.name,
            dropped,
            ", ".join(sorted(keys)),
        )
        if rows:
            text = _spill_text(
                rows, cursors, None, streams=runs, fences=fences
            )  # (a new batch token)
            await run_in_thread(_atomic_write, path, text)
        else:
            await run_in_thread(path.unlink, missing_ok=True)

    # -- helpers -------------------------------------------------------------------

    def _effective_settings(self, crawler: Crawler) -> BaseSettings:
        overrides: dict[str, Any] | None = self.__dict__.get("_settings_overrides")
        if not overrides:
            return crawler.settings
        settings = crawler.settings.copy()
        settings.frozen = False
        settings.setdict(overrides, priority="cmdline")
        settings.freeze()
        return settings

    def _int(self, name: str, fallback: str, default: int) -> int:
        key = f"{self.setting_prefix}_{name}"
        if self.settings.get(key) is not None:
            return self.settings.getint(key)
        return self.settings.getint(fallback, default)

    def _float(self, name: str, fallback: str, default: float) -> float:
        key = f"{self.setting_prefix}_{name}"
        if self.settings.get(key) is not None:
            return self.settings.getfloat(key)
        return self.settings.getfloat(fallback, default)

    def _stat_inc(self, key: str, count: int = 1) -> None:
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value(f"sse/sink/{self.name}/{key}", count)

    def _log_failure(self, failure: Failure) -> None:
        logger.error(
            "Sink %s: unexpected error while flushing",
            self.name,
            exc_info=failure.value,
        )


def _atomic_write(path: Path, text: str) -> None:
    """Write a whole file or nothing: a crash never leaves half a spill file to replay."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


#: The ordinal of a row whose position a replay could not match (see ``_take``).
_NO_POSITION = -1
#: A mark's position: (seq, ordinal).
_POSITION = itemgetter(1, 2)

#: The first line of a spill file: its cursors (files without one hold only rows).
_SPILL_HEADER = "__sse_spill__"


def _spill_text(
    rows: list[dict[str, Any]],
    cursors: Cursors,
    token: str | None,
    payload: str | None = None,
    *,
    streams: list[list[Any]] | None = None,
    fences: dict[str, int] | None = None,
) -> str:
    """A spill file: a header (cursors, batch token; which stream each run of rows
    came from, ``[[key or None, count], ...]``, when some did; in a cluster, the
    fencing token each stream's rows were read under) and the rows."""
    if payload is not None:  # (the batch as the sink encoded it, and its row count)
        header: dict[str, Any] = {
            _SPILL_HEADER: 2,
            "token": token,
            "cursors": {key: c.as_list() for key, c in cursors.items()},
            "payload": len(rows),
        }
        return json.dumps(header, ensure_ascii=False) + "\n" + payload
    if not cursors and token is None and not streams and not fences:
        return dump_rows(rows)
    header = {
        _SPILL_HEADER: 2,
        "token": token,
        "cursors": {key: c.as_list() for key, c in cursors.items()},
    }
    if streams:
        header["streams"] = streams
    if fences:
        header["fences"] = fences
    return json.dumps(header, ensure_ascii=False) + "\n" + dump_rows(rows)


def _stream_runs(marks: list[tuple[Slot, int, int] | None]) -> list[list[Any]] | None:
    """Which stream each row of a batch came from, as runs ``[key or None, count]``
    (``None`` when no row came from a stream)."""
    runs: list[list[Any]] = []
    for key, group in groupby(m[0].track.key if m is not None else None for m in marks):
        runs.append([key, sum(1 for _ in group)])
    return None if all(key is None for key, _ in runs) else runs


def _without_streams(
    keys: frozenset[str], rows: list[dict[str, Any]], runs: list[list[Any]]
) -> tuple[list[dict[str, Any]], list[list[Any]], int]:
    """*rows* (described by *runs*) without those of the streams *keys*; the runs
    left, and how many rows were left out."""
    kept: list[dict[str, Any]] = []
    kept_runs: list[list[Any]] = []
    at = 0
    for key, count in runs:
        if key not in keys:
            kept.extend(rows[at : at + count])
            kept_runs.append([key, count])
        at += count
    kept.extend(rows[at:])  # (rows the runs do not describe)
    return kept, kept_runs, len(rows) - len(kept)


class _Spilled(NamedTuple):
    """A spill or journal file: its rows (or the batch as the sink encoded it, and
    how many rows that is), cursors and batch token."""

    rows: list[dict[str, Any]]
    cursors: dict[str, Cursor]
    token: str | None
    payload: str | None = None
    payload_rows: int = 0
    streams: list[list[Any]] | None = None
    fences: dict[str, int] | None = None

    @property
    def row_count(self) -> int:
        return self.payload_rows if self.payload is not None else len(self.rows)


def _read_spill(path: Path) -> _Spilled:
    """A spill file's rows, cursors and batch token."""
    text = path.read_text(encoding="utf-8")
    first, _, rest = text.partition("\n")
    if first.startswith("{") and _SPILL_HEADER in first:
        header = json.loads(first)
        if _SPILL_HEADER in header:
            cursors = {k: Cursor.from_list(v) for k, v in header["cursors"].items()}
            token = header.get("token")
            if "payload" in header:
                return _Spilled([], cursors, token, rest, int(header["payload"]))
            return _Spilled(
                load_rows(rest),
                cursors,
                token,
                streams=header.get("streams"),
                fences=header.get("fences"),
            )
    return _Spilled(load_rows(text), {}, None)


def _cursors(
    marks: list[tuple[Slot, int, int] | None],
) -> tuple[dict[str, Cursor], dict[Slot, int]]:
    """For a batch about to be written: the cursor of each of its streams (where the
    stream may resume once the batch is committed, and its last row), and how many
    rows of each delivery it holds."""
    settling: dict[Slot, int] = {}
    last: dict[Track, Mark] = {}
    # A run of rows from one delivery at a time (a batch of events is one run), its
    # furthest row found in C (rows without a position sort first within a delivery).
    for slot, run in groupby(filter(None, marks), key=itemgetter(0)):
        entries = list(run)
        settling[slot] = settling.get(slot, 0) + len(entries)
        _, seq, item = max(entries, key=_POSITION)
        mark = Mark(0, _NO_POSITION) if item == _NO_POSITION else Mark(seq, item)
        track = slot.track
        known = last.get(track)
        if known is None or mark > known:
            last[track] = mark
    cursors = {}
    for track, mark in last.items():
        event_id, seq, next_id = track.resume_after(settling)
        cursors[track.key] = Cursor(event_id, seq, mark, next_id)
    return cursors, settling


def settle(settling: dict[Slot, int]) -> None:
    """Settle the holds a committed batch had on its deliveries."""
    for slot, count in settling.items():
        slot.track.settle(slot, count)


def merge_cursors(into: dict[str, Cursor], cursors: Cursors) -> None:
    """Merge *cursors* into *into*, keeping the most advanced part of each."""
    for key, cursor in cursors.items():
        into[key] = _most_advanced(into.get(key), cursor)


def _most_advanced(known: Cursor | None, other: Cursor) -> Cursor:
    """Two cursors of one stream in one store: the most advanced of each part."""
    if known is None:
        return other
    resume = known if known.seq >= other.seq else other
    return resume._replace(stored=max(known.stored, other.stored))


def _crawl_state(crawler: Crawler) -> SSEExtension | None:
    """The crawl's scrapy-sse state; ``None`` when the sink runs without the add-on."""
    from ..extension import SSEExtension

    try:
        return crawler.get_extension(SSEExtension)
    except RuntimeError:  # no extension manager: a pipeline built outside a crawl
        return None


__all__ = [
    "BatchingPipeline",
    "JSONText",
    "MissingDependencyError",
    "UncheckedJSON",
    "batch_members",
    "batch_rows",
    "checked_json",
    "default_sink_name",
    "dump_rows",
    "item_fields",
    "json_default",
    "load_rows",
    "sink_row",
]
