"""Extension: closes every open stream as soon as the spider starts closing.

Without it a crawl told to stop (``CLOSESPIDER_*``, Ctrl-C, ``engine.close_spider``)
would wait for open streams, which never end by themselves.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.utils.asyncio import create_looping_call
from scrapy.utils.job import job_dir

from . import _scrapy_private
from .checkpoint import Checkpoints
from .deadletter import DeadLetters
from .http import SSEResponse
from .policy import SPIDER_CLOSED
from .registry import StreamRegistry
from .settings import SSESettings

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

logger = logging.getLogger(__name__)


class SSEExtension:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.settings = SSESettings.from_settings(crawler.settings)
        self.registry = StreamRegistry.for_crawler(crawler)
        self._checkpoint_timer: Any = None
        if self.settings.dead_letters:
            DeadLetters.install(crawler)
        crawler.signals.connect(self._engine_started, signal=signals.engine_started)
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def _engine_started(self) -> None:
        assert self.crawler.engine is not None
        _scrapy_private.install_close_hook(self.crawler.engine, self._closing)
        _scrapy_private.install_stream_output(
            self.crawler.engine.scraper,
            lambda response: isinstance(response, SSEResponse),
            self.settings.concurrent_items,
            ordered=self.settings.ordered_items,
            backlog=lambda response: response.stream.queued if response.stream else 0,
        )
        if self.settings.release_idle_chain > 0:
            _scrapy_private.install_released_chains(
                self.crawler.engine.scraper,
                lambda response: isinstance(response, SSEResponse),
                self.settings.release_idle_chain,
                ready=lambda response: bool(response.stream and response.stream.queued),
            )
        jobdir = job_dir(self.crawler.settings)
        if jobdir:
            self.registry.checkpoints = Checkpoints(jobdir)
            if len(self.registry.checkpoints):
                logger.info(
                    "Loaded SSE checkpoints for %d stream(s) from %s",
                    len(self.registry.checkpoints),
                    self.registry.checkpoints.path,
                )
            self._checkpoint_timer = create_looping_call(self.registry.flush_checkpoints)
            self._checkpoint_timer.start(self.settings.checkpoint_interval, now=False)

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
        if self._checkpoint_timer is not None and self._checkpoint_timer.running:
            self._checkpoint_timer.stop()
        # Every stream has ended and every delivered item has been processed by now.
        self.registry.flush_checkpoints()
