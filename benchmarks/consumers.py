"""End-to-end consumers: each runs in its own process, reads the loopback stream with one
client library, and prints one JSON line with what it received and what it cost.

Why one process per consumer: peak RSS (``ru_maxrss``) and CPU time
(``getrusage(RUSAGE_SELF)``) are per process, a Twisted reactor cannot be restarted,
and the server gets its own core. Each module is imported only by the consumer that
needs it, so an httpx consumer's RSS does not include Scrapy.

The measured window runs from just before the request is sent (clients already
constructed, as a long-running program would have them) to the last event in the
consumer's hands: the end of the event loop for the plain clients, the N-th item in the
pipeline for the crawls (``start()`` opens the window there, so crawler and engine
start-up are excluded; the crawl's shutdown is too). CPU time over the same window is
user+system of the consumer process, all its threads included.

A consumer only reports what it saw: event count and last ``(event, data, id)``. The
orchestrator compares that with the corpus; a consumer that saw anything else gets no
speed.

Run: ``python -m benchmarks.consumers NAME --url URL --events N [--corpus C]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CONSUMERS", "Consumer"]


def _peak_rss_kib() -> int:
    """Peak RSS of this process image, in KiB.

    ``VmHWM`` from ``/proc/self/status`` rather than ``ru_maxrss``: on Linux
    ``ru_maxrss`` survives ``execve``, so a child spawned by a big parent (the
    orchestrator holds the parse corpora) would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Meter:
    """Wall and CPU time between ``start()`` and ``stop()`` (the first stop wins)."""

    wall: float = 0.0
    cpu: float = 0.0
    _t0: float = 0.0
    _c0: float = 0.0
    stopped: bool = False

    def start(self) -> None:
        self._c0 = _cpu()
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        if not self.stopped:
            self.wall = time.perf_counter() - self._t0
            self.cpu = _cpu() - self._c0
            self.stopped = True


