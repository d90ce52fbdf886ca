"""Deterministic SSE corpora, generated in memory, with the events a correct parser must
produce.

Why generate instead of recording: the corpora must be identical on every machine and
in every process (the loopback server and each client process build the same stream
independently), and the expected events must come from the generator, not from any
parser under test, so that a parser is checked against the spec's outcome and not
against another parser.

The four shapes cover what matters for speed:

* ``openai``: OpenAI ``chat.completion.chunk`` JSON, one ``data:`` line per event
  (~190 bytes), a little non-ASCII so that UTF-8 characters are split across small reads.
  No ``data: [DONE]`` sentinel: scrapy-sse ends a stream on it by default, the others
  would deliver it, and the benchmark wants the same N events everywhere.
* ``ticker``: ``event: price_update`` / ``id: N`` / ``data: {...}``, typed events
  with an id each (~140 bytes).
* ``mixed``: multi-line data, comments (standalone heartbeat blocks and lines inside
  events), ``retry:`` and unknown fields, event types, ids on some events only, and LF,
  CRLF or CR line ends. Each block uses one line-end style throughout: a server that
  switches style within a block (``\\n`` then ``\\r`` as the blank line) is legal but
  not realistic, and sseclient-py mis-splits it (it looks for ``\\n\\n``, ``\\r\\r`` or
  ``\\r\\n\\r\\n``), which would turn a speed comparison into a conformance test.
* ``large``: 64 KiB single-line events: the cost of buffering a long line across reads.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = [
    "CORPORA",
    "Corpus",
    "Expected",
    "build",
    "build_events",
    "split_reads",
]


@dataclass(frozen=True, slots=True)
class Expected:
    """One event as the WHATWG processing model dispatches it.

    ``id`` is the last event id in effect at dispatch (it persists across events);
    ``own_id`` is the ``id:`` line of this event's own block, if any (what parsers
    that do not persist ids, like sseclient-py, report).
    """

    event: str
    data: str
    id: str
    own_id: str | None


@dataclass(frozen=True)
class Corpus:
    """A stream cut into its wire blocks (one per event, or per comment-only block)."""

    name: str
    blocks: list[bytes]
    expected: list[Expected]

    @property
    def payload(self) -> bytes:
        return b"".join(self.blocks)

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.blocks)


# A generator yields (wire block, expected event or None for a comment-only block);
# it tracks the id in effect itself.
Generator = Callable[[random.Random], Iterator[tuple[bytes, Expected | None]]]

_WORD_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when "
    "if so no what up out about into than them can only other new some could time these "
    "two may then do first any my now such like our over man me even most made after also"
)
_WORDS = tuple(_WORD_TEXT.split())
_NON_ASCII = (" café", " naïve", " 日本語", " —", " 🙂", " Zürich", " Ελλάδα", " ñandú")
_ALNUM = string.ascii_letters + string.digits


def _token(rng: random.Random) -> str:
    if rng.random() < 0.05:
        return rng.choice(_NON_ASCII)
    word = rng.choice(_WORDS)
    return " " + word if rng.random() < 0.85 else word + ","


def _openai(rng: random.Random) -> Iterator[tuple[bytes, Expected | None]]:
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    completion = 0
    while True:
        cid = "chatcmpl-" + "".join(rng.choices(_ALNUM, k=29))
        created = 1_718_000_000 + completion
        length = rng.randint(40, 160)
        for k in range(length + 2):
            delta: dict[str, object]
            finish: str | None = None
            if k == 0:
                delta = {"role": "assistant", "content": ""}
            elif k == length + 1:
                delta = {}
                finish = "stop"
            else:
                delta = {"content": _token(rng)}
            data = dumps(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )
            yield f"data: {data}\n\n".encode(), Expected("message", data, "", None)
        completion += 1


_SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "BRK.B", "JPM", "V")


def _ticker(rng: random.Random) -> Iterator[tuple[bytes, Expected | None]]:
    prices = {s: 100.0 + 50 * i for i, s in enumerate(_SYMBOLS)}
    n = 0
    ts = 1_718_000_000_000
    while True:
        n += 1
        ts += rng.randint(1, 40)
        symbol = rng.choice(_SYMBOLS)
        price = prices[symbol] = max(1.0, prices[symbol] + rng.uniform(-0.5, 0.5))
        data = (
            f'{{"symbol":"{symbol}","price":{price:.2f},"bid":{price - 0.01:.2f},'
            f'"ask":{price + 0.01:.2f},"volume":{rng.randint(1, 5000)},"ts":{ts}}}'
        )
        block = f"event: price_update\nid: {n}\ndata: {data}\n\n"
        yield block.encode(), Expected("price_update", data, str(n), str(n))


_TYPES = ("update", "notice", "delete", "progress")
_TEXT = (
    "time: 12:30:05",
    "plain text line",
    '{"k": [1, 2, 3], "s": "a:b"}',
    "  two leading spaces",
    "trailing space ",
    "Zürich → Genève",
    "ünïcödé and 日本語",
    "",
)


def _mixed(rng: random.Random) -> Iterator[tuple[bytes, Expected | None]]:
    eol_styles = ("\n", "\r\n", "\r")
    last_id = ""
    serial = 0
    while True:
        eol = eol_styles[rng.randrange(3)]
        if rng.random() < 0.1:
            # A heartbeat: a comment-only block, which dispatches nothing.
            text = rng.choice((": keep-alive", ":", ":ping " + str(serial)))
            yield (text + eol + eol).encode(), None
            continue
        serial += 1
        values = [rng.choice(_TEXT[:-1]) + f" #{serial}"]
        values += [rng.choice(_TEXT) for _ in range(rng.randint(0, 5))]
        lines: list[str] = []
        for value in values:
            if value == "":
                lines.append(rng.choice(("data", "data:")))
            elif value.startswith(" "):
                lines.append("data:" + " " + value)  # one space is stripped, one stays
            elif rng.random() < 0.2:
                lines.append("data:" + value)  # no space after the colon
            else:
                lines.append("data: " + value)
        event_type = rng.choice(_TYPES) if rng.random() < 0.5 else ""
        own_id: str | None = None
        head: list[str] = []
        if event_type:
            head.append("event: " + event_type)
        if rng.random() < 0.4:
            own_id = last_id = f"m-{serial}"
            head.append("id: " + own_id)
        if rng.random() < 0.03:
            head.append("retry: 3000")
        if rng.random() < 0.05:
            head.append("x-unknown: ignored")
        if rng.random() < 0.15:
            head.append(": inline comment")
        # Fields may come in any order; put some of them after the data lines.
        cut = rng.randint(0, len(head))
        body = head[:cut] + lines + head[cut:]
        block = eol.join(body) + eol + eol
        yield block.encode(), Expected(event_type or "message", "\n".join(values), last_id, own_id)


_POOL_SIZE = 1 << 20


def _large(rng: random.Random) -> Iterator[tuple[bytes, Expected | None]]:
    pool = "".join(rng.choices(_ALNUM + "+/", k=_POOL_SIZE))
    n = 0
    while True:
        n += 1
        start = rng.randrange(_POOL_SIZE - 65_536)
        head = f'{{"seq":{n},"blob":"'
        data = head + pool[start : start + 65_536 - len(head) - 2] + '"}'
        yield f"data: {data}\n\n".encode(), Expected("message", data, "", None)


CORPORA: dict[str, Generator] = {
    "openai": _openai,
    "ticker": _ticker,
    "mixed": _mixed,
    "large": _large,
}
_SEEDS = {"openai": 1, "ticker": 2, "mixed": 3, "large": 4}


def build(name: str, target_bytes: int) -> Corpus:
    """The first blocks of corpus ``name`` adding up to at least ``target_bytes``."""
    blocks: list[bytes] = []
    expected: list[Expected] = []
    size = 0
    for block, event in CORPORA[name](random.Random(_SEEDS[name])):
        blocks.append(block)
        if event is not None:
            expected.append(event)
        size += len(block)
        if size >= target_bytes:
            break
    return Corpus(name, blocks, expected)


def build_events(name: str, n_events: int) -> Corpus:
    """The first blocks of corpus ``name`` holding exactly ``n_events`` events."""
    blocks: list[bytes] = []
    expected: list[Expected] = []
    if n_events <= 0:
        return Corpus(name, blocks, expected)
    for block, event in CORPORA[name](random.Random(_SEEDS[name])):
        blocks.append(block)
        if event is not None:
            expected.append(event)
            if len(expected) == n_events:
                break
    return Corpus(name, blocks, expected)


def split_reads(corpus: Corpus, read_size: int | None) -> list[bytes]:
    """The stream as a list of reads: fixed-size slices, or one read per block (None)."""
    if read_size is None:
        return list(corpus.blocks)
    payload = corpus.payload
    return [payload[i : i + read_size] for i in range(0, len(payload), read_size)]
