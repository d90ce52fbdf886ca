"""Fails loudly when a Scrapy release moves a private name scrapy-sse relies on.

Each check names the private piece and what breaks for users without it.
"""

from __future__ import annotations

import inspect

import pytest
from scrapy.utils.test import get_crawler

from scrapy_sse import _scrapy_private


def test_http11_agent_factory_still_exists() -> None:
    # Proxies, CONNECT tunnels and bind addresses for streams come from here.
    from scrapy.core.downloader.handlers import http11

    assert hasattr(http11, "_ScrapyAgent"), "http11._ScrapyAgent is gone"
    assert hasattr(http11, "_TunnelingAgent"), "http11._TunnelingAgent is gone"
    params = inspect.signature(http11._ScrapyAgent.__init__).parameters
    for name in ("contextFactory", "connectTimeout", "bindAddress", "pool", "crawler"):
        assert name in params, f"_ScrapyAgent no longer takes {name!r}"
    assert list(inspect.signature(http11._ScrapyAgent._get_agent).parameters) == [
        "self",
        "request",
        "timeout",
    ]


def test_tls_helpers_still_exist() -> None:
    from scrapy.core.downloader import contextfactory
    from scrapy.utils import ssl

    assert callable(contextfactory._load_context_factory_from_settings)
    assert callable(ssl._make_ssl_context)
    crawler = get_crawler()
    assert _scrapy_private.load_tls_policy(crawler) is not None
    assert _scrapy_private.make_ssl_context(crawler) is not None


def test_engine_close_spider_async_is_wrappable() -> None:
    # Shutdown closes streams before the engine waits for in-progress requests.
    from scrapy.core.engine import ExecutionEngine

    params = inspect.signature(ExecutionEngine.close_spider_async).parameters
    assert "reason" in params
    assert params["reason"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("name", ["wrap_twisted_exceptions"])
def test_download_handler_utils_still_exist(name: str) -> None:
    from scrapy.utils import _download_handlers

    assert callable(getattr(_download_handlers, name))


def test_scraper_output_hooks_still_exist() -> None:
    # Stream output is processed without Scrapy's per-response worker pool.
    from scrapy.core.scraper import Scraper
    from scrapy.utils import asyncio as scrapy_asyncio
    from scrapy.utils import defer

    assert list(inspect.signature(Scraper.handle_spider_output_async).parameters) == [
        "self",
        "result",
        "request",
        "response",
    ]
    assert list(inspect.signature(Scraper._process_spidermw_output_async).parameters) == [
        "self",
        "output",
        "response",
    ]
    assert callable(scrapy_asyncio._parallel_asyncio)
    assert callable(defer.aiter_errback)
    assert callable(defer.iter_errback)


def test_item_processor_is_gateable() -> None:
    # A stream's items enter the pipelines in order while several are in flight: the
    # gate wraps the async item processor, which the scraper must still call per item.
    from scrapy.core.engine import ExecutionEngine
    from scrapy.pipelines import ItemPipelineManager

    crawler = get_crawler()
    crawler.spider = crawler._create_spider("gate")
    crawler.engine = ExecutionEngine(crawler, lambda _: None)
    scraper = crawler.engine.scraper
    assert scraper._itemproc_has_async == {
        "open_spider": True,
        "close_spider": True,
        "process_item": True,
    }
    assert isinstance(scraper.itemproc, ItemPipelineManager)
    assert list(inspect.signature(scraper.itemproc.process_item_async).parameters) == ["item"]
    assert "self.itemproc.process_item_async(item)" in inspect.getsource(
        type(scraper).start_itemproc_async
    )
    assert _scrapy_private._gate_pipelines(scraper)
    assert scraper.itemproc._scrapy_sse_gated  # type: ignore[attr-defined]


def test_callback_output_chain_is_built_in_one_wrappable_method() -> None:
    # A stream's spider-middleware chain is built per burst (idle streams hold none):
    # the manager must still build the whole chain for a callback's output in
    # _process_callback_output(response, result), awaited by scrape_response_async.
    from scrapy.core.spidermw import SpiderMiddlewareManager

    method = SpiderMiddlewareManager._process_callback_output
    assert inspect.iscoroutinefunction(method)
    assert list(inspect.signature(method).parameters) == ["self", "response", "result"]
    assert "self._process_callback_output(response, ait)" in inspect.getsource(
        SpiderMiddlewareManager.scrape_response_async
    )