@dataclass
class Outcome:
    events: int = 0
    last: tuple[str, str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


METER = Meter()


def _split_url(url: str) -> tuple[str, int]:
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


# -- plain clients -------------------------------------------------------------------


def raw_drain(url: str, args: argparse.Namespace) -> Outcome:
    """The loopback ceiling: a blocking socket that reads the response and parses
    nothing. Reports bytes, not events."""
    import socket

    host, port = _split_url(url)
    buf = bytearray(256 * 1024)
    view = memoryview(buf)
    total = 0
    tail = b""
    METER.start()
    with socket.create_connection((host, port)) as sock:
        sock.sendall(
            f"GET /stream HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        while True:
            n = sock.recv_into(buf)
            if not n:
                break
            total += n
            tail = (tail + bytes(view[:n]))[-64:] if n < 64 else bytes(view[n - 64 : n])
    METER.stop()
    return Outcome(0, None, {"bytes": total, "tail": tail.hex()})


def httpx_sse_consumer(url: str, args: argparse.Namespace) -> Outcome:
    """httpx ``AsyncClient`` + httpx-sse ``aconnect_sse`` / ``aiter_sse`` (asyncio)."""
    import asyncio

    import httpx
    from httpx_sse import aconnect_sse

    out = Outcome()

    async def main() -> None:
        async with httpx.AsyncClient(timeout=None) as client:
            METER.start()
            async with aconnect_sse(client, "GET", url) as source:
                async for sse in source.aiter_sse():
                    out.events += 1
                    last = sse
            METER.stop()
        if out.events:
            out.last = (last.event, last.data, last.id)

    asyncio.run(main())
    return out


def _sseclient(url: str, big_reads: bool) -> Outcome:
    import requests
    import sseclient

    out = Outcome()
    session = requests.Session()
    METER.start()
    response = session.get(url, stream=True, headers={"Accept": "text/event-stream"})
    # The documented form passes the response itself, which requests iterates in
    # 128-byte reads; iter_content(None) hands over reads as they arrive.
    source: Any = response.iter_content(chunk_size=None) if big_reads else response
    last = None
    for event in sseclient.SSEClient(source).events():
        out.events += 1
        last = event
    METER.stop()
    response.close()
    if last is not None:
        out.last = (last.event, last.data, last.id or "")
    return out


def sseclient_consumer(url: str, args: argparse.Namespace) -> Outcome:
    """requests + sseclient-py, as its README shows: ``SSEClient(response)``."""
    return _sseclient(url, big_reads=False)


def sseclient_big_consumer(url: str, args: argparse.Namespace) -> Outcome:
    """requests + sseclient-py over ``response.iter_content(chunk_size=None)``."""
    return _sseclient(url, big_reads=True)


def launchdarkly_consumer(url: str, args: argparse.Namespace) -> Outcome:
    """launchdarkly-eventsource ``SSEClient`` (urllib3), default error strategy: a
    stream the server ends normally ends the iteration (no reconnect)."""
    from ld_eventsource import SSEClient
    from ld_eventsource.config import ConnectStrategy, ErrorStrategy

    out = Outcome()
    client = SSEClient(
        connect=ConnectStrategy.http(url), error_strategy=ErrorStrategy.always_fail()
    )
    last = None
    METER.start()
    for event in client.events:
        out.events += 1
        last = event
    METER.stop()
    client.close()
    if last is not None:
        out.last = (last.event, last.data, last.last_event_id or "")
    return out


def twisted_upper_bound(url: str, args: argparse.Namespace) -> Outcome:
    """Twisted's HTTP/1.1 client (``Agent``, the one scrapy-sse's transport uses) with
    ``SSEParser`` fed once per reactor turn: no Scrapy, no stream queue, no callbacks. On the
    asyncio reactor, Scrapy's default, so the gap to the crawl is Scrapy's and ours."""
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor as installed
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Protocol
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.http_headers import Headers

    from scrapy_sse import SSEParser

    out = Outcome()
    done: Deferred[None] = Deferred()

    class Body(Protocol):
        """The HTTP chunks of one reactor turn parsed at once, as the transport does."""

        def __init__(self) -> None:
            self.parser = SSEParser()
            self.last: Any = None
            self.pieces: list[bytes] | None = None

        def dataReceived(self, data: bytes) -> None:
            if self.pieces is None:
                self.pieces = [data]
                reactor.callLater(0, self.flush)
            else:
                self.pieces.append(data)

        def flush(self) -> None:
            pieces, self.pieces = self.pieces, None
            if pieces:
                for event in self.parser.feed(b"".join(pieces)):
                    out.events += 1
                    self.last = event

        def connectionLost(self, reason: Any = None) -> None:
            self.flush()
            self.parser.close()
            METER.stop()
            out.extra["end"] = type(getattr(reason, "value", None)).__name__
            if self.last is not None:
                out.last = (self.last[0], self.last[1], self.last[2])
            done.callback(None)

    def failed(failure: Any) -> None:
        out.extra["error"] = failure.getErrorMessage()
        METER.stop()
        done.callback(None)

    def deliver(response: Any) -> None:
        response.deliverBody(Body())

    def stop(_: object) -> None:
        reactor.stop()

    reactor: Any = installed
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    METER.start()
    d = agent.request(b"GET", url.encode(), Headers({b"Accept": [b"text/event-stream"]}))
    d.addCallback(deliver)
    d.addErrback(failed)
    done.addBoth(stop)
    reactor.run()
    return out


# -- Scrapy crawls ----------------------------------------------------------------------


def _crawl(kind: str, url: str, args: argparse.Namespace) -> Outcome:
    from .crawls import run_crawl

    outcome: Outcome = run_crawl(
        kind,
        url=url,
        events=args.events,
        corpus=args.corpus,
        meter=METER,
        outcome_cls=Outcome,
        profile=args.profile,
    )
    return outcome


def scrapy_plain(url: str, args: argparse.Namespace) -> Outcome:
    """Stock Scrapy: a callback yields N prebuilt dicts into a no-op pipeline."""
    return _crawl("plain", url, args)


def scrapy_ceiling(url: str, args: argparse.Namespace) -> Outcome:
    """The item ceiling of a scrapy-sse crawl: the add-on installed, N prebuilt dicts
    from an async generator callback (what scrapy-sse hands Scrapy), no stream."""
    return _crawl("ceiling", url, args)


def scrapy_sse_items(url: str, args: argparse.Namespace) -> Outcome:
    """scrapy-sse in a real crawl: ``SSERequest`` without callback -> SSEEventItem."""
    return _crawl("items", url, args)


def scrapy_sse_callback(url: str, args: argparse.Namespace) -> Outcome:
    """scrapy-sse in a real crawl: ``SSERequest(callback=...)`` yielding one dict."""
    return _crawl("callback", url, args)


def scrapy_sse_batch(url: str, args: argparse.Namespace) -> Outcome:
    """scrapy-sse in a real crawl, batch delivery: one SSEBatch per pipeline call."""
    return _crawl("batch", url, args)


@dataclass(frozen=True)
class Consumer:
    key: str
    label: str
    run: Callable[[str, argparse.Namespace], Outcome]
    kind: str  # "baseline", "peer", "ours", "ceiling"


CONSUMERS: tuple[Consumer, ...] = (
    Consumer("raw_drain", "raw socket drain (no HTTP/SSE parsing)", raw_drain, "baseline"),
    Consumer("httpx_sse", "httpx + httpx-sse aconnect_sse", httpx_sse_consumer, "peer"),
    Consumer(
        "sseclient", "requests + sseclient-py (README: 128 B reads)", sseclient_consumer, "peer"
    ),
    Consumer(
        "sseclient_big",
        "requests + sseclient-py (iter_content(None))",
        sseclient_big_consumer,
        "peer",
    ),
    Consumer("launchdarkly", "launchdarkly-eventsource SSEClient", launchdarkly_consumer, "peer"),
    Consumer(
        "twisted_parser",
        "Twisted Agent + SSEParser (no Scrapy)",
        twisted_upper_bound,
        "bound",
    ),
    Consumer("scrapy_plain", "stock Scrapy, N dicts from a list", scrapy_plain, "ceiling"),
    Consumer(
        "scrapy_ceiling",
        "Scrapy + SSEAddon, N dicts from an async callback (item ceiling)",
        scrapy_ceiling,
        "ceiling",
    ),
    Consumer("scrapy_sse_items", "scrapy-sse crawl, SSEEventItem items", scrapy_sse_items, "ours"),
    Consumer(
        "scrapy_sse_callback",
        "scrapy-sse crawl, per-event callback -> dict",
        scrapy_sse_callback,
        "ours",
    ),
    Consumer(
        "scrapy_sse_batch",
        "scrapy-sse crawl, batch delivery (500 events/item)",
        scrapy_sse_batch,
        "ours",
    ),
)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one end-to-end consumer.")
    parser.add_argument("consumer", choices=[c.key for c in CONSUMERS])
    parser.add_argument("--url", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--corpus", default="openai")
    parser.add_argument("--profile", default="", help="write cProfile stats of the run here")
    args = parser.parse_args()
    consumer = next(c for c in CONSUMERS if c.key == args.consumer)
    outcome = consumer.run(args.url, args)
    if not METER.stopped:
        METER.stop()
    result = {
        "consumer": consumer.key,
        "events": outcome.events,
        "last": list(outcome.last) if outcome.last else None,
        "wall_s": METER.wall,
        "cpu_s": METER.cpu,
        "total_cpu_s": _cpu(),
        "maxrss_kib": _peak_rss_kib(),
        **outcome.extra,
    }
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
