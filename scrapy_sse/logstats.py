"""``SSELogStats``: a periodic line about the crawl's streams, next to Scrapy's own.

Scrapy's ``LogStats`` counts pages and items per minute; a crawl of live streams needs
other figures, and a quiet one needs a sign of life (hosted Scrapy platforms cancel a
job that logs and scrapes nothing for an hour). Every ``SSE_LOGSTATS_INTERVAL`` seconds
(60; ``0``: off) it logs, at INFO::

    SSE: 12 open streams (1 paused, 2 waiting for a place), 1,204 events/s, 310 KiB/s,
    3 reconnects; oldest last event 41 s ago on https://feed.example/prices

and sets the same figures as stats (``sse/now/*``), so that a monitoring pipeline or
the stats dump at the end see what the last line said. Open streams' counters are read
from the streams themselves (their totals reach ``sse/events`` and ``sse/bytes`` only
when they end).
"""

from __future__ import annotations

import logging
from functools import cached_property
from time import monotonic
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import create_looping_call

from .extension import sse_state
from .http import redact_url

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

    from .extension import SSEExtension

logger = logging.getLogger(__name__)


class SSELogStats:
    def __init__(self, crawler: Crawler, interval: float) -> None:
        self.crawler = crawler
        self.interval = interval
        self._task: Any = None
        self._last: tuple[float, int, int, int] | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        interval = crawler.settings.getfloat("SSE_LOGSTATS_INTERVAL", 60.0)
        if interval <= 0:
            raise NotConfigured
        extension = cls(crawler, interval)
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    @cached_property
    def state(self) -> SSEExtension:
        # (Not at init: the extension manager that holds it is still being built.)
        return sse_state(self.crawler)

    def spider_opened(self) -> None:
        self._last = self._totals()
        self._task = create_looping_call(self.log)
        self._task.start(self.interval, now=False)

    def spider_closed(self) -> None:
        if self._task is not None and self._task.running:
            self._task.stop()

    def _totals(self) -> tuple[float, int, int, int]:
        """(clock, events, bytes, reconnects) so far, open streams included."""
        stats = self.crawler.stats
        assert stats is not None
        events = int(stats.get_value("sse/events", 0))
        received = int(stats.get_value("sse/bytes", 0))
        for stream in self.state.registry.streams:
            events += stream.events_received
            received += stream.bytes_received
        reconnects = sum(
            int(value)
            for name, value in stats.get_stats().items()
            if name.startswith("sse/reconnects/")
        )
        return monotonic(), events, received, reconnects

    def figures(self) -> dict[str, Any]:
        """The figures of one line, since the previous one (and the stats they set)."""
        now, events, received, reconnects = self._totals()
        then, events_before, received_before, reconnects_before = self._last or (now, 0, 0, 0)
        self._last = (now, events, received, reconnects)
        elapsed = max(now - then, 1e-9)
        registry = self.state.registry
        streams = list(registry.streams)
        oldest_age = None
        oldest_url = None
        for stream in streams:
            at = stream.last_event_at
            if at and (oldest_age is None or now - at > oldest_age):
                oldest_age, oldest_url = now - at, stream.url
        return {
            "open_streams": len(streams),
            "paused": sum(stream.is_paused for stream in streams),
            "waiting": registry.waiting(),
            "events_per_s": round((events - events_before) / elapsed, 1),
            "bytes_per_s": round((received - received_before) / elapsed),
            "reconnects": reconnects - reconnects_before,
            "oldest_event_age_s": None if oldest_age is None else round(oldest_age, 1),
            "oldest_event_url": oldest_url,
        }

    def log(self) -> None:
        figures = self.figures()
        stats = self.crawler.stats
        assert stats is not None
        for name, value in figures.items():
            if value is not None:
                stats.set_value(f"sse/now/{name}", value)
        oldest = (
            f"; oldest last event {figures['oldest_event_age_s']:.0f} s ago on "
            f"{redact_url(figures['oldest_event_url'])}"
            if figures["oldest_event_url"]
            else ""
        )
        logger.info(
            "SSE: %d open stream(s) (%d paused, %d waiting for a place), %s events/s, "
            "%.1f KiB/s, %d reconnect(s)%s",
            figures["open_streams"],
            figures["paused"],
            figures["waiting"],
            f"{figures['events_per_s']:,.1f}",
            figures["bytes_per_s"] / 1024,
            figures["reconnects"],
            oldest,
            extra={"spider": self.crawler.spider},
        )
