"""The spider the cluster tests run in every worker (``scrapy runspider``).

Every worker yields the same ``SSERequest``s (``-a url=U1|U2|...``), with no callback:
one ``SSEEventItem`` per event. Streams reconnect as in production; each ends with
``data: [DONE]``, which completes it for the whole cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import scrapy

from scrapy_sse import SSERequest


class ClusterEventsSpider(scrapy.Spider):
    name = "cluster_events"
    url = ""

    async def start(self) -> AsyncIterator[Any]:
        for url in self.url.split("|"):
            if url:
                yield SSERequest(url)
