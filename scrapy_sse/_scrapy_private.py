"""Every use of a private Scrapy name, in one place.

Scrapy keeps proxy, CONNECT tunnelling, TLS policy and bind address handling in private
http11 code. Reusing it means a stream honours exactly the settings and ``meta`` keys a
user already relies on (``meta["proxy"]``, ``DOWNLOADER_CLIENTCONTEXTFACTORY``,
``DOWNLOAD_BIND_ADDRESS``...). ``tests/test_scrapy_private.py`` fails loudly when a
Scrapy release moves any of these.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from scrapy.utils._download_handlers import wrap_twisted_exceptions
from scrapy.utils.asyncgen import as_async_generator
from twisted.python.failure import Failure

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable, Iterable

    from scrapy import Request
    from scrapy.core.engine import ExecutionEngine
    from scrapy.core.scraper import Scraper
    from scrapy.crawler import Crawler
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.iweb import IPolicyForHTTPS

__all__ = [
    "build_twisted_agent",
    "install_close_hook",
    "install_released_chains",
    "install_stream_output",
    "load_tls_policy",
    "make_ssl_context",
    "wrap_twisted_exceptions",
]


def make_ssl_context(crawler: Crawler) -> ssl.SSLContext:
    """The ``ssl`` context Scrapy's aiohttp handler builds from the same settings."""
    from scrapy.utils.ssl import _make_ssl_context

    return _make_ssl_context(crawler.settings)


def load_tls_policy(crawler: Crawler) -> IPolicyForHTTPS:
    """The TLS policy the stock HTTP/1.1 handler would use (settings included)."""
    from scrapy.core.downloader.contextfactory import _load_context_factory_from_settings

    return _load_context_factory_from_settings(crawler)


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


def install_released_chains(
    scraper: Scraper,
    is_stream: Callable[[Any], bool],
    idle: float,
    ready: Callable[[Any], bool] = lambda response: False,
) -> None:
    """Build a stream's spider-middleware chain per burst of output, released while the
    stream is idle (see :mod:`scrapy_sse.idle_chain`). Scrapy builds the chain in
    ``SpiderMiddlewareManager._process_callback_output``, once per response: wrapping
    it on the crawl's instance is the one place where each burst can get its own."""
    from scrapy.utils.asyncio import is_asyncio_available

    from .idle_chain import released_chains

    if not is_asyncio_available():
        return  # (the parked step is driven by the asyncio loop; Twisted's has none)
    spidermw = scraper.spidermw
    original = spidermw._process_callback_output

    @functools.wraps(original)
    async def _process_callback_output(response: Any, result: AsyncIterator[Any]) -> Any:
        if not is_stream(response):
            return await original(response, result)
        return released_chains(original, response, result, idle, ready)

    spidermw._process_callback_output = _process_callback_output  # type: ignore[method-assign]


#: The per-stream gate of each task that carries one stream item (looked up by task, not
#: inherited through the context: requests a stream callback yields are downloaded and
#: their items processed outside the stream's order).
_item_gates: dict[asyncio.Task[Any], asyncio.Lock] = {}


