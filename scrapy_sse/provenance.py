"""``ProvenancePipeline``: an item's stream position, handed to the task that runs its
item pipelines when that is not the task that read its event.

With scrapy-sse's ordered output (the default, on the asyncio reactor) an item's
pipelines run in the task that read its event, or in one started from it, so the
event's delivery (:data:`scrapy_sse.durable.CURRENT`) is in their context already and
this pipeline is not enabled. Scrapy's own output processing (``SSE_ORDERED_ITEMS =
False``, another reactor, or a Scrapy without the names ordered output needs) fills a
queue in one task and runs pipelines in others: the spider middleware then records
each item's delivery by item identity, and this pipeline, first in the chain, moves it
into the context of the task that runs the chain. Everything after it (sinks,
:func:`scrapy_sse.durable.hold`, dead letters, the settle when the item leaves) then
works as in the ordered case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import is_asyncio_available

from . import _scrapy_private
from .durable import CURRENT
from .extension import sse_state

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

#: Its place in ``ITEM_PIPELINES``: before any other.
PRIORITY = -1_000_000


def context_follows_items(crawler: Crawler) -> bool:
    """Whether each item's pipelines run in a context copied from the task that
    read its event (scrapy-sse's ordered output on the asyncio reactor)."""
    state = sse_state(crawler)
    return (
        state.has(_scrapy_private.ORDERED_OUTPUT)
        and state.settings.ordered_items
        and is_asyncio_available()
    )


class ProvenancePipeline:
    def __init__(self, by_item: dict[int, Any]) -> None:
        self.by_item = by_item

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if context_follows_items(crawler):
            # (No message: Scrapy would log one as a warning in every such crawl.)
            raise NotConfigured  # items are processed in the context they were made in
        ledger = sse_state(crawler).ledger
        ledger.by_item = {}
        return cls(ledger.by_item)

    def process_item(self, item: Any) -> Any:
        CURRENT.set(self.by_item.pop(id(item), None))
        return item
