"""Every use of a private or internal Scrapy name, in one place, checked at start.

What scrapy-sse can do with Scrapy's public hooks (signals, middlewares, the download
handler API, ``crawler.get_extension``), it does elsewhere. What has no public hook
is here, grouped in :data:`FEATURES`: each feature names every Scrapy name it needs
and what the crawl does without it. :func:`missing` checks them when the crawl
starts; a feature whose names are not all there is not installed at all (never half
of one), the crawl falls back to Scrapy's own behaviour for it, and one ERROR line
says so with the Scrapy version. Everything else, resuming streams above all, works
the same.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable, Iterable

    from scrapy import Request
    from scrapy.core.engine import ExecutionEngine
    from scrapy.core.scraper import Scraper
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.iweb import IPolicyForHTTPS


logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Feature:
    """What a user gets from a group of private names, and what without them."""

    name: str
    does: str
    fallback: str
    #: ``"module:Attribute.attribute"`` paths that must all resolve.
    needs: tuple[str, ...]


CLOSE_STREAMS = Feature(
    "close_streams",
    "open streams are closed as soon as the spider starts closing",
    "closing waits for open streams to end, as for any request in progress (and a "
    "stream keeps one spider-middleware chain)",
    ("scrapy.core.engine:ExecutionEngine.close_spider_async",),
)
ORDERED_OUTPUT = Feature(
    "ordered_output",
    "a stream's items enter the item pipelines in order, with no worker pool per "
    "stream, and bursts know when their output is done",
    "Scrapy's CONCURRENT_ITEMS workers (items of async pipelines may overlap) and one "
    "spider-middleware chain per stream",
    (
        "scrapy.core.scraper:Scraper.handle_spider_output_async",
        "scrapy.core.scraper:Scraper._process_spidermw_output_async",
        "scrapy.core.scraper:Scraper.handle_spider_error",
        "scrapy.utils.defer:aiter_errback",
    ),
)
BURSTS = Feature(
    "bursts",
    "an idle stream releases its spider-middleware chain (SSE_RELEASE_IDLE_CHAIN)",
    "one spider-middleware chain per stream for its whole life",
    ("scrapy.core.scraper:Scraper.enqueue_scrape", "scrapy.core.engine:_Slot"),
)
SCRAPY_AGENT = Feature(
    "scrapy_agent",
    "streams honour meta['proxy'], CONNECT tunnels and DOWNLOAD_BIND_ADDRESS",
    "a plain Twisted agent: no proxy (a stream with meta['proxy'] fails)",
    (
        "scrapy.core.downloader.handlers.http11:_ScrapyAgent._get_agent",
        "scrapy.core.downloader.handlers.http11:_TunnelingAgent",
    ),
)
TLS_SETTINGS = Feature(
    "tls_settings",
    "streams use Scrapy's TLS settings (DOWNLOAD_TLS_*, DOWNLOADER_CLIENTCONTEXTFACTORY)",
    "the TLS defaults of Twisted (Twisted transport) or aiohttp (reactorless)",
    (
        "scrapy.core.downloader.contextfactory:_load_context_factory_from_settings",
        "scrapy.utils.ssl:_make_ssl_context",
    ),
)
SCRAPY_ERRORS = Feature(
    "scrapy_errors",
    "connection errors of streams carry Scrapy's exception types",
    "Twisted's own exception types",
    ("scrapy.utils._download_handlers:wrap_twisted_exceptions",),
)
QUIET_ITEM_LOG = Feature(
    "quiet_item_log",
    "no 'Scraped from' DEBUG record is built per item when nothing would show it",
    "Scrapy's LogFormatter builds one per item",
    ("scrapy.core.scraper:logger",),
)

FEATURES = (
    CLOSE_STREAMS,
    ORDERED_OUTPUT,
    BURSTS,
    SCRAPY_AGENT,
    TLS_SETTINGS,
    SCRAPY_ERRORS,
    QUIET_ITEM_LOG,
)


def _resolve(path: str) -> Any:
    module_name, _, attributes = path.partition(":")
    value: Any = importlib.import_module(module_name)
    for attribute in attributes.split("."):
        value = getattr(value, attribute)
    return value


def lacks(feature: Feature) -> list[str]:
    """The names of ``feature`` that the running Scrapy lacks."""
    gaps = []
    for path in feature.needs:
        try:
            _resolve(path)
        except (ImportError, AttributeError):
            gaps.append(path)
    return gaps


def missing() -> dict[Feature, list[str]]:
    """The features whose names the running Scrapy lacks, with those names."""
    return {feature: names for feature in FEATURES if (names := lacks(feature))}


def describe_gaps(gaps: dict[Feature, list[str]], scrapy_version: str) -> str:
    """The one ERROR line for features that fall back."""
    parts = [
        f"{feature.name} ({feature.does}) needs {', '.join(names)}: instead, {feature.fallback}"
        for feature, names in gaps.items()
    ]
    return f"scrapy-sse on Scrapy {scrapy_version}, falling back: " + "; ".join(parts)


# -- scrapy_agent, tls_settings, scrapy_errors -------------------------------------------


def make_ssl_context(crawler: Crawler) -> ssl.SSLContext:
    """The ``ssl`` context Scrapy's aiohttp handler builds from the same settings."""
    make: Callable[[Any], ssl.SSLContext] = _resolve("scrapy.utils.ssl:_make_ssl_context")
    return make(crawler.settings)


