"""Parse-only consumers: our ``SSEParser`` and the parsers inside three other Python SSE
clients, each fed the same list of reads and returning its events in a list.

Why these adapters look the way they do: each drives the peer's parser exactly as the
peer's own client does on a live response, minus the network, and never slower than
that (no extra layers, no per-event work the peer would not do):

* httpx-sse 0.4.3 ``iter_sse``: bytes -> ``httpx._decoders.TextDecoder`` (incremental
  UTF-8, ``errors="replace"``) -> ``httpx_sse._decoders.SSELineDecoder`` (httpx-sse's
  own line splitter on CR/LF/CRLF; 0.4.x no longer uses httpx's ``LineDecoder``, which
  also splits on U+2028 and friends) -> ``line.rstrip("\\n")`` -> ``SSEDecoder.decode``.
  The generator layers of ``iter_text``/``_iter_sse_lines``/``iter_sse`` are flattened
  into plain loops, which can only make it faster.
* sseclient-py 1.9 ``SSEClient(source).events()``: the documented API; ``source`` is any
  iterable of bytes (``requests.Response``, a urllib3 response, here a list iterator).
* launchdarkly-eventsource 1.7 ``SSEClient``: what its ``_all_generator`` runs on each
  connection, ``_SSEReader(_BufferedLineReader.lines_from(chunks)).events_and_comments()``
  keeping the ``Event`` actions (``SSEClient.events`` filters the same way).

``normalise`` maps each peer's event objects to ``(event, data, id)`` so the outputs can
be compared with the corpus's expected events; see its docstring for the differences it
has to absorb.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sseclient
from httpx._decoders import TextChunker, TextDecoder
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from ld_eventsource.actions import Event
from ld_eventsource.reader import _BufferedLineReader, _SSEReader

from scrapy_sse import SSEParser
from scrapy_sse.parser import COMPILED

from .corpora import Expected

__all__ = ["PARSERS", "ParserPeer", "compiled_peer", "normalise"]


def _driver(parser_class: type[Any]) -> Callable[[list[bytes]], list[Any]]:
    def parse(reads: list[bytes]) -> list[Any]:
        """scrapy-sse's parser, as a transport drives it: one ``feed`` per read."""
        parser = parser_class()
        out: list[Any] = []
        extend = out.extend
        feed = parser.feed
        for chunk in reads:
            extend(feed(chunk))
        parser.close()
        return out

    return parse


parse_ours = _driver(SSEParser)


def parse_httpx_sse(reads: list[bytes]) -> list[Any]:
    """httpx-sse's ``iter_sse`` pipeline over httpx's text decoder (see module doc)."""
    text_decoder = TextDecoder(encoding="utf-8")
    chunker = TextChunker(chunk_size=None)
    line_decoder = SSELineDecoder()
    decoder = SSEDecoder()
    out: list[Any] = []
    append = out.append
    for chunk in reads:
        for text in chunker.decode(text_decoder.decode(chunk)):
            for line in line_decoder.decode(text):
                sse = decoder.decode(line.rstrip("\n"))
                if sse is not None:
                    append(sse)
    for text in chunker.decode(text_decoder.flush()):
        for line in line_decoder.decode(text):
            sse = decoder.decode(line.rstrip("\n"))
            if sse is not None:
                append(sse)
    for line in line_decoder.flush():
        sse = decoder.decode(line.rstrip("\n"))
        if sse is not None:
            append(sse)
    return out


def parse_sseclient(reads: list[bytes]) -> list[Any]:
    """sseclient-py's documented API over an iterable of byte chunks."""
    return list(sseclient.SSEClient(iter(reads)).events())


def parse_launchdarkly(reads: list[bytes]) -> list[Any]:
    """launchdarkly-eventsource's reader, as ``SSEClient`` runs it per connection."""
    reader = _SSEReader(_BufferedLineReader.lines_from(reads))
    return [a for a in reader.events_and_comments() if isinstance(a, Event)]


def compiled_peer() -> ParserPeer:
    """Our parser's mypyc build (``SCRAPY_SSE_COMPILE=1``), built from this checkout."""
    from .compiled import load_compiled_parser

    if COMPILED:
        raise SystemExit("--compiled: scrapy_sse.parser is the compiled build already here")
    return ParserPeer(
        "ours_compiled", "scrapy-sse SSEParser, compiled", _driver(load_compiled_parser())
    )


@dataclass(frozen=True)
class ParserPeer:
    key: str
    label: str
    parse: Callable[[list[bytes]], list[Any]]


PARSERS: tuple[ParserPeer, ...] = (
    # (Labelled if this environment installed the compiled build: SCRAPY_SSE_COMPILE=1.)
    ParserPeer("ours", "scrapy-sse SSEParser" + (", compiled" if COMPILED else ""), parse_ours),
    ParserPeer("httpx_sse", "httpx-sse 0.4 (iter_sse decoders)", parse_httpx_sse),
    ParserPeer("sseclient", "sseclient-py 1.9", parse_sseclient),
    ParserPeer("launchdarkly", "launchdarkly-eventsource 1.7", parse_launchdarkly),
)


def normalise(key: str, events: Iterable[Any]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``(event, data, id)`` per event, and notes on what had to be normalised.

    * ours: ``id`` is the last event id in effect (WHATWG), as in the corpus.
    * httpx-sse: also ``id`` in effect; but its ``SSEDecoder`` dispatches an event with
      empty data on every blank line once an id has been seen (the spec dispatches
      nothing when the data buffer is empty), e.g. after each comment-only heartbeat
      block. Those are dropped here (the corpora have no event with empty data) and
      counted in the notes.
    * sseclient-py: ``id`` is only this block's own ``id:`` line (``None`` otherwise);
      it does not carry the last id forward. Its ids are compared with each expected
      event's own id instead (the other fields as usual).
    * launchdarkly: ``last_event_id`` is the id in effect (``None`` before any id).
    """
    notes: list[str] = []
    if key in ("ours", "ours_compiled"):
        return [(e[0], e[1], e[2]) for e in events], notes
    if key == "httpx_sse":
        rows = [(e.event, e.data, e.id) for e in events]
        kept = [r for r in rows if r[1] != ""]
        if len(kept) != len(rows):
            notes.append(f"dropped {len(rows) - len(kept)} data-less events")
        return kept, notes
    if key == "sseclient":
        notes.append("ids compared with each block's own id line")
        return [(e.event, e.data, e.id or "") for e in events], notes
    if key == "launchdarkly":
        return [(e.event, e.data, e.last_event_id or "") for e in events], notes
    raise ValueError(key)


def expected_rows(key: str, expected: list[Expected]) -> list[tuple[str, str, str]]:
    """The corpus's expected events in the form ``normalise(key, ...)`` produces."""
    if key == "sseclient":
        return [(e.event, e.data, e.own_id or "") for e in expected]
    return [(e.event, e.data, e.id) for e in expected]