def install_stream_output(
    scraper: Scraper,
    is_stream: Callable[[Any], bool],
    window: int,
    *,
    ordered: bool = True,
    backlog: Callable[[Any], int] = lambda response: 0,
) -> None:
    """Process the output of stream responses in order, ``window`` items at a time.

    Scrapy runs every response's output through ``CONCURRENT_ITEMS`` (default 100)
    worker tasks that live as long as the callback does. For a page that is a moment;
    for a stream it is hours, and 100 idle tasks per open stream cost about 150 KiB
    each, so 10,000 streams would need gigabytes. Here an item is processed in the
    callback's own task while the stream has nothing else queued (``backlog(response)``
    is 0: a quiet stream, where latency matters and a task would only add cost); while
    events queue up, items get a task each, at most ``window`` in flight, so the
    per-item round trips of Scrapy's ``item_scraped`` signal overlap instead of costing
    an event-loop turn each in a row. No task outlives its burst. With ``ordered``, a
    per-stream FIFO lock around the item pipeline chain lets an item into the
    pipelines only once the one before it has left them: items reach every pipeline,
    async ones included, in the order they were produced. ``window == 1`` processes
    items one by one with no task at all; ``ordered=False`` is Scrapy's own worker
    pool (slow async pipelines overlap, order is not kept). Other responses keep
    Scrapy's own processing. Only with the asyncio reactor and the stock async item
    processor; otherwise items are processed one by one.
    """
    from scrapy.utils.asyncio import _parallel_asyncio, is_asyncio_available
    from scrapy.utils.defer import aiter_errback, iter_errback

    if not is_asyncio_available():
        return
    original = scraper.handle_spider_output_async
    process = scraper._process_spidermw_output_async
    if ordered and window > 1 and not _gate_pipelines(scraper):
        window = 1
    bursts = _Bursts(_MAX_BURSTS)

    @functools.wraps(original)
    async def handle_spider_output_async(
        result: Iterable[Any] | AsyncIterator[Any], request: Request, response: Any
    ) -> None:
        if not is_stream(response):
            await original(result, request, response)
            return
        if ordered and window > 1 and isinstance(result, AsyncIterator):
            # (Errors getting the next output are handled inside: no wrapping layer
            # held per stream, none to pass through per item.)
            def on_error() -> None:
                scraper.handle_spider_error(Failure(), request, response)

            await _windowed(
                result, window, process, response, backlog=backlog, bursts=bursts, on_error=on_error
            )
            return
        it: Iterable[Any] | AsyncIterator[Any]
        if isinstance(result, AsyncIterator):
            it = aiter_errback(result, scraper.handle_spider_error, request, response)
        else:
            it = iter_errback(result, scraper.handle_spider_error, request, response)
        if window == 1:
            if isinstance(it, AsyncIterator):
                async for output in it:
                    await process(output, response)
            else:
                for output in it:
                    await process(output, response)
        elif ordered:
            await _windowed(it, window, process, response, backlog=backlog, bursts=bursts)
        else:
            await _parallel_asyncio(it, window, process, response)

    scraper.handle_spider_output_async = handle_spider_output_async  # type: ignore[method-assign]


#: Streams that may run item tasks at once (see :class:`_Bursts`).
_MAX_BURSTS = 2


class _Bursts:
    """Streams running item tasks, crawl-wide, and how many may at once. When many
    streams are behind the crawl is CPU-bound: overlapping their items only lengthens
    each reactor turn, and Scrapy takes one start request per turn, so opening the
    next streams would stall."""

    __slots__ = ("active", "limit")

    def __init__(self, limit: int) -> None:
        self.active = 0
        self.limit = limit


async def _windowed(
    it: Iterable[Any] | AsyncIterator[Any],
    window: int,
    process: Callable[[Any, Any], Awaitable[None]],
    response: Any,
    *,
    backlog: Callable[[Any], int],
    bursts: _Bursts,
    on_error: Callable[[], None] | None = None,
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

    async def finish_oldest(in_flight: deque[asyncio.Task[None]]) -> None:
        task = in_flight.popleft()
        try:
            await task
        finally:
            del _item_gates[task]

    # (A stream callback's output is an async iterator already: no wrapping layer.)
    outputs = it if isinstance(it, AsyncIterator) else as_async_generator(it)
    next_output = outputs.__anext__
    try:
        while True:
            try:
                output = await next_output()
            except StopAsyncIteration:
                break
            except Exception:
                if on_error is None:
                    raise
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
            # Tasks start in the order they are created, so each reaches the gate
            # before the next one exists.
            task: asyncio.Task[None] = create_task(process(output, response))  # type: ignore[arg-type]
            _item_gates[task] = gate
            in_flight.append(task)
            del task  # (the frame must not keep the last one alive while idle)
            if not backlog(response):
                # Caught up: let the burst's tasks finish before waiting for more.
                while in_flight:
                    await finish_oldest(in_flight)
                in_flight = gate = None
                bursts.active -= 1
            elif len(in_flight) >= window:
                await finish_oldest(in_flight)
    finally:
        # Also when the output fails or the callback is cancelled: no item is left
        # running unobserved.
        if in_flight is not None:
            while in_flight:
                await finish_oldest(in_flight)
            bursts.active -= 1


def _gate_pipelines(scraper: Scraper) -> bool:
    """Wrap the item processor so that a stream's items pass it one at a time, in
    order; ``False`` when the processor is not the async kind this can wrap."""
    itemproc = scraper.itemproc
    if not scraper._itemproc_has_async.get("process_item"):
        return False
    if getattr(itemproc, "_scrapy_sse_gated", False):
        return True
    original = itemproc.process_item_async

    @functools.wraps(original)
    async def process_item_async(item: Any) -> Any:
        task = asyncio.current_task()
        gate = None if task is None else _item_gates.get(task)
        if gate is None:
            return await original(item)
        async with gate:
            return await original(item)

    itemproc.process_item_async = process_item_async  # type: ignore[method-assign]
    itemproc._scrapy_sse_gated = True  # type: ignore[attr-defined]
    return True