def load_tls_policy(crawler: Crawler) -> IPolicyForHTTPS:
    """The TLS policy the stock HTTP/1.1 handler would use (settings included)."""
    load: Callable[[Crawler], IPolicyForHTTPS] = _resolve(
        "scrapy.core.downloader.contextfactory:_load_context_factory_from_settings"
    )
    return load(crawler)


def build_twisted_agent(
    request: Request,
    *,
    crawler: Crawler,
    tls_policy: IPolicyForHTTPS,
    pool: HTTPConnectionPool,
    bind_address: Any,
    timeout: float,
) -> tuple[Agent, bool]:
    """A Twisted agent for ``request`` as Scrapy would build it.

    Returns the agent and whether it tunnels through a proxy with CONNECT (the
    ``Proxy-Authorization`` header must then not be sent to the origin).
    """
    from scrapy.core.downloader.handlers.http11 import _ScrapyAgent, _TunnelingAgent

    scrapy_agent = _ScrapyAgent(
        contextFactory=tls_policy,
        connectTimeout=timeout,
        bindAddress=bind_address,
        pool=pool,
        crawler=crawler,
    )
    agent = scrapy_agent._get_agent(request, timeout)
    return agent, isinstance(agent, _TunnelingAgent)


def scrapy_exceptions() -> AbstractContextManager[None]:
    """Turns Twisted's connection errors into Scrapy's, as the stock handlers do."""
    wrap: Callable[[], AbstractContextManager[None]] = _resolve(
        "scrapy.utils._download_handlers:wrap_twisted_exceptions"
    )
    return wrap()


def forget_sent_headers(txresponse: Any) -> None:
    """Drop Twisted's copy of a stream's request headers (about 1 KiB per stream).

    Twisted keeps its request, and so a copy of every request header, until the
    response ends: for a stream, hours later. The headers were written long ago and
    are not read again. (Not a Scrapy name, but the one liberty taken with Twisted's
    objects: without the attribute, the copy is simply kept.)"""
    sent = getattr(txresponse, "request", None)
    if sent is not None and hasattr(sent, "headers"):
        from twisted.web.http_headers import Headers

        sent.headers = Headers()


# -- quiet_item_log ----------------------------------------------------------------------


def scraper_logger_name() -> str:
    """The logger Scrapy's scraper logs "Scraped from" records with."""
    name: str = _resolve("scrapy.core.scraper:logger").name
    return name


# -- close_streams -----------------------------------------------------------------------


