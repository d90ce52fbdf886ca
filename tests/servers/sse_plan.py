"""The logical byte stream behind ``/stream``, built as a pure function of the query.

A scenario's bytes are fixed by its parameters alone (never by timing, chunking or
drops), so a test can call :func:`build_plan` with the same query it sends and learn
where each event starts, where a multibyte character sits, or how long the stream is,
and then ask the server to cut the connection exactly there.  Drop offsets
(``drop_at``) are positions in :attr:`StreamPlan.body`.

The stream is a list of pieces: a preamble (UTF-8 BOM and/or a ``retry:`` block), the
events, optional ``: heartbeat`` comments and an optional ``data: [DONE]`` event.  A
resumed connection (``Last-Event-ID: X``) sends the preamble again (it is a new HTTP
body) and then every piece after event ``X``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

#: Text put in every event's data by default: 2-, 3- and 4-byte UTF-8 sequences, so
#: random chunk splits and drop offsets regularly land inside a character.
UNICODE_TEXT = "é€😀"
#: Caps keeping every scenario bounded in size.
MAX_EVENTS = 100_000
MAX_EVENT_SIZE = 16 * 1024 * 1024
MAX_STREAM_BYTES = 64 * 1024 * 1024

PieceKind = Literal["preamble", "event", "comment", "done"]


class ParamError(ValueError):
    """A query parameter is invalid; the server answers 400 with this message."""


def int_param(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter, validated against ``[lo, hi]``."""
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError as exc:
        raise ParamError(f"{name} must be an integer, got {text!r}") from exc
    if not lo <= value <= hi:
        raise ParamError(f"{name} must be within [{lo}, {hi}], got {value}")
    return value


def float_param(query: Mapping[str, str], name: str, default: float, hi: float) -> float:
    """A non-negative float query parameter; values above ``hi`` are clamped (time caps)."""
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError as exc:
        raise ParamError(f"{name} must be a number, got {text!r}") from exc
    if not value >= 0:  # also rejects NaN
        raise ParamError(f"{name} must be >= 0, got {text!r}")
    return min(value, hi)


def flag_param(query: Mapping[str, str], name: str) -> bool:
    """A boolean flag: ``1``/``true``/``yes``/``on`` (or present and empty) is true."""
    text = query.get(name)
    if text is None:
        return False
    return text.lower() in ("", "1", "true", "yes", "on")


@dataclass(frozen=True)
class StreamParams:
    """The parameters that decide the logical byte stream (see module docstring)."""

    n: int = 10
    start: int = 0
    event: str | None = None
    eol: str = "\n"
    bom: bool = False
    retry: int | None = None
    done: bool = False
    comment_every: int = 0
    size: int = 0
    multiline: bool = False
    ascii: bool = False

    @classmethod
    def from_query(cls, query: Mapping[str, str], *, default_n: int = 10) -> StreamParams:
        """Parse ``n, start, event, crlf, cr, bom, retry, done, comment_every, size,
        multiline, ascii`` from a query dict."""
        eol = "\n"
        if flag_param(query, "crlf"):
            eol = "\r\n"
        elif flag_param(query, "cr"):
            eol = "\r"
        retry_text = query.get("retry")
        event = query.get("event") or None
        if event is not None and any(c in event for c in "\r\n"):
            raise ParamError("event must not contain line breaks")
        return cls(
            n=int_param(query, "n", default_n, 0, MAX_EVENTS),
            start=int_param(query, "start", 0, 0, 10**12),
            event=event,
            eol=eol,
            bom=flag_param(query, "bom"),
            retry=None if retry_text is None else int_param(query, "retry", 0, 0, 10**9),
            done=flag_param(query, "done"),
            comment_every=int_param(query, "comment_every", 0, 0, MAX_EVENTS),
            size=int_param(query, "size", 0, 0, MAX_EVENT_SIZE),
            multiline=flag_param(query, "multiline"),
            ascii=flag_param(query, "ascii"),
        )


@dataclass(frozen=True)
class Piece:
    """A contiguous slice of the logical stream: ``data`` starts at ``offset``."""

    kind: PieceKind
    offset: int
    data: bytes
    event_id: int | None = None

    @property
    def end(self) -> int:
        """Offset just past this piece."""
        return self.offset + len(self.data)


