"""Batch delivery for high-rate feeds, and the per-item log record the add-on skips."""

from __future__ import annotations

import logging

from scrapy.utils.test import get_crawler

from scrapy_sse.logformatter import SSELogFormatter, debug_is_emitted

from .crawl import run_crawl
from .servers.sse_server import SSEServer


def test_batches_carry_every_event_in_order_and_respect_size(sse_server: SSEServer) -> None:
    url = sse_server.url("/stream?n=1000&chunk=0&key=batch1")
    result = run_crawl("Batches", args={"url": url, "size": "64"})
    assert result.returncode == 0, result.log
    ids = [int(i) for item in result.items for i in item["ids"]]
    assert ids == list(range(1, 1001))
    assert max(item["size"] for item in result.items) == 64
    assert result.items[0]["url"] == url


def test_an_event_never_waits_longer_than_the_interval(sse_server: SSEServer) -> None:
    # Events 0.3 s apart, batches of up to 100 that wait at most 0.05 s: every batch
    # must leave with its single event instead of waiting for the next one.
    url = sse_server.url("/stream?n=4&delay=0.3&key=batch2")
    result = run_crawl("Batches", args={"url": url, "size": "100", "interval": "0.05"})
    assert result.returncode == 0, result.log
    assert [item["ids"] for item in result.items] == [["1"], ["2"], ["3"], ["4"]]


def test_batches_without_callback_reach_pipelines_as_one_list(sse_server: SSEServer) -> None:
    url = sse_server.url("/stream?n=300&chunk=0&key=batch3")
    result = run_crawl("Batches", args={"url": url, "size": "100", "callback": "0"})
    assert result.returncode == 0, result.log
    assert [int(item["id"]) for item in result.items] == list(range(1, 301))
    # The pipeline got SSEEvent batches; rows have the columns of an SSEEventItem.
    assert {item["_type"] for item in result.items} == {"SSEEvent"}
    assert result.items[0]["json"] == {"seq": 1, "text": "é€😀"}
    assert result.items[0]["url"] == url
    assert all(item["_batch"] and item["_batch"] <= 100 for item in result.items)
    assert result.stat("item_scraped_count") < 300  # one pipeline call per batch


def test_scraped_log_record_only_when_someone_logs_debug() -> None:
    # An isolated logger tree (pytest's own capture handler sits on the root logger).
    parent = logging.getLogger("sse_logtest")
    parent.propagate = False
    parent.setLevel(logging.DEBUG)
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO)
    parent.addHandler(handler)
    scraper_logger = logging.getLogger("sse_logtest.scraper")
    spider = get_crawler().spidercls("s")
    try:
        assert not debug_is_emitted(scraper_logger)
        assert SSELogFormatter(scraper_logger).scraped({"a": 1}, None, spider) is None
        handler.setLevel(logging.DEBUG)
        assert debug_is_emitted(scraper_logger)
        logged = SSELogFormatter(scraper_logger).scraped({"a": 1}, None, spider)
        assert logged is not None
        assert logged["level"] == logging.DEBUG
    finally:
        parent.removeHandler(handler)


def test_debug_crawl_still_logs_scraped_items(sse_server: SSEServer) -> None:
    url = sse_server.url("/stream?n=3&key=debuglog")
    result = run_crawl("PerEvent", args={"url": url}, settings={"LOG_LEVEL": "DEBUG"})
    assert result.returncode == 0, result.log
    assert result.log.count("Scraped from") == 3
