"""The spider the cluster tests run in every worker (``scrapy runspider``).

Every worker yields the same ``SSERequest``s (``-a url=U1|U2|...``), with no callback:
one ``SSEEventItem`` per event. Streams reconnect as in production; each ends with
``data: [DONE]``, which completes it for the whole cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import scrapy

from scrapy_sse import SSERequest


class ClusterEventsSpider(scrapy.Spider):
    name = "cluster_events"
    url = ""
    #: Seconds to wait before yielding the last stream (``-a delay_last=S``).
    delay_last = "0"

    async def start(self) -> AsyncIterator[Any]:
        urls = [url for url in self.url.split("|") if url]
        for i, url in enumerate(urls):
            if i == len(urls) - 1 and float(self.delay_last):
                await asyncio.sleep(float(self.delay_last))
            yield SSERequest(url)
