"""Every use of a private Scrapy name, in one place.

Scrapy keeps proxy, CONNECT tunnelling, TLS policy and bind address handling in private
http11 code. Reusing it means a stream honours exactly the settings and ``meta`` keys a
user already relies on (``meta["proxy"]``, ``DOWNLOADER_CLIENTCONTEXTFACTORY``,
``DOWNLOAD_BIND_ADDRESS``...). ``tests/test_scrapy_private.py`` fails loudly when a
Scrapy release moves any of these.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from scrapy.utils._download_handlers import wrap_twisted_exceptions

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


def install_stream_output(
    scraper: Scraper, is_stream: Callable[[Any], bool], concurrency: int
) -> None:
    """Process the output of stream responses with ``concurrency`` workers.

    Scrapy runs every response's output through ``CONCURRENT_ITEMS`` (default 100)
    worker tasks that live as long as the callback does. For a page that is a moment;
    for a stream it is hours, and 100 idle tasks per open stream cost about 150 KiB
    each, so 10,000 streams would need gigabytes. With ``concurrency == 1`` the output
    of a stream is processed in order, in the callback's own task, with no extra task
    at all: items of one stream reach the pipelines in the order they were produced.
    Other responses keep Scrapy's own processing. Only with the asyncio reactor; with
    another reactor Scrapy's code runs unchanged.
    """
    from scrapy.utils.asyncio import _parallel_asyncio, is_asyncio_available
    from scrapy.utils.defer import aiter_errback, iter_errback

    if not is_asyncio_available():
        return
    original = scraper.handle_spider_output_async
    process = scraper._process_spidermw_output_async

    @functools.wraps(original)
    async def handle_spider_output_async(
        result: Iterable[Any] | AsyncIterator[Any], request: Request, response: Any
    ) -> None:
        if not is_stream(response):
            await original(result, request, response)
            return
        it: Iterable[Any] | AsyncIterator[Any]
        if isinstance(result, AsyncIterator):
            it = aiter_errback(result, scraper.handle_spider_error, request, response)
        else:
            it = iter_errback(result, scraper.handle_spider_error, request, response)
        if concurrency > 1:
            await _parallel_asyncio(it, concurrency, process, response)
            return
        if isinstance(it, AsyncIterator):
            async for output in it:
                await process(output, response)
        else:
            for output in it:
                await process(output, response)

    scraper.handle_spider_output_async = handle_spider_output_async  # type: ignore[method-assign]