def install_close_hook(engine: ExecutionEngine, hook: Callable[[str], Awaitable[None]]) -> None:
    """Run ``hook(reason)`` when the engine starts closing the spider.

    ``close_spider_async`` waits for in-progress requests before it sends any signal,
    and an open stream is an in-progress request: without closing streams first, a
    crawl told to stop would keep streaming. Wrapping the bound method on the engine
    instance covers ``CLOSESPIDER_*``, Ctrl-C (``stop_async``), idle closes and
    ``CloseSpider`` raised in callbacks, which all call it.
    """
    original = engine.close_spider_async

    @functools.wraps(original)
    async def close_spider_async(*, reason: str = "cancelled") -> None:
        await hook(reason)
        await original(reason=reason)

    engine.close_spider_async = close_spider_async  # type: ignore[method-assign]


# -- bursts ------------------------------------------------------------------------------


def scrape_again(engine: ExecutionEngine, response: Response) -> None:
    """Hand ``response`` to the scraper again, as the engine does with a download:
    its callback runs through a new spider-middleware chain (the next burst of an
    idle stream). Once done, the engine looks for its next request at once, as after
    a download (else a crawl whose last stream ended here would notice it is idle
    only at its next 5 s heartbeat)."""
    assert response.request is not None
    done = engine.scraper.enqueue_scrape(response, response.request)

    def next_request(result: Any) -> Any:
        if engine._slot is not None:  # (None once the spider has closed)
            engine._slot.nextcall.schedule()
        return result

    def log_error(failure: Failure) -> None:
        logger.error(
            "Could not hand a stream's next burst to the scraper",
            exc_info=failure.value,
        )

    done.addBoth(next_request)
    done.addErrback(log_error)


# -- ordered_output ----------------------------------------------------------------------


def install_stream_output(
    scraper: Scraper,
    is_stream: Callable[[Any], bool],
    window: int,
    *,
    ordered: bool,
    backlog: Callable[[Any], int],
    output_done: Callable[[Any], None],
) -> Callable[[], None]:
    """Process the output of stream responses in order, ``window`` items at a time,
    and say when all of it has been processed.

    Scrapy runs every response's output through ``CONCURRENT_ITEMS`` (default 100)
    worker tasks that live as long as the callback does, and items of async pipelines
    then overlap out of order. With ``ordered`` (and the asyncio reactor) an item is
    processed in the callback's own task while the stream has nothing else queued
    (``backlog(response)`` is 0: a quiet stream, where latency matters and a task
    would only add cost); while events queue up, items get a task each, at most
    ``window`` in flight, so that Scrapy's per-item round trips (the ``item_scraped``
    signal) overlap instead of costing an event-loop turn each in a row. No task
    outlives its burst. A per-burst FIFO gate lets an item into the item pipelines
    only once the one before it has left them: items reach every pipeline, async ones
    included, in the order they were produced. Without ``ordered``, or with another
    reactor, Scrapy's own processing.

    Returns the function to call, in an item's task, the moment its pipelines are
    done (scrapy-sse's LogFormatter does, as Scrapy reports the item's outcome): the
    next item may then enter them. Without that call an item holds the gate until all
    its processing is done: still in order, with less overlap. Nothing wraps the item
    pipelines, so an item error's traceback shows only Scrapy's and the pipeline's
    frames. ``window == 1`` processes items one by one with no task at all. Other
    responses keep Scrapy's own processing.

    ``output_done(response)`` is called once all of a stream response's output has
    been processed (every item included), on every reactor: where the stream's next
    burst may be arranged, with nothing of this one still running.
    """
    from scrapy.utils.asyncio import is_asyncio_available

    bursts = _Bursts(_MAX_BURSTS)
    ordered = ordered and is_asyncio_available()
    aiter_errback = _resolve("scrapy.utils.defer:aiter_errback")
    original = scraper.handle_spider_output_async
    process = scraper._process_spidermw_output_async

    @functools.wraps(original)
    async def handle_spider_output_async(
        result: Iterable[Any] | AsyncIterator[Any], request: Request, response: Any
    ) -> None:
        if not is_stream(response) or not isinstance(result, AsyncIterator):
            await original(result, request, response)
            return
        try:
            await process_stream_output(result, request, response)
        finally:
            output_done(response)  # (also after a failure: a resting stream is woken)

    async def process_stream_output(
        result: AsyncIterator[Any], request: Request, response: Any
    ) -> None:
        if not ordered:
            await original(result, request, response)
        elif window > 1:
            # (Errors getting the next output are handled inside: no wrapping layer
            # held per stream, none to pass through per item.)
            def on_error() -> None:
                scraper.handle_spider_error(Failure(), request, response)

            await _windowed(
                result,
                window,
                process=process,
                response=response,
                backlog=backlog,
                bursts=bursts,
                on_error=on_error,
            )
        else:
            outputs = aiter_errback(result, scraper.handle_spider_error, request, response)
            async for output in outputs:
                await process(output, response)

    scraper.handle_spider_output_async = handle_spider_output_async  # type: ignore[method-assign]
    return bursts.item_done


