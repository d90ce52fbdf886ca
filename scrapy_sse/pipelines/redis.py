"""Redis Streams sink: every item becomes one ``XADD`` entry.

A batch is written by one server-side script call (``EVALSHA``, one round trip like a
pipeline) rather than a pipeline of ``XADD`` commands, because a script runs
atomically: a connection killed mid-batch leaves either the whole batch or none of it,
whereas a non-transactional pipeline can stop half-way and its retry would add the
first half twice. The script also sets a marker key for the batch (a random token,
kept ``SSE_REDIS_DEDUP_TTL`` seconds) and does nothing when the marker exists, so a
retry of a batch whose reply was lost (the server wrote it, the client never heard)
is not written twice either: the token of a failed batch is remembered, by a
fingerprint of its rows, and reused when the same rows are retried or replayed.

Fields: ``str``, ``bytes``, ``int`` and ``float`` values are stored as they are (Redis
keeps strings; numbers become their decimal text), ``bool`` as ``true``/``false``,
dicts and lists as JSON text, dates and times as ISO 8601, anything else as ``str()``;
``None`` fields are omitted (a stream entry has no null). ``SSE_REDIS_STREAM`` is a
key, or a template filled from each item's fields (``"prices:{symbol}"``; write
``{{``/``}}`` for literal braces); an item that lacks a field the template names is
dropped with a clear message rather than failing a whole batch.

Each stream's cursor (where it resumes, and the last entry stored) is kept in the hash
``SSE_REDIS_CURSOR_KEY`` (default ``scrapy-sse:cursors:`` + ``SSE_REDIS_STREAM``; a
field per stream key) and set by the same script call as the batch's ``XADD``s: the
entries and the cursor are written together or not at all, and a crawl started
anywhere against this Redis resumes each stream where its entries end. (Redis itself
keeps them across its own restart only with persistence on: AOF or RDB.)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import DropItem
from scrapy.utils.asyncio import is_asyncio_available

from ..durable import Cursor
from .base import NO_CURSORS, BatchingPipeline, Cursors, JSONText, json_default
from .postgres import InDoubtBatches, fingerprint

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

DEFAULT_URL = "redis://127.0.0.1:6379/0"
#: Seconds a connection attempt or a reply may take (URL options override them).
SOCKET_TIMEOUT = 10.0

#: KEYS[1]: the batch marker; KEYS[2]: the cursor hash; KEYS[3..]: the streams.
#: ARGV[1]: the marker's TTL; ARGV[2]: MAXLEN ("0": no trimming); ARGV[3]: the number
#: of cursors, then per cursor its stream key and the cursor as a JSON list (event id,
#: seq, stored seq, stored item, next id); then the entries, in one of two forms:
#: ``json`` and one JSON text ``[[field names], [[stream index, value, ...], ...]]``
#: (text values; ``null``: the field is left out), or ``args`` and per entry the index
#: of its stream in KEYS, its field count and its fields (bytes values need this form).
#: Returns the number of entries added, or -1 when the marker exists (the batch was
#: written by an earlier attempt). Cursors are merged with the stored ones: the most
#: advanced of each of its parts.
XADD_BATCH = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
for k = 3, #KEYS do
  local kind = redis.call('TYPE', KEYS[k])['ok']
  if kind ~= 'none' and kind ~= 'stream' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. kind .. ', not a stream')
  end
end
local maxlen = ARGV[2]
local cursors = tonumber(ARGV[3])
local i = 4 + 2 * cursors
local added = 0
local function xadd(stream)
  local args = {'XADD', stream}
  if maxlen ~= '0' then
    args[#args + 1] = 'MAXLEN'
    args[#args + 1] = '~'
    args[#args + 1] = maxlen
  end
  args[#args + 1] = '*'
  return args
end
if ARGV[i] == 'json' then
  local batch = cjson.decode(ARGV[i + 1])
  local names = batch[1]
  for _, entry in ipairs(batch[2]) do
    local args = xadd(KEYS[entry[1]])
    local base = #args
    for j = 1, #names do
      local value = entry[j + 1]
      if value ~= cjson.null then
        args[#args + 1] = names[j]
        args[#args + 1] = value
      end
    end
    if #args > base then
      redis.call(unpack(args))
      added = added + 1
    end
  end
else
  i = i + 1
  while i <= #ARGV do
    local args = xadd(KEYS[tonumber(ARGV[i])])
    local n = tonumber(ARGV[i + 1])
    for j = i + 2, i + 1 + 2 * n do args[#args + 1] = ARGV[j] end
    redis.call(unpack(args))
    i = i + 2 + 2 * n
    added = added + 1
  end
end
-- The cursors, after the entries: an error above leaves no cursor that passed them.
for c = 0, cursors - 1 do
  local field = ARGV[4 + 2 * c]
  local new = cjson.decode(ARGV[5 + 2 * c])
  local raw = redis.call('HGET', KEYS[2], field)
  if raw then
    local old = cjson.decode(raw)
    if old[2] > new[2] then new[1], new[2], new[5] = old[1], old[2], old[5] end
    if old[3] > new[3] or (old[3] == new[3] and old[4] > new[4]) then
      new[3], new[4] = old[3], old[4]
    end
  end
  redis.call('HSET', KEYS[2], field, cjson.encode(new))
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return added
"""