@dataclass(frozen=True)
class StreamPlan:
    """The full logical stream of a ``/stream`` scenario plus the index of its pieces."""

    params: StreamParams
    pieces: tuple[Piece, ...]

    @property
    def body(self) -> bytes:
        """All bytes a client would get from one uninterrupted connection."""
        return b"".join(p.data for p in self.pieces)

    @property
    def total(self) -> int:
        """Length of :attr:`body`."""
        return self.pieces[-1].end if self.pieces else 0

    @property
    def preamble(self) -> tuple[Piece, ...]:
        """Pieces re-sent at the start of every connection (BOM, ``retry:``)."""
        return tuple(p for p in self.pieces if p.kind == "preamble")

    def event_piece(self, event_id: int) -> Piece:
        """The piece carrying event ``event_id`` (``KeyError`` if not in the stream)."""
        for piece in self.pieces:
            if piece.event_id == event_id:
                return piece
        raise KeyError(event_id)

    def resume_index(self, last_event_id: str | None) -> int:
        """Index of the first piece to send after the preamble for a ``Last-Event-ID``.

        A missing, non-integer or too-small id starts from the first event; an id at or
        past the last event sends only what follows it (``[DONE]``, comments).
        """
        first = len(self.preamble)
        if last_event_id is None:
            return first
        try:
            last = int(last_event_id.strip())
        except ValueError:
            return first
        for index, piece in enumerate(self.pieces):
            if piece.kind == "event" and piece.event_id is not None and piece.event_id > last:
                return index
        for index in range(len(self.pieces) - 1, first - 1, -1):
            if self.pieces[index].kind == "event":
                return index + 1
        return first


def event_data(params: StreamParams, seq: int) -> str:
    """The JSON data text of event ``seq`` (before splitting into ``data:`` lines)."""
    payload: dict[str, object] = {"seq": seq}
    if not params.ascii:
        payload["text"] = UNICODE_TEXT
    text = json.dumps(payload, ensure_ascii=False)
    if params.size:
        bare = len(text.encode("utf-8")) + len(', "pad": ""')
        payload["pad"] = "x" * max(0, params.size - bare)
        text = json.dumps(payload, ensure_ascii=False)
    return text


def event_bytes(params: StreamParams, seq: int) -> bytes:
    """One event block: ``id:``, optional ``event:``, ``data:`` line(s), blank line.

    With ``multiline`` the JSON is split after each ``", "`` onto its own ``data:``
    line; the client re-joins them with ``\\n``, which is JSON whitespace, so the data
    still parses as JSON.
    """
    eol = params.eol
    lines = [f"id: {seq}"]
    if params.event:
        lines.append(f"event: {params.event}")
    text = event_data(params, seq)
    chunks = text.replace(", ", ",\n").split("\n") if params.multiline else [text]
    lines.extend(f"data: {chunk}" for chunk in chunks)
    return (eol.join(lines) + eol + eol).encode("utf-8")


def build_plan(params: StreamParams) -> StreamPlan:
    """Lay out the logical stream for ``params`` (deterministic, no randomness)."""
    eol = params.eol
    pieces: list[Piece] = []
    offset = 0

    def add(kind: PieceKind, data: bytes, event_id: int | None = None) -> None:
        nonlocal offset
        pieces.append(Piece(kind, offset, data, event_id))
        offset += len(data)
        if offset > MAX_STREAM_BYTES:
            raise ParamError(f"stream larger than {MAX_STREAM_BYTES} bytes")

    if params.bom:
        add("preamble", b"\xef\xbb\xbf")
    if params.retry is not None:
        add("preamble", f"retry: {params.retry}{eol}{eol}".encode())
    for number in range(1, params.n + 1):
        seq = params.start + number
        add("event", event_bytes(params, seq), seq)
        if params.comment_every and number % params.comment_every == 0:
            add("comment", f": heartbeat{eol}".encode())
    if params.done:
        add("done", f"data: [DONE]{eol}{eol}".encode())
    return StreamPlan(params, tuple(pieces))


def plan_from_query(query: Mapping[str, str], *, default_n: int = 10) -> StreamPlan:
    """Shortcut for tests: ``build_plan(StreamParams.from_query(query))``."""
    return build_plan(StreamParams.from_query(query, default_n=default_n))


def drop_points(query: Mapping[str, str], plan: StreamPlan) -> tuple[int, ...]:
    """The drop offsets asked for: explicit ``drop_at`` and/or ``drops=K`` random ones.

    Random points come from ``random.Random(f"drops:{seed}")`` over ``[1, total)``, so
    the same query always cuts at the same places; :func:`drop_points` can be called by
    a test to know them.
    """
    points: set[int] = set()
    text = query.get("drop_at", "")
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            value = int(item)
        except ValueError as exc:
            raise ParamError(f"drop_at must be integers, got {item!r}") from exc
        if value < 0:
            raise ParamError("drop_at offsets must be >= 0")
        points.add(value)
    count = int_param(query, "drops", 0, 0, 10_000)
    if count and plan.total > 1:
        seed = query.get("seed", "0")
        rng = random.Random(f"drops:{seed}")
        points.update(rng.sample(range(1, plan.total), min(count, plan.total - 1)))
    return tuple(sorted(points))
