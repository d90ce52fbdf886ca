"""``ClusterSpiderMiddleware``: a cluster worker's start requests that are streams
are parked (see :class:`~scrapy_sse.cluster.worker.ClusterWorker`), not scheduled.

Only ``process_start``: items and the requests of callbacks do not pass through it
(no cost per event). A stream request a callback yields is parked by the downloader
middleware instead, which also keeps a worker from reopening a stream it lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..downloadermw import assign_stream_key
from ..extension import sse_state
from ..http import is_sse_request

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from scrapy.crawler import Crawler
    from typing_extensions import Self


class ClusterSpiderMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        cluster = sse_state(crawler).cluster
        assert cluster is not None  # (the add-on installs this only with SSE_CLUSTER_URL)
        self.cluster = cluster

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def process_start(self, start: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for value in start:
            if is_sse_request(value):
                self.cluster.park(assign_stream_key(self.crawler, value), value)
            else:
                yield value
