"""Wikimedia EventStreams: every edit, page creation, log entry and category
change on all Wikimedia wikis, as one public SSE stream.

    scrapy crawl wikimedia -s CLOSESPIDER_ITEMCOUNT=100 -O changes.jsonl
    scrapy crawl wikimedia -a url=http://127.0.0.1:8765/v2/stream/recentchange
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy
from twisted.python.failure import Failure

from scrapy_sse import SSEEvent, SSERequest
from sse_demo.items import WikiChange

logger = logging.getLogger(__name__)

DEFAULT_URL = "https://stream.wikimedia.org/v2/stream/recentchange"
STATS_PREFIX = "wikimedia"


class WikimediaSpider(scrapy.Spider):
    """Turns recentchange events into small :class:`WikiChange` items.

    Arguments: ``-a url=...`` to read another server (the demo server, a
    mirror); ``-a last_event_id=...`` to resume after an event, using the
    ``id:`` value of the last event seen (a JSON list of Kafka offsets). The
    stream itself never ends, so bound a run with ``CLOSESPIDER_TIMEOUT`` or
    ``CLOSESPIDER_ITEMCOUNT``.
    """

    name = "wikimedia"
    custom_settings = {
        # Wikimedia's User-Agent policy asks for a client name, version and a
        # way to reach the operator; anonymous library defaults may be blocked.
        # Override with -s USER_AGENT="yourbot/1.0 (you@example.org)".
        "USER_AGENT": (
            f"scrapy-sse-example/0.1 (+https://pypi.org/project/scrapy-sse/) "
            f"Scrapy/{scrapy.__version__}"
        ),
    }

    def __init__(
        self,
        url: str | None = None,
        last_event_id: str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.url: str = url or DEFAULT_URL
        self.last_event_id: str | None = last_event_id or None

    async def start(self) -> AsyncIterator[SSERequest]:
        yield SSERequest(
            self.url,
            callback=self.parse_event,
            errback=self.on_error,
            last_event_id=self.last_event_id,
        )

    def parse_event(self, event: SSEEvent) -> Iterator[WikiChange]:
        """Map one event to an item; bad or irrelevant events are counted, not fatal.

        A long-running consumer must survive the odd broken message, and a stat
        makes the skips visible without flooding the log.
        """
        try:
            data = event.json()
        except ValueError:
            self._skip("unparsable")
            return
        if not isinstance(data, dict):
            self._skip("unparsable")
            return
        meta = data.get("meta")
        if isinstance(meta, dict) and meta.get("domain") == "canary":
            # Wikimedia injects synthetic "canary" events to monitor the
            # pipeline and asks consumers to discard them.
            self._skip("canary")
            return
        if not isinstance(data.get("wiki"), str) or not isinstance(data.get("title"), str):
            self._skip("unexpected_shape")
            return
        timestamp = data.get("timestamp")
        yield WikiChange(
            wiki=data["wiki"],
            title=data["title"],
            user=str(data.get("user", "")),
            type=str(data.get("type", "")),
            timestamp=timestamp if isinstance(timestamp, int) else None,
            bot=bool(data.get("bot", False)),
        )

    def on_error(self, failure: Failure) -> None:
        """Log a failed stream once, and count it so run summaries show it."""
        self._stat("stream_errors")
        logger.error("wikimedia stream %s failed: %s", self.url, failure.getErrorMessage())

    def _skip(self, reason: str) -> None:
        self._stat(f"events_skipped/{reason}")

    def _stat(self, key: str) -> None:
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value(f"{STATS_PREFIX}/{key}")