#: Types whose values go into the JSON form of a batch as they are.
_TEXT = frozenset({str, JSONText})


class _NeedsArgs(TypeError):
    """A value the JSON form cannot carry (bytes): the batch goes as arguments."""


def _entry_text(value: Any) -> str | None:
    """A field value as the text the JSON form carries (``None``: left out)."""
    encoded = encode_field(value)
    if encoded is None or isinstance(encoded, str):
        return encoded
    if isinstance(encoded, bytes):
        raise _NeedsArgs
    return repr(encoded) if isinstance(encoded, float) else str(encoded)


def encode_field(value: Any) -> str | bytes | int | float | None:
    """The stream field value for an item field value (module doc); ``None``: omit."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | bytes | int | float):
        return value
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, dict | list | tuple | set | frozenset):
        return json.dumps(value, default=json_default, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _text(value: bytes | str) -> str:
    """A reply as text (``decode_responses`` may be on in the URL)."""
    return value if isinstance(value, str) else value.decode()


class RedisStreamPipeline(BatchingPipeline):
    """Appends items to Redis streams, a batch per atomic script call (module doc).

    Needs the asyncio reactor (Scrapy's default) for ``redis.asyncio``.
    """

    setting_prefix = "SSE_REDIS"
    holds_cursors = True
    extra = "redis"

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self.url: str = self.settings.get("SSE_REDIS_URL") or DEFAULT_URL
        self.stream: str = self.settings.get("SSE_REDIS_STREAM") or ""
        if not self.stream:
            raise ValueError("RedisStreamPipeline needs SSE_REDIS_STREAM")
        self.is_template = "{" in self.stream or "}" in self.stream
        maxlen = self.settings.get("SSE_REDIS_MAXLEN")
        self.maxlen = int(maxlen) if maxlen not in (None, "") else 0
        self.dedup_prefix: str = self.settings.get("SSE_REDIS_DEDUP_PREFIX", "scrapy-sse:batch:")
        self.dedup_ttl = max(1, self.settings.getint("SSE_REDIS_DEDUP_TTL", 86400))
        self.cursor_key: str = self.settings.get(
            "SSE_REDIS_CURSOR_KEY", f"scrapy-sse:cursors:{self.stream}"
        )
        self._client: Redis | None = None
        self._script: AsyncScript | None = None
        self._in_doubt: InDoubtBatches[str] = InDoubtBatches()
        self._warned_empty = False
        self._entries = 0  # entries sent by the last script call

    def stream_for(self, row: dict[str, Any]) -> str:
        """The stream key of *row* (raises ``KeyError`` and the like for a template
        that names a field the row lacks)."""
        return self.stream.format_map(row) if self.is_template else self.stream

    def to_row(self, item: Any) -> dict[str, Any]:
        """Checks the stream template here, so a bad item is dropped on its own."""
        row = super().to_row(item)
        if self.is_template:
            try:
                self.stream_for(row)
            except (KeyError, IndexError, AttributeError, ValueError) as exc:
                raise DropItem(
                    f"SSE_REDIS_STREAM {self.stream!r} cannot be filled from this item "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
        return row

    # -- BatchingPipeline ------------------------------------------------------------

    async def open(self) -> None:
        self.require("redis", "redis")
        if not is_asyncio_available():
            raise RuntimeError(
                "RedisStreamPipeline needs the asyncio reactor (Scrapy's default "
                "TWISTED_REACTOR) or TWISTED_REACTOR_ENABLED = False"
            )
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialWithJitterBackoff

        self._client = Redis.from_url(
            self.url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            # A couple of quick reconnects (after a killed connection, say) before
            # the base class's slower retries; safe because the script is idempotent.
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), 2),
        )
        await self._client.ping()
        self._script = self._client.register_script(XADD_BATCH)

    async def write_batch(self, rows: list[dict[str, Any]], cursors: Cursors = NO_CURSORS) -> None:
        if not rows or self._script is None:
            return
        key = ""
        token = None
        if self._in_doubt:
            key = fingerprint(rows)
            token = self._in_doubt.pop(key)
        token = token or uuid.uuid4().hex
        keys, args = self._script_arguments(token, rows, cursors)
        try:
            added = await self._script(keys=keys, args=args)
        except BaseException:
            self._in_doubt.add(key or fingerprint(rows), token)
            raise
        if 0 <= added < self._entries and not self._warned_empty:
            self._warned_empty = True  # (a row whose fields are all None)
            logger.warning("Sink %s: rows with only null fields are skipped", self.name)
        if added == -1:
            self._stat_inc("in_doubt_batches_skipped")
            logger.info(
                "Sink %s: %d rows were written by an attempt that lost its reply; "
                "not writing them again",
                self.name,
                len(rows),
            )

    async def load_cursors(self) -> dict[str, Cursor]:
        if self._client is None:
            return {}
        found = await self._client.hgetall(self.cursor_key)
        return {_text(key): Cursor.from_list(json.loads(value)) for key, value in found.items()}

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- helpers ---------------------------------------------------------------------

    def _script_arguments(
        self, token: str, rows: list[dict[str, Any]], cursors: Cursors = NO_CURSORS
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of :data:`XADD_BATCH` for *rows* (rows that cannot be routed
        or have no non-null field are skipped with a log line: retrying cannot fix
        them)."""
        keys = [self.dedup_prefix + token, self.cursor_key]
        args: list[Any] = [self.dedup_ttl, self.maxlen, len(cursors)]
        for stream_key, c in cursors.items():
            args += (stream_key, json.dumps(c.as_list(), ensure_ascii=False))
        routed = self._routed(rows, keys)
        self._entries = len(routed)
        try:
            args += ("json", self._batch_json(routed))
        except _NeedsArgs:
            args.append("args")
            for index, row in routed:
                fields: list[Any] = []
                for name, value in row.items():
                    encoded = encode_field(value)
                    if encoded is not None:
                        fields += (name, encoded)
                if fields:
                    args += (index, len(fields) // 2, *fields)
        return keys, args

    def _routed(
        self, rows: list[dict[str, Any]], keys: list[str]
    ) -> list[tuple[int, dict[str, Any]]]:
        """Each row with the index (in *keys*, from 1) of its stream, added to *keys*."""
        if not self.is_template:
            keys.append(self.stream)
            return [(len(keys), row) for row in rows]
        index: dict[str, int] = {}
        routed = []
        for row in rows:
            try:
                stream = self.stream_for(row)
            except (KeyError, IndexError, AttributeError, ValueError) as exc:
                logger.error("Sink %s: row skipped, no stream for it (%s)", self.name, exc)
                continue
            if stream not in index:
                keys.append(stream)
                index[stream] = len(keys)  # Lua indexes from 1
            routed.append((index[stream], row))
        return routed

    @staticmethod
    def _batch_json(routed: list[tuple[int, dict[str, Any]]]) -> str:
        """The entries as one JSON text, encoded a column at a time and in one
        ``json.dumps`` call (C) instead of an argument per field value: redis-py
        encodes and measures every argument in Python."""
        names = list(dict.fromkeys(name for _, row in routed for name in row))
        columns: list[list[Any]] = [[index for index, _ in routed]]
        for name in names:
            values = [row.get(name) for _, row in routed]
            kinds = set(map(type, values))
            kinds.discard(type(None))
            if not kinds <= _TEXT:
                values = [_entry_text(v) for v in values]
            columns.append(values)
        return json.dumps([names, list(zip(*columns, strict=True))], ensure_ascii=False)
