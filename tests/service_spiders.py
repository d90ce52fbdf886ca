"""The spider the sink tests crawl with ``scrapy runspider`` (one spider per file).

It is only a ``start()``: an ``SSERequest`` with no callback, in a spider with no
``parse``, yields one ``SSEEventItem`` per event, so every row a sink receives comes
from the real stream handler, dispatch and item pipeline machinery, as in production.
``-a url=U1|U2`` opens several streams; reconnection is off so that a crawl ends when
its streams do, which keeps the expected row counts exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import scrapy

from scrapy_sse import SSERequest


class SinkEventsSpider(scrapy.Spider):
    name = "sink_events"
    url = ""

    async def start(self) -> AsyncIterator[Any]:
        for url in self.url.split("|"):
            if url:
                yield SSERequest(url, reconnect=False)
