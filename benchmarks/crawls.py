"""The Scrapy crawls of the end-to-end benchmark, run in a consumer process.

Why these: ``plain`` is stock Scrapy with no SSE at all (no add-on), yielding the same
number of dicts from a list that is already in memory, from a plain generator callback:
what any spider gets from Scrapy on this machine. ``ceiling`` is the same list yielded
from an ``async def`` generator callback (what scrapy-sse's dispatch hands Scrapy) in a
crawl with ``SSEAddon`` installed, so every crawl-wide setting the add-on changes (its
log formatter, say) applies to it too: no stream can push more items per second
through Scrapy's scraper and item pipelines in that crawl, so it is the ceiling the
scrapy-sse rows are read against. ``items`` (``SSERequest`` without callback, one
``SSEEventItem`` per event, which also parses ``data`` as JSON), ``callback`` (a
per-event callback yielding a dict) and ``batch`` (batch delivery: lists of up to 500
``SSEEventItem``, one pipeline call each) are scrapy-sse as users run it, through the
add-on, a real download handler, the stream queue and the item pipeline.

All of them use a no-op pipeline that counts, keeps the last item and stops the meter at
the N-th item, and Scrapy's default settings otherwise (asyncio reactor, LOG_LEVEL INFO,
telnet console off). Streams are opened with ``reconnect=False``: the server closes
after N events and a reconnect would serve them again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import scrapy
from itemadapter import ItemAdapter
from scrapy import signals
from scrapy.crawler import CrawlerProcess

from scrapy_sse import SSEEvent, SSERequest

from .corpora import build_events


class _Meter(Protocol):
    stopped: bool

    def start(self) -> None: ...
    def stop(self) -> None: ...


class _State:
    meter: _Meter
    target = 0
    count = 0
    last: Any = None
    items: list[dict[str, str]] = []


class NoopPipeline:
    """Counts items, keeps the last one, stops the meter at the N-th; drops nothing."""

    def process_item(self, item: Any) -> Any:
        if isinstance(item, list):  # batch delivery: one call per batch
            _State.count += len(item)
            _State.last = item[-1]
        else:
            _State.count += 1
            _State.last = item
        if _State.count >= _State.target and not _State.meter.stopped:
            _State.meter.stop()
        return item


class PlainSpider(scrapy.Spider):
    name = "bench_plain"

    async def start(self) -> AsyncIterator[Any]:
        _State.meter.start()
        yield scrapy.Request("data:,", callback=self.emit, dont_filter=True)

    def emit(self, response: Any) -> Iterator[dict[str, str]]:
        yield from _State.items


class CeilingSpider(scrapy.Spider):
    """The same from an async generator callback: scrapy-sse's callbacks are async
    generators, and Scrapy runs those through the async path of every spider middleware."""

    name = "bench_ceiling"

    async def start(self) -> AsyncIterator[Any]:
        _State.meter.start()
        yield scrapy.Request("data:,", callback=self.emit, dont_filter=True)

    async def emit(self, response: Any) -> AsyncIterator[dict[str, str]]:
        for item in _State.items:
            yield item


class SSEItemsSpider(scrapy.Spider):
    """No callback and no ``parse``: the add-on yields SSEEventItem items."""

    name = "bench_sse_items"
    url = ""

    async def start(self) -> AsyncIterator[Any]:
        _State.meter.start()
        yield SSERequest(self.url, reconnect=False)


class SSECallbackSpider(scrapy.Spider):
    name = "bench_sse_callback"
    url = ""

    async def start(self) -> AsyncIterator[Any]:
        _State.meter.start()
        yield SSERequest(self.url, callback=self.on_event, reconnect=False)

    def on_event(self, event: SSEEvent) -> Iterator[dict[str, str]]:
        yield {"event": event.event, "data": event.data, "id": event.id}


class SSEBatchSpider(scrapy.Spider):
    """Batch delivery, no callback: an SSEBatch of up to 500 events per pipeline call."""

    name = "bench_sse_batch"
    url = ""

    async def start(self) -> AsyncIterator[Any]:
        _State.meter.start()
        yield SSERequest(self.url, reconnect=False, batch_size=500, batch_interval=0.05)


SPIDERS: dict[str, type[scrapy.Spider]] = {
    "plain": PlainSpider,
    "ceiling": CeilingSpider,
    "items": SSEItemsSpider,
    "callback": SSECallbackSpider,
    "batch": SSEBatchSpider,
}


def run_crawl(
    kind: str,
    *,
    url: str,
    events: int,
    corpus: str,
    meter: _Meter,
    outcome_cls: Any,
    profile: str = "",
) -> Any:
    """Run one crawl in this process and return an ``Outcome`` of what the pipeline saw."""
    _State.meter = meter
    _State.target = events
    if kind in ("plain", "ceiling"):
        _State.items = [
            {"event": e.event, "data": e.data, "id": e.id}
            for e in build_events(corpus, events).expected
        ]
    settings: dict[str, Any] = {
        "LOG_LEVEL": "INFO",
        "TELNETCONSOLE_ENABLED": False,
        "ITEM_PIPELINES": {NoopPipeline: 100},
    }
    if kind != "plain":
        settings["ADDONS"] = {"scrapy_sse.SSEAddon": 500}
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(SPIDERS[kind])
    stats: dict[str, Any] = {}

    def keep_stats() -> None:
        if crawler.stats is not None:
            stats.update(crawler.stats.get_stats())

    crawler.signals.connect(keep_stats, signal=signals.spider_closed)
    process.crawl(crawler, url=url)
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.runcall(process.start)
        profiler.dump_stats(profile)
    else:
        process.start()
    out = outcome_cls()
    out.events = _State.count
    if isinstance(_State.last, SSEEvent):
        out.last = (_State.last.event, _State.last.data, _State.last.id)
    elif _State.last is not None:
        row = ItemAdapter(_State.last)
        out.last = (row["event"], row["data"], row["id"])
    out.extra["stats"] = {
        k: v
        for k, v in stats.items()
        if k.startswith(("sse/", "item_scraped_count", "finish_reason", "log_count/ERROR"))
    }
    return out
