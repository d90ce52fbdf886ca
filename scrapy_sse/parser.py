"""A sans-IO parser for ``text/event-stream`` (WHATWG HTML, "Server-sent events").

Bytes go in through :meth:`SSEParser.feed`, complete events come out; no sockets, no
Twisted, no Scrapy. This keeps the hardest logic testable with plain unit and property
tests, and lets every transport (Twisted, aiohttp, a benchmark) share one parser.

Speed matters here: every event of every stream passes through :meth:`feed`. The
design choices that follow from that:

* CR and CRLF line ends are rewritten to LF on the bytes of each read (a CR or LF is
  never inside a UTF-8 sequence; a CR at the very end of a read is a line end at once,
  and a LF that starts the next read is then dropped), so everything after sees LF only.
* Streams stay bytes until a block is complete: a read is split on ``b"\n\ndata: "``
  (one C call; in a data-only stream every piece is then one event's value) and each
  value is decoded on its own. Splitting bytes is faster than splitting text, and no
  wide string is built for a read that holds one emoji. A field value never holds a line
  end, so the values are exactly what decoding the whole stream would give.
* The unfinished last block of a read stays undecoded in a list of reads until its
  blank line arrives: a read without a line end, or with one line end that cannot end
  the block, costs one append. A slow trickle or a 64 KiB line costs O(n) overall, not
  O(n²); long lines are located with ``find`` (a memchr), never with ``split``.
* Anything else (an event left half-read with complete lines past 2 KiB, a comment
  starting a block, the first read with its BOM check) takes the text path: one
  incremental UTF-8 decoder per stream (``errors="replace"``) and one ``str.split`` per
  read. The parser returns to the byte path as soon as only a short unfinished block is
  carried over.
* Per-event state lives in local variables inside the loops and is stored back once
  per read.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any

from .errors import SSEEventTooLarge
from .events import SSEComment, new_event

__all__ = ["COMPILED", "DEFAULT_MAX_EVENT_SIZE", "SSEParser"]

#: Whether this module is the mypyc-compiled build of this file (installed with
#: ``SCRAPY_SSE_COMPILE=1``); the pure-Python module behaves the same, more slowly.
COMPILED = __file__.endswith(tuple(EXTENSION_SUFFIXES))

#: Default ceiling for one event (data of all its lines) or one line, in characters.
DEFAULT_MAX_EVENT_SIZE = 16 * 1024 * 1024

_new_decoder = codecs.getincrementaldecoder("utf-8")

#: An unfinished event is kept as text and re-split on the next read while it is
#: shorter than this; past it, its complete lines are folded into the parser state so
#: that a long multi-line event costs O(n), not O(n²), however it is cut into reads.
_FOLD_AT = 2048

#: Joined text longer than this is split by lines, not by blocks (see ``feed``).
_LONG_TEXT = 8192

#: How complete blocks are taken apart; the parser picks by what the stream sends.
#: Single-line data events: split where a blank line is followed by ``data: ``.
_DATA = 0
#: Blocks of ``event:``/``id:`` lines and one data line: one regex match per block.
_BLOCKS = 1
#: The longest ``retry:`` kept, in milliseconds (ten digits: 115 days); a reconnect
#: policy holds it to its own range anyway.
MAX_RETRY_MS = 9_999_999_999

#: Anything else (multi-line data, comments, retry...): one loop over all lines.
_LINES = 2
#: In line mode, every this many reads go through the block path, which measures the
#: stream's shape again (a stream may change what it sends).
_PROBE_EVERY = 64
#: Blocks between two choices of the path.
_SHAPE_WINDOW = 16

#: A whole block of the shape price feeds send: optional ``event:``/``id:`` lines
#: (``event`` may come before or after ``id``) and one ``data:`` line. One C-level
#: match replaces a Python loop over its lines; anything else takes the general path.
_simple_block = re.compile(
    r"(?:event: ?([^\n]*)\n)?(?:id: ?([^\n]*)\n)?(?:event: ?([^\n]*)\n)?data: ?([^\n]*)"
).fullmatch


#: The same shape for a run of complete blocks, each followed by a blank line or the end.
_split_simple_blocks = re.compile(
    r"(?:event: ?([^\n]*)\n)?(?:id: ?([^\n]*)\n)?(?:event: ?([^\n]*)\n)?data: ?([^\n]*)(?:\n\n|\Z)"
).split


class SSEParser:
    """Incremental event-stream parser for one connection.

    ``last_event_id`` seeds the id buffer (the id a reconnect resumed from) so that
    events without an ``id:`` line carry the id in effect, as a browser would report.
    With ``comments=True`` comment lines are returned as :class:`SSEComment` objects
    among the events; they are always counted in :attr:`comments`.
    ``source`` is attached to every event (the transport passes its response).
    """

    __slots__ = (
        "_data",
        "_data_size",
        "_decode",
        "_event_retry",
        "_hold_at",
        "_id_buffer",
        "_keep_comments",
        "_max_size",
        "_mode",
        "_own_id",
        "_pending",
        "_pending_limit",
        "_pending_size",
        "_probe",
        "_raw",
        "_seen",
        "_seen_matched",
        "_seen_simple",
        "_skip_lf",
        "_started",
        "_tail",
        "_type",
        "comments",
        "last_event_id",
        "retry",
        "source",
    )

    def __init__(
        self,
        *,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        comments: bool = False,
        last_event_id: str = "",
        source: Any = None,
    ) -> None:
        self._decode = _new_decoder("replace").decode
        self._max_size = max_event_size
        self._keep_comments = comments
        self._tail = ""
        # Reads of an unfinished block, undecoded (see ``_feed_raw``). A list, not a
        # bytearray: that would reallocate on most tiny reads. (An empty read is
        # appended as is; ``_pending_size`` says whether anything is held.)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._pending_limit = max_event_size
        # Largest block held by appending reads (see ``feed``): past it, or past the
        # size limit, a read goes through the path that folds or refuses it.
        self._hold_at = min(_FOLD_AT, max_event_size)
        # No BOM check done yet: the first read must take the text path.
        self._raw = False
        self._mode = _DATA
        self._probe = _PROBE_EVERY
        # Blocks seen since the mode was last chosen, and how many took each fast path.
        self._seen = self._seen_simple = self._seen_matched = 0
        self._started = False
        # After a read that ended with a CR: ``_pending_size`` then (see ``feed``).
        self._skip_lf = -1
        self._data: list[str] = []
        self._data_size = 0
        self._type = ""
        self._event_retry: int | None = None
        # Whether the event being read has its own id line (see SSEEvent.own_id).
        self._own_id = False
        self._id_buffer = last_event_id
        #: The last event id string of the stream: updated when an event is dispatched.
        self.last_event_id = last_event_id
        #: The latest valid ``retry:`` value (milliseconds) seen on this stream.
        self.retry: int | None = None
        #: Number of comment lines seen (heartbeats).
        self.comments = 0
        self.source = source

    def feed(self, chunk: bytes) -> Sequence[Any]:
        """Parse one read; return the events (and comments, if asked) it completed.

        Raises :class:`SSEEventTooLarge` when an event or a line passes the limit; the
        exception's ``events`` holds what this read completed before that.
        """
        # ``10 in chunk`` (an int) is several times faster than ``b"\n" in chunk``.
        if 10 not in chunk and 13 not in chunk:
            # No line end: nothing can complete. Keep the bytes undecoded; a trickle of
            # tiny reads then costs one append each instead of a decode and a concat.
            self._pending_size += len(chunk)
            if self._pending_size > self._pending_limit:
                size = self._pending_size + len(self._tail)
                self._pending = []
                self._pending_size = 0
                self._skip_lf = -1
                raise SSEEventTooLarge(size, self._max_size)
            self._pending.append(chunk)
            return ()
        if self._skip_lf >= 0:
            # The last read with a line end ended with a CR: a LF right after it is part
            # of its CRLF. Right after means no bytes were held since (reads without a
            # line end do not touch this mark, to keep that path short).
            skip = self._skip_lf == self._pending_size and chunk[0] == 10
            self._skip_lf = -1
            if skip:
                return self.feed(chunk[1:]) if len(chunk) > 1 else ()
        if 13 in chunk:
            # CR and LF never occur inside a UTF-8 sequence, so line ends are normalised
            # on the bytes; a CR at the very end is a line end at once.
            normalised = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if chunk[-1] != 13:
                chunk = normalised
            else:
                done = self.feed(normalised)
                self._skip_lf = self._pending_size
                return done
        joined = False
        pending = self._pending
        if self._raw:
            # A read with one line end, not at its start (so it makes no blank line),
            # cannot end the block it continues: hold it too. Not a comment line that
            # starts a block, though: a heartbeat counts when it arrives. (Cheap tests
            # first: a read per event ends with a blank line. ``find`` is a memchr;
            # ``count`` and two-byte searches walk every byte.)
            if (
                chunk[0] != 10
                and (chunk[-1] != 10 or chunk[-2] != 10)
                and self._pending_size + len(chunk) <= self._hold_at
                and chunk.find(10, chunk.find(10) + 1) < 0
            ):
                if pending:
                    # (An empty first read says nothing of the block: not held.)
                    if pending[0][:1] not in (b"", b":"):
                        self._pending_size += len(chunk)
                        pending.append(chunk)
                        return ()
                elif chunk[0] != 58:
                    self._pending_size = len(chunk)
                    pending.append(chunk)
                    return ()
            if pending:
                pending.append(chunk)
                chunk = b"".join(pending)
                self._pending = []
                self._pending_size = 0
            events = self._feed_raw(chunk)
            if events is not None:
                return events
            # The read needs the text path below; nothing is buffered anywhere else.
            self._raw = False
            joined = True
        elif pending:
            pending.append(chunk)
            chunk = b"".join(pending)
            self._pending = []
            self._pending_size = 0
            joined = True
        text = self._decode(chunk)
        if not self._started:
            self._started = True
            if text[:1] == "\ufeff":
                text = text[1:]
        if self._tail:
            text = self._tail + text
        out: list[Any] = []
        if (len(text) > _LONG_TEXT and (joined or text.find("\n", 0, _LONG_TEXT) < 0)) or (
            self._mode == _LINES and not self._probe_due()
        ):
            # Line mode, or long lines, few of them (reads without a line end were
            # joined, or the first line is long): a one-character split is many times
            # faster than a two-character one there.
            lines = text.split("\n")
            tail = lines.pop()
            self._lines(lines, out)
            self._keep_tail(tail, out)
        elif self._mode == _DATA:
            self._data_parts(text, out)
        else:
            self._blocks(text, out, complete=False)
        # Back to the byte path once nothing but an unfinished block is carried over (one
        # line, or short) and the decoder holds no partial character (the read ended on
        # an ASCII byte).
        self._raw = (
            chunk[-1] < 0x80
            and not (self._data or self._type or self._event_retry is not None or self._own_id)
            and self._tail[:1] != ":"
            and ("\n" not in self._tail or len(self._tail) <= _FOLD_AT)
        )
        if self._raw:
            self._pending_limit = self._max_size
            if self._tail:
                self._pending = [self._tail.encode()]
                self._pending_size = len(self._pending[0])
                self._tail = ""
        return out

    def _probe_due(self) -> bool:
        """In line mode, whether this read should measure the stream's shape again."""
        self._probe -= 1
        if self._probe:
            return False
        self._probe = _PROBE_EVERY
        return True

    def _feed_raw(self, data: bytes) -> list[Any] | None:
        """Parse LF-only bytes without decoding them as a whole; ``None`` when ``data``
        needs the text path (a long unfinished event, or a comment line).

        Only complete blocks are decoded, value by value: a field value never holds a
        line end, and a line end is never part of a UTF-8 sequence, so this gives the
        same text as decoding the stream in one go. The unfinished last block stays
        undecoded in ``_pending``, however many reads it takes to complete.
        """
        lf = data.rfind(10)
        if lf > 0 and data[lf - 1] == 10:
            end = lf - 1
            if self._mode == _DATA and data.startswith(b"data: ") and data.find(10, 0, end) < 0:
                # One event of one data line, and maybe the start of the next: what a
                # read per event, or the read that ends a trickle, holds.
                try:
                    value = data[6:end].decode()
                except UnicodeDecodeError:
                    value = data[6:end].decode("utf-8", "replace")
                if len(value) >= self._max_size:
                    raise SSEEventTooLarge(len(value) + 1, self._max_size)
                self.last_event_id = id_buffer = self._id_buffer
                self._seen += 1
                self._seen_simple += 1
                if self._seen >= _SHAPE_WINDOW:
                    self._count_shapes(0, 0, 0)
                events = [new_event(("message", value, id_buffer, None, self.source, False))]
                if lf + 1 < len(data):
                    self._hold(data[lf + 1 :], events)
                return events
        elif lf == 0 and len(data) == 1:
            return []  # a lone blank line, with nothing buffered, dispatches nothing
        else:
            # The read ends inside a block that already has complete lines: dispatch the
            # blocks before it and keep it, undecoded, while it is short (a long one is
            # folded into the parser state by the text path instead of re-scanned).
            cut = data.rfind(b"\n\n", 0, lf)
            start = cut + 2 if cut >= 0 else 0
            if len(data) - start > _FOLD_AT or data.startswith((b":", b"\n"), start):
                # (A comment line counts now, not when its block ends; so does one after
                # a blank line that starts the block.)
                return None
            end = cut
            lf = start - 1
        out: list[Any] = []
        if end > 0:
            if end > _LONG_TEXT and data.find(10, 0, _LONG_TEXT) < 0:
                self._raw_long(data, end, out)
            elif self._mode == _DATA:
                self._raw_blocks(data[:end], out)
            elif self._mode == _BLOCKS or self._probe_due():
                text = data[:end].decode("utf-8", "replace")
                if "\n\n" in text:
                    if not self._simple_blocks(text, out):
                        self._blocks(text, out, complete=True)
                elif not self._one_block(text, out):
                    self._blocks(text, out, complete=True)
            else:
                lines = data[:end].decode("utf-8", "replace").split("\n")
                lines.append("")
                self._lines(lines, out)
        if lf + 1 < len(data):
            self._hold(data[lf + 1 :], out)
        return out

    def _hold(self, rest: bytes, out: Sequence[Any] = ()) -> None:
        """Keep the unfinished last block of a read, undecoded, for the next one."""
        size = len(rest)
        if size > self._max_size:
            raise SSEEventTooLarge(size, self._max_size, out)
        self._pending = [rest]
        self._pending_size = size

    def _raw_blocks(self, region: bytes, out: list[Any]) -> None:
        """Dispatch the complete blocks of ``region`` (it ends where a blank line was).

        Split where a blank line is followed by a data field: in a data-only stream
        every piece after the first is then exactly one event's value.
        """
        parts = region.split(b"\n\ndata: ")
        first = parts[0]
        other = 0
        if first.startswith(b"data: ") and 10 not in first:
            parts[0] = first[6:]
        else:
            del parts[0]
            text = first.decode("utf-8", "replace")
            if parts or not self._one_block(text, out):
                self._blocks(text, out, complete=True)
        append = out.append
        max_size = self._max_size
        # A value decodes to at most as many characters as it has bytes.
        may_exceed = len(region) >= max_size
        id_buffer = self._id_buffer
        source = self.source
        for value in parts:
            if 10 not in value:
                try:
                    text = value.decode()
                except UnicodeDecodeError:
                    text = value.decode("utf-8", "replace")
                if may_exceed and len(text) >= max_size:
                    raise SSEEventTooLarge(len(text) + 1, max_size, out)
                append(new_event(("message", text, id_buffer, None, source, False)))
            else:
                other += 1
                self.last_event_id = id_buffer
                self._blocks("data: " + value.decode("utf-8", "replace"), out, complete=True)
                id_buffer = self._id_buffer
        self.last_event_id = id_buffer
        self._count_shapes(len(parts) - other, len(parts) - other, 0)

    def _one_block(self, text: str, out: list[Any]) -> bool:
        """Dispatch ``text`` if it is one block of event/id lines and one data line, as
        price feeds send them one per read: one C-level match instead of the block
        machinery. ``False``: anything else, nothing done."""
        match = _simple_block(text)
        if match is None or "\0" in text:
            return False
        event_type, event_id, event_type2, value = match.groups()
        if event_id is not None:
            self._id_buffer = event_id
        if len(value) >= self._max_size:
            raise SSEEventTooLarge(len(value) + 1, self._max_size, out)
        self.last_event_id = self._id_buffer
        event_type = event_type2 if event_type2 is not None else event_type
        event = (
            event_type or "message",
            value,
            self._id_buffer,
            None,
            self.source,
            event_id is not None,
        )
        out.append(new_event(event))
        self._count_shapes(1, 0, 1)
        return True

    def _simple_blocks(self, text: str, out: list[Any]) -> bool:
        """Dispatch ``text`` (complete blocks) if every block is event/id lines and one
        data line: one C-level regex split yields every field of every block, and the
        loop only builds the events. ``False``: some block is not, nothing done."""
        parts = _split_simple_blocks(text)
        # parts: [gap, event, id, event, data, gap, event, ...]; a gap is text between
        # two matches, i.e. a block of another shape.
        if (
            any(parts[::5])
            or "\0" in text
            # (No value is longer than the text: only a long text needs the check.)
            or (len(text) >= self._max_size and max(map(len, parts[4::5])) >= self._max_size)
        ):
            return False
        append = out.append
        id_buffer = self._id_buffer
        source = self.source
        fields = iter(parts)
        next(fields)
        for first_type, event_id, last_type, value, _ in zip(
            fields, fields, fields, fields, fields, strict=False
        ):
            if event_id is not None:
                id_buffer = event_id
            event_type = (last_type if last_type is not None else first_type) or "message"
            event = (event_type, value, id_buffer, None, source, event_id is not None)
            append(new_event(event))
        self._id_buffer = self.last_event_id = id_buffer
        self._count_shapes(len(parts) // 5, 0, len(parts) // 5)
        return True

    def _count_shapes(self, blocks: int, simple: int, matched: int) -> None:
        """Pick how to take blocks apart from the shape of the last blocks seen:
        single-line data events, event/id/data blocks, or anything else."""
        self._seen += blocks
        self._seen_simple += simple
        self._seen_matched += matched
        seen = self._seen
        if seen >= _SHAPE_WINDOW:
            simple = self._seen_simple
            fast = simple + self._seen_matched
            self._mode = (
                _DATA if simple * 4 >= seen * 3 else _BLOCKS if fast * 4 >= seen * 3 else _LINES
            )
            self._seen = self._seen_simple = self._seen_matched = 0

    def _raw_long(self, data: bytes, end: int, out: list[Any]) -> None:
        """Complete blocks made of long lines: find each line end (a fast C scan)
        instead of splitting, which walks every character in Python's split loop."""
        lines: list[str] = []
        start = 0
        while start <= end:
            nl = data.find(10, start, end)
            if nl < 0:
                nl = end
            lines.append(data[start:nl].decode("utf-8", "replace"))
            start = nl + 1
        lines.append("")
        self._lines(lines, out)

    def _data_parts(self, text: str, out: list[Any]) -> None:
        """Split where a blank line is followed by a data field: in a data-only stream
        every middle piece is then exactly one event's value, with no per-line work."""
        parts = text.split("\n\ndata: ")
        if len(parts) == 1:
            self._blocks(text, out, complete=False)
            return
        self._blocks(parts[0], out, complete=True)
        last = parts.pop()
        max_size = self._max_size
        id_buffer = self._id_buffer
        source = self.source
        append = out.append
        other = 0
        for i in range(1, len(parts)):
            value = parts[i]
            if "\n" not in value:
                if len(value) >= max_size:
                    raise SSEEventTooLarge(len(value) + 1, max_size, out)
                append(new_event(("message", value, id_buffer, None, source, False)))
            else:
                other += 1
                self.last_event_id = id_buffer
                self._blocks("data: " + value, out, complete=True)
                id_buffer = self._id_buffer
        self.last_event_id = id_buffer
        self._count_shapes(len(parts) - 1 - other, len(parts) - 1 - other, 0)
        self._blocks("data: " + last, out, complete=False)

    def _blocks(self, text: str, out: list[Any], *, complete: bool) -> None:
        """Parse ``text``; with ``complete`` it ends at a blank line, else its last
        block is unfinished and kept for the next read."""
        blocks = text.split("\n\n")
        tail = "" if complete else blocks.pop()
        append = out.append
        max_size = self._max_size
        id_buffer = self._id_buffer
        source = self.source
        # Only the first block can continue an event begun in an earlier read.
        clean = not (self._data or self._type or self._event_retry is not None or self._own_id)
        simple = matched = 0
        for block in blocks:
            if clean and block.startswith("data:") and "\n" not in block:
                # Fast path: a block that is exactly one data line.
                simple += 1
                value = block[6:] if block.startswith(" ", 5) else block[5:]
                if len(value) >= max_size:
                    raise SSEEventTooLarge(len(value) + 1, max_size, out)
                append(new_event(("message", value, id_buffer, None, source, False)))
                continue
            if clean and block.startswith(("event", "id")):
                match = _simple_block(block)
                if match is not None:
                    # Fast path: event/id lines and one data line, as tickers send.
                    event_type, event_id, event_type2, value = match.groups()
                    if event_id is None or "\0" not in event_id:
                        if event_id is not None:
                            id_buffer = event_id
                        if len(value) >= max_size:
                            raise SSEEventTooLarge(len(value) + 1, max_size, out)
                        event_type = event_type2 if event_type2 is not None else event_type
                        event = (
                            event_type or "message",
                            value,
                            id_buffer,
                            None,
                            source,
                            event_id is not None,
                        )
                        append(new_event(event))
                        matched += 1
                        continue
            clean = True
            self._id_buffer = id_buffer
            self._lines(block.split("\n"), out)
            id_buffer = self._id_buffer
            # The block ended with a blank line: dispatch. The id becomes the stream's
            # last event id even when there is no data to dispatch.
            data = self._data
            if data:
                append(
                    new_event(
                        (
                            self._type or "message",
                            data[0] if len(data) == 1 else "\n".join(data),
                            id_buffer,
                            self._event_retry,
                            source,
                            self._own_id,
                        )
                    )
                )
                self._data = []
                self._data_size = 0
            self._type = ""
            self._event_retry = None
            self._own_id = False
        if blocks:
            self.last_event_id = id_buffer
        self._id_buffer = id_buffer
        self._count_shapes(len(blocks), simple, matched)
        self._keep_tail(tail, out)

    def _keep_tail(self, tail: str, out: list[Any]) -> None:
        """Keep the unfinished end of the text for the next read."""
        if tail[:1] == "\n":
            # The unfinished part starts with a blank line (a third line end in a
            # row): it dispatches now, not when more text arrives.
            self._lines([""], out)
            tail = tail[1:]
        if len(tail) > _FOLD_AT or tail[:1] == ":":
            # Long, or starting with a comment (a heartbeat must count as soon as it
            # arrives, not when an event finally follows).
            cut = tail.rfind("\n")
            if cut >= 0:
                # Complete lines of an unfinished event: fold them into the state now so
                # a long multi-line event is not re-split on every read.
                self._lines(tail[:cut].split("\n"), out)
                tail = tail[cut + 1 :]
            if len(tail) > self._max_size:
                self._tail = ""
                raise SSEEventTooLarge(len(tail), self._max_size, out)
        self._tail = tail
        self._pending_limit = self._max_size - len(tail)

    def _lines(self, lines: list[str], out: list[Any]) -> None:
        """Apply the field lines of one (part of a) block to the current event.

        The size limit is checked once per call (one read adds at most one read's
        worth of data) and once per dispatched event, not once per line."""
        data = self._data
        data_size = self._data_size  # of data[:counted]
        counted = len(data)
        etype = self._type
        event_retry = self._event_retry
        id_buffer = self._id_buffer
        own_id = self._own_id
        max_size = self._max_size
        try:
            for line in lines:
                if line.startswith("data:"):
                    # Most lines of a multi-line event: checked first, sliced once.
                    data.append(line[6:] if line.startswith(" ", 5) else line[5:])
                    continue
                if not line:
                    # A blank line: dispatch.
                    self.last_event_id = id_buffer
                    if data:
                        value = "\n".join(data)
                        data = []
                        data_size = counted = 0
                        if len(value) >= max_size:
                            raise SSEEventTooLarge(len(value) + 1, max_size, out)
                        event = (
                            etype or "message",
                            value,
                            id_buffer,
                            event_retry,
                            self.source,
                            own_id,
                        )
                        out.append(new_event(event))
                    etype = ""
                    event_retry = None
                    own_id = False
                    continue
                if line[0] == ":":
                    self.comments += 1
                    if self._keep_comments:
                        text = line[1:]
                        out.append(SSEComment(text[1:] if text[:1] == " " else text))
                    continue
                field, _, value = line.partition(":")
                if value[:1] == " ":
                    value = value[1:]
                if field == "data":  # "data" without a colon: an empty line of data
                    data.append(value)
                elif field == "event":
                    etype = value
                elif field == "id":
                    if "\0" not in value:
                        id_buffer = value
                        own_id = True
                elif field == "retry" and value.isdigit() and value.isascii():
                    # (A value of thousands of digits would not even convert: any
                    # retry longer than MAX_RETRY_MS is that long.)
                    event_retry = self.retry = int(value) if len(value) <= 10 else MAX_RETRY_MS
                # Any other field is ignored, as the spec requires.
            if len(data) > counted:
                data_size += sum(map(len, data[counted:])) + len(data) - counted
                if data_size > max_size:
                    size = data_size
                    data = []
                    data_size = 0
                    raise SSEEventTooLarge(size, max_size, out)
        finally:
            self._data = data
            self._data_size = data_size
            self._type = etype
            self._event_retry = event_retry
            self._id_buffer = id_buffer
            self._own_id = own_id

    @property
    def keeps_comments(self) -> bool:
        """Whether comments are returned among the events (``comments=True``)."""
        return self._keep_comments

    @property
    def pending(self) -> bool:
        """Whether an incomplete event or line is buffered (it would be lost at EOF)."""
        return bool(self._data or self._tail or self._type or self._pending_size or self._own_id)

    def close(self) -> bool:
        """End of stream: discard any incomplete event, as the spec requires.

        Returns whether something was discarded, so the caller can count it.
        """
        dropped = self.pending
        self._decode(b"", True)
        self._pending = []
        self._pending_size = 0
        self._data = []
        self._data_size = 0
        self._tail = ""
        self._type = ""
        self._event_retry = None
        self._own_id = False
        return dropped
