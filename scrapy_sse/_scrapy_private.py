"""Every use of a private Scrapy name, in one place.

Scrapy keeps proxy, CONNECT tunnelling, TLS policy and bind address handling in private
http11 code. Reusing it means a stream honours exactly the settings and ``meta`` keys a
user already relies on (``meta["proxy"]``, ``DOWNLOADER_CLIENTCONTEXTFACTORY``,
``DOWNLOAD_BIND_ADDRESS``...). ``tests/test_scrapy_private.py`` fails loudly when a
Scrapy release moves any of these.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from scrapy.utils._download_handlers import wrap_twisted_exceptions

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable

    from scrapy import Request
    from scrapy.core.engine import ExecutionEngine
    from scrapy.crawler import Crawler
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.iweb import IPolicyForHTTPS

__all__ = [
    "build_twisted_agent",
    "install_close_hook",
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
