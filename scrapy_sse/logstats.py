"""``SSELogStats``: a periodic line about the crawl's streams, next to Scrapy's own.

Scrapy's ``LogStats`` counts pages and items per minute; a crawl of live streams needs
other figures, and a quiet one needs a sign of life (hosted Scrapy platforms cancel a
job that logs and scrapes nothing for an hour). Every ``SSE_LOGSTATS_INTERVAL`` seconds
(60; ``0``: off) it logs, at INFO::

    SSE: 12 open stream(s) (1 paused, 2 waiting for a place), 1,204.0 events/s,
    310.2 KiB/s, 3 reconnect(s), 2 event id(s) skipped; oldest last event 41 s ago on
    https://feed.example/prices

and sets the same figures as stats (``sse/now/*``; ``sse/now/streams`` lists the 20
streams quiet the longest, each with its events, last-event age, skipped ids and
paused seconds, as of the last line with streams open), so that a monitoring pipeline or
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
from .http import STREAM_KEY, redact_url

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

    from .extension import SSEExtension

logger = logging.getLogger(__name__)

#: Streams listed in the ``sse/now/streams`` stat (the longest quiet first).
STREAMS_IN_STATS = 20


def crawl_totals(crawler: Crawler, state: SSEExtension) -> dict[str, int]:
    """Counters of the whole crawl so far, its open streams included (their totals
    reach ``sse/events`` and the others only when they end)."""
    stats = crawler.stats
    assert stats is not None
    values = stats.get_stats()
    totals = {
        "events": int(values.get("sse/events", 0)),
        "bytes": int(values.get("sse/bytes", 0)),
        "id_gaps": int(values.get("sse/id_gaps", 0)),
        "reconnects": sum(
            int(value) for name, value in values.items() if name.startswith("sse/reconnects/")
        ),
    }
    for stream in state.registry.streams:
        totals["events"] += stream.events_received
        totals["bytes"] += stream.bytes_received
        totals["id_gaps"] += stream.id_gaps  # (an open stream's are not in the stat yet)
    return totals


def stream_figures(state: SSEExtension, now: float) -> list[dict[str, Any]]:
    """Each open stream's figures (this connection's): its key, events, seconds since
    its last event (or since it opened), integer ids skipped, and seconds paused by
    backpressure."""
    rows = []
    for stream in state.registry.streams:
        at = stream.last_event_at or stream.opened_at  # (no event yet: since it opened)
        rows.append(
            {
                "stream": str(stream.request.meta.get(STREAM_KEY) or redact_url(stream.url)),
                "events": stream.events_received,
                "last_event_age_s": round(now - at, 3),
                "id_gaps": stream.id_gaps,
                "paused_s": round(stream.paused_seconds, 3),
            }
        )
    return rows


class SSELogStats:
    def __init__(self, crawler: Crawler, interval: float) -> None:
        self.crawler = crawler
        self.interval = interval
        self._task: Any = None
        self._last: dict[str, float] | None = None

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

    def _totals(self) -> dict[str, float]:
        """The crawl's counters so far, open streams included, with the clock."""
        return {"clock": monotonic(), **crawl_totals(self.crawler, self.state)}

    def figures(self) -> dict[str, Any]:
        """The figures of one line, since the previous one (and the stats they set)."""
        now = self._totals()
        before = self._last or now
        self._last = now
        elapsed = max(now["clock"] - before["clock"], 1e-9)
        registry = self.state.registry
        streams = list(registry.streams)
        oldest_age = None
        oldest_url = None
        quiet_since_open = False
        for stream in streams:
            at = stream.last_event_at or stream.opened_at  # (no event yet: since it opened)
            if oldest_age is None or now["clock"] - at > oldest_age:
                oldest_age, oldest_url = now["clock"] - at, stream.url
                quiet_since_open = not stream.last_event_at
        return {
            "open_streams": len(streams),
            "paused": sum(stream.is_paused for stream in streams),
            "waiting": registry.waiting(),
            "events_per_s": round((now["events"] - before["events"]) / elapsed, 1),
            "bytes_per_s": round((now["bytes"] - before["bytes"]) / elapsed),
            "reconnects": int(now["reconnects"] - before["reconnects"]),
            # (Clamped: a stream that ended leaves the open ones before its last events
            # are delivered and counted.)
            "id_gaps": max(0, int(now["id_gaps"] - before["id_gaps"])),
            "oldest_event_age_s": None if oldest_age is None else round(oldest_age, 1),
            "oldest_event_url": oldest_url,
            "oldest_quiet_since_open": quiet_since_open,
        }

    def log(self) -> None:
        figures = self.figures()
        quiet_since_open = figures.pop("oldest_quiet_since_open")
        stats = self.crawler.stats
        assert stats is not None
        for name, value in figures.items():
            if value is not None:
                stats.set_value(f"sse/now/{name}", value)
        # Per stream, the ones an operator looks at first: those quiet the longest.
        rows = stream_figures(self.state, monotonic())
        if rows:  # (kept as of the last line with streams open, for the final dump)
            rows.sort(key=lambda row: -(row["last_event_age_s"] or 0))
            stats.set_value("sse/now/streams", rows[:STREAMS_IN_STATS])
        what = "no event since it opened" if quiet_since_open else "oldest last event"
        oldest = (
            f"; {what} {figures['oldest_event_age_s']:.0f} s ago on "
            f"{redact_url(figures['oldest_event_url'])}"
            if figures["oldest_event_url"]
            else ""
        )
        logger.info(
            "SSE: %d open stream(s) (%d paused, %d waiting for a place), %s events/s, "
            "%.1f KiB/s, %d reconnect(s)%s%s",
            figures["open_streams"],
            figures["paused"],
            figures["waiting"],
            f"{figures['events_per_s']:,.1f}",
            figures["bytes_per_s"] / 1024,
            figures["reconnects"],
            f", {figures['id_gaps']} event id(s) skipped" if figures["id_gaps"] else "",
            oldest,
            extra={"spider": self.crawler.spider},
        )
