"""The spider ``benchmarks.cluster`` runs in each worker (``scrapy runspider``) on every
stream in ``-a url=U1|U2|...``: ``-a delivery=batch`` (``SSEBatch`` items of up to 500
events, no callback) or ``per-event`` (a callback yielding a dict per event)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import scrapy

from scrapy_sse import SSERequest


class ClusterBenchSpider(scrapy.Spider):
    name = "cluster_bench"
    url = ""
    delivery = "batch"

    async def start(self) -> AsyncIterator[Any]:
        for url in self.url.split("|"):
            if not url:
                continue
            if self.delivery == "batch":
                yield SSERequest(url, batch_size=500, batch_interval=0.05)
            else:
                yield SSERequest(url, callback=self.on_event)

    def on_event(self, event: Any) -> Any:
        yield {"url": event.url, "id": event.id, "data": event.data}
