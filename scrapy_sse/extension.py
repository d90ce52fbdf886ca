"""Extension: closes every open stream as soon as the spider starts closing.

Without it a crawl told to stop (``CLOSESPIDER_*``, Ctrl-C, ``engine.close_spider``)
would wait for open streams, which never end by themselves.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy import signals

from . import _scrapy_private
from .registry import StreamRegistry
from .settings import SSESettings
from .stream import SPIDER_CLOSED

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)


class SSEExtension:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        settings = SSESettings.from_settings(crawler.settings)
        self.registry = StreamRegistry.for_crawler(crawler, settings.max_streams)
        crawler.signals.connect(self._engine_started, signal=signals.engine_started)
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def _engine_started(self) -> None:
        assert self.crawler.engine is not None
        _scrapy_private.install_close_hook(self.crawler.engine, self._closing)

    async def _closing(self, reason: str) -> None:
        closed = self.registry.close_all(SPIDER_CLOSED)
        if closed:
            logger.info(
                "Closed %d open SSE stream(s) because the spider is closing (%s)",
                closed,
                reason,
            )

    def _spider_closed(self) -> None:
        self.registry.close_all(SPIDER_CLOSED)
