"""A price ticker over SSE: ``event: price_update`` events carrying
``{"symbol", "price", "ts"}``, mixed with other event types.

There is no public ticker to point at, so the default URL is the bundled demo
server (``python demo_server.py --port 8765``).

    scrapy crawl prices -a symbols=AAPL,MSFT -s CLOSESPIDER_TIMEOUT=10 -O ticks.jsonl
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy
from twisted.python.failure import Failure

from scrapy_sse import SSEEvent, SSERequest
from sse_demo.items import PriceTick

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8765/prices"
STATS_PREFIX = "prices"


def parse_symbols(value: str | None) -> frozenset[str]:
    """``"aapl, MSFT"`` -> ``{"AAPL", "MSFT"}``; empty means "all symbols"."""
    if not value:
        return frozenset()
    return frozenset(part.strip().upper() for part in value.split(",") if part.strip())


class PricesSpider(scrapy.Spider):
    """Yields a :class:`PriceTick` per ``price_update`` event.

    Arguments: ``-a symbols=AAPL,MSFT`` keeps only those symbols (filtering is
    client-side because a ticker usually broadcasts everything);
    ``-a last_event_id=N`` resumes after event ``N``; ``-a url=...`` reads
    another server.
    """

    name = "prices"

    def __init__(
        self,
        url: str | None = None,
        symbols: str | None = None,
        last_event_id: str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.url: str = url or DEFAULT_URL
        self.symbols: frozenset[str] = parse_symbols(symbols)
        self.last_event_id: str | None = last_event_id or None

    async def start(self) -> AsyncIterator[SSERequest]:
        yield SSERequest(
            self.url,
            callback=self.parse_event,
            errback=self.on_error,
            last_event_id=self.last_event_id,
        )

    def parse_event(self, event: SSEEvent) -> Iterator[PriceTick]:
        """Keep ``price_update`` events of the wanted symbols; count the rest."""
        if event.event != "price_update":
            # market_status and friends: not prices, but worth knowing they came.
            self._stat(f"events_ignored/{event.event}")
            return
        try:
            data = event.json()
        except ValueError:
            self._stat("events_skipped/unparsable")
            return
        if not isinstance(data, dict) or not isinstance(data.get("symbol"), str):
            self._stat("events_skipped/unexpected_shape")
            return
        price = data.get("price")
        if isinstance(price, bool) or not isinstance(price, int | float):
            self._stat("events_skipped/unexpected_shape")
            return
        symbol = data["symbol"].upper()
        if self.symbols and symbol not in self.symbols:
            self._stat("events_filtered")
            return
        ts = data.get("ts")
        yield PriceTick(
            symbol=symbol,
            price=float(price),
            ts=ts if isinstance(ts, int) else None,
            event_id=event.id or None,
        )

    def on_error(self, failure: Failure) -> None:
        """Log a failed stream once, and count it so run summaries show it."""
        self._stat("stream_errors")
        logger.error("price stream %s failed: %s", self.url, failure.getErrorMessage())

    def _stat(self, key: str) -> None:
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value(f"{STATS_PREFIX}/{key}")
