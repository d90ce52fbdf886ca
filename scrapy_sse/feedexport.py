"""Scrapy's feed exports, with batch delivery written one line per event.

Without a callback, batch delivery (``SSERequest(batch_size=N)``) yields each
:class:`~scrapy_sse.SSEBatch` as one item, so that a batching sink stores it in one
call. A feed exporter (``-O out.jsonl``) expects one item per call and cannot adapt a
list: Scrapy logs ``No adapter found`` once per batch and writes nothing.
:class:`SSEFeedExporter`, which the add-on puts in the place of Scrapy's
``FeedExporter``, hands each event of a batch to the feeds as the
:class:`~scrapy_sse.SSEEventItem` the same stream would yield without batching; every
other item goes through Scrapy's code unchanged.
"""

from __future__ import annotations

from time import time
from typing import Any

from scrapy.extensions.feedexport import FeedExporter

from .events import SSEBatch, SSEEventItem, parse_json_or_none


class SSEFeedExporter(FeedExporter):
    def item_scraped(self, item: Any, spider: Any) -> None:
        if not isinstance(item, SSEBatch):
            super().item_scraped(item, spider)
            return
        url = getattr(item.response, "safe_url", None) or item.url or ""
        received = time()
        for event in item:
            data = event.data
            row = SSEEventItem(url, event.event, event.id, data, parse_json_or_none(data), received)
            super().item_scraped(row, spider)