#: Streams that may run item tasks at once (see :class:`_Bursts`).
_MAX_BURSTS = 2


class _Bursts:
    """Streams running item tasks, crawl-wide, and how many may at once. When many
    streams are behind the crawl is CPU-bound: overlapping their items only lengthens
    each reactor turn, and Scrapy takes one start request per turn, so opening the
    next streams would stall. ``held`` maps each item task that holds its burst's gate
    to that gate."""

    __slots__ = ("active", "held", "limit")

    def __init__(self, limit: int) -> None:
        self.active = 0
        self.limit = limit
        self.held: dict[asyncio.Task[Any], asyncio.Lock] = {}

    def item_done(self) -> None:
        """The current task's item has left the pipelines: let the next one in."""
        if self.held:
            gate = self.held.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            if gate is not None:
                gate.release()


async def _in_turn(
    gate: asyncio.Lock,
    process: Callable[[Any, Any], Awaitable[None]],
    output: Any,
    response: Any,
    bursts: _Bursts,
) -> None:
    """One item of a burst: its processing starts once the item before it has left
    the pipelines (tasks reach the gate in the order they were created)."""
    await gate.acquire()
    task = asyncio.current_task()
    assert task is not None
    bursts.held[task] = gate
    try:
        await process(output, response)
    finally:
        if bursts.held.pop(task, None) is not None:
            gate.release()


async def _windowed(
    outputs: AsyncIterator[Any],
    window: int,
    *,
    process: Callable[[Any, Any], Awaitable[None]],
    response: Any,
    backlog: Callable[[Any], int],
    bursts: _Bursts,
    on_error: Callable[[], None],
) -> None:
    """Items in the caller's task unless the stream has fallen ``window`` events
    behind; then, until it has caught up, up to ``window`` item tasks, started in
    order, behind one FIFO gate (for a few streams at a time, see :class:`_Bursts`).
    ``on_error`` is called (in the ``except`` block) when getting an output fails.

    A stream that keeps up gains nothing from tasks: each costs more than the turn it
    saves. The burst's gate and task queue exist only during a burst: an idle stream
    holds neither (a deque alone is half a kilobyte)."""
    create_task = asyncio.get_running_loop().create_task
    gate: asyncio.Lock | None = None
    in_flight: deque[asyncio.Task[None]] | None = None
    next_output = outputs.__anext__
    try:
        while True:
            try:
                output = await next_output()
            except StopAsyncIteration:
                break
            except Exception:
                on_error()
                continue
            if in_flight is None:
                if backlog(response) < window or bursts.active >= bursts.limit:
                    await process(output, response)
                    continue
                bursts.active += 1
                gate = asyncio.Lock()
                in_flight = deque()
            assert gate is not None
            in_flight.append(create_task(_in_turn(gate, process, output, response, bursts)))
            if not backlog(response):
                # Caught up: let the burst's tasks finish before waiting for more.
                while in_flight:
                    await in_flight.popleft()
                in_flight = gate = None
                bursts.active -= 1
            elif len(in_flight) >= window:
                await in_flight.popleft()
    finally:
        # Also when the output fails or the callback is cancelled: no item is left
        # running unobserved.
        if in_flight is not None:
            try:
                while in_flight:
                    await in_flight.popleft()
            finally:
                bursts.active -= 1
