"""Scrapy's private names: each is checked at start, and a crawl on a Scrapy without one
falls back for that feature alone, says so in one ERROR line, and still resumes.

The crawls hide one name at a time (``tests.crawl_main.hide``), as a Scrapy release
that moved it would; the signature checks fail loudly when a release changes how a
name is called, which the start-up check cannot see.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import scrapy

from scrapy_sse import _scrapy_private

from .crawl import run_crawl
from .servers.sse_server import SSEServer

NAMES = [(feature, path) for feature in _scrapy_private.FEATURES for path in feature.needs]


def test_the_running_scrapy_has_every_name() -> None:
    assert _scrapy_private.missing() == {}


@pytest.mark.parametrize(("feature", "path"), NAMES, ids=[path for _, path in NAMES])
def test_a_missing_name_disables_its_feature_alone_and_streams_still_resume(
    sse_server: SSEServer, tmp_path: Path, feature: _scrapy_private.Feature, path: str
) -> None:
    # The server keeps the stream open 1 s after its events, then ends it: without the
    # close hook a closing crawl waits for that (the documented fallback).
    url = sse_server.url(f"/stream?n=12&hold=1&delay=0.005&key=hide-{path}")
    settings = {
        "JOBDIR": str(tmp_path / "job"),
        "TEST_HIDE": [path],
    }
    first = run_crawl(
        "PerEvent", args={"url": url}, settings={**settings, "CLOSESPIDER_ITEMCOUNT": 5}
    )
    assert first.returncode == 0, first.log
    errors = [line for line in first.log.splitlines() if " ERROR: " in line]
    assert len(errors) == 1, first.log
    assert f"scrapy-sse on Scrapy {scrapy.__version__}, falling back: " in errors[0]
    assert (
        f"{feature.name} ({feature.does}) needs {path}: instead, {feature.fallback}" in (errors[0])
    )
    assert errors[0].count(" needs ") == 1  # that feature alone
    seen = [int(item["id"]) for item in first.items]
    second = run_crawl("PerEvent", args={"url": url}, settings=settings)
    assert second.returncode == 0, second.log
    assert "Resuming SSE stream" in second.log
    assert seen + [int(item["id"]) for item in second.items] == list(range(1, 13))


@pytest.mark.parametrize(
    "hidden",
    [
        "scrapy.core.scraper:Scraper.enqueue_scrape",
        # (A resting stream is no request in progress: only the close hook stops it.)
        "scrapy.core.engine:ExecutionEngine.close_spider_async",
        # (Only the ordered output tells when all of a burst's output is processed.)
        "scrapy.core.scraper:Scraper.handle_spider_output_async",
    ],
)
def test_without_bursts_a_stream_keeps_one_chain(sse_server: SSEServer, hidden: str) -> None:
    result = run_crawl(
        "PerEvent",
        args={"url": sse_server.url("/stream?n=3&delay=0.3&ascii=1")},
        settings={
            "SPIDER_MIDDLEWARES": {"tests.crawl_main.ChainProbeMiddleware": 500},
            "SSE_RELEASE_IDLE_CHAIN": 0.05,
            "TEST_HIDE": [hidden],
        },
    )
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == ["1", "2", "3"]
    assert result.stat("test/stream_chains_built") == 1


def test_without_the_scrapy_agent_a_proxied_stream_fails_clearly(sse_server: SSEServer) -> None:
    result = run_crawl(
        "PerEvent",
        args={"url": sse_server.url("/stream?n=3"), "proxy": "http://127.0.0.1:9"},
        settings={"TEST_HIDE": ["scrapy.core.downloader.handlers.http11:_TunnelingAgent"]},
    )
    assert result.returncode == 0, result.log
    # (The spider's errback records what it got.)
    assert [item["error"] for item in result.items] == ["NotSupported"]
    assert "through a proxy: this Scrapy lacks the private agent" in result.items[0]["message"]


# -- how the names are called (a rename is caught above; a changed call here) ----------


def test_http11_agent_factory_is_called_as_before() -> None:
    from scrapy.core.downloader.handlers import http11

    params = inspect.signature(http11._ScrapyAgent.__init__).parameters
    for name in ("contextFactory", "connectTimeout", "bindAddress", "pool", "crawler"):
        assert name in params, f"_ScrapyAgent no longer takes {name!r}"
    assert list(inspect.signature(http11._ScrapyAgent._get_agent).parameters) == [
        "self",
        "request",
        "timeout",
    ]


def test_engine_close_and_scraper_hooks_are_called_as_before() -> None:
    from scrapy.core.engine import ExecutionEngine
    from scrapy.core.scraper import Scraper

    close = inspect.signature(ExecutionEngine.close_spider_async).parameters
    assert close["reason"].kind is inspect.Parameter.KEYWORD_ONLY
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
    assert list(inspect.signature(Scraper.enqueue_scrape).parameters) == [
        "self",
        "result",
        "request",
    ]
