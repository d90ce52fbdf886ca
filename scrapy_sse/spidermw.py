"""``SSESpiderMiddleware``: a stream's life cycle on the spider side.

Nearest the engine, so that the reconnect requests it adds are not made deeper by
``DepthMiddleware`` nor filtered as off-site. For each stream response it:

* installs the callback that reads the stream (``process_spider_input``: per event, per
  batch, or one item per event, see :mod:`scrapy_sse.dispatch`; one LLM completion, see
  :mod:`scrapy_sse.completions`), and gives the stream
  its track, where each delivery is held until what the spider made of it is stored;
* counts each item of the output against the delivery it was made from (the event
  being read when the item leaves the spider middlewares; see :mod:`scrapy_sse.durable`);
* when that output ends because the stream went idle (the stream is *resting*), does
  nothing more: the extension hands the response to the scraper again when the next
  event comes (a new burst, through a new chain);
* when it ends otherwise, closes the stream and hands its end to
  :class:`~scrapy_sse.reconnect.StreamEnds` (reconnect, give up or stop).

A connection that never opened does not come here: it is a download error, which the
downloader middleware routes to :meth:`StreamEnds.connection_failed`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scrapy import Request

from .completions import completion_callback, is_completion
from .dispatch import build_callback
from .downloadermw import user_errback
from .durable import CURRENT
from .extension import sse_state
from .http import STREAM_KEY, SSEResponse
from .policy import CALLBACK_DONE
from .reconnect import StreamEnds

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from typing_extensions import Self

    from .stream import SSEStream


class SSESpiderMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.state = sse_state(crawler)
        self.ends = StreamEnds(crawler, self.state)
        # The downloader middleware routes failed connections here (it may not import
        # the spider side).
        self.state.connection_failed = self.ends.connection_failed

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def process_spider_input(self, response: Response) -> None:
        if not isinstance(response, SSEResponse) or response.stream is None:
            return
        stream = response.stream
        request = response.request
        assert request is not None
        if stream.track is None:
            key = stream.request.meta.get(STREAM_KEY) or stream.url
            stream.track = self.state.ledger.track(key)
        if request.callback is stream.request.callback:  # (the first burst)
            idle = self.state.burst_idle
            callback: Callable[..., Any] | None
            if is_completion(stream.request):
                callback = completion_callback(stream.request, idle)
            else:
                callback = build_callback(stream.request, self.crawler, self.state, idle)
            if callback is not None:
                request.callback = callback

    async def process_spider_output(
        self, response: Response, result: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        if not isinstance(response, SSEResponse) or response.stream is None:
            async for value in result:
                yield value
            return
        stream = response.stream
        current = CURRENT.get
        by_item = self.state.ledger.by_item
        try:
            async for value in result:
                if value is not None and not isinstance(value, Request):
                    # An item: it holds the delivery it was made from until it has
                    # left the item pipelines.
                    slot = current()
                    if slot is not None:
                        slot.pending += 1
                        if by_item is not None:
                            by_item[id(value)] = slot
                yield value
        except BaseException:
            self._output_ended(stream)
            raise
        if stream.resting:
            # Only this burst ended: the extension starts the next one once all of
            # this output is processed (events queued meanwhile, or the stream's end,
            # go to that burst).
            return
        self._output_ended(stream)
        async for value in self.ends.after(stream, user_errback(stream.request.errback)):
            yield value

    def _output_ended(self, stream: SSEStream) -> None:
        if stream.is_open:
            stream.close(CALLBACK_DONE)
        if stream.id_gaps and self.crawler.stats is not None:
            # (Counted as events are delivered: all of them are, by now.)
            self.crawler.stats.inc_value("sse/id_gaps", stream.id_gaps)
        # Now every queued event has been delivered (or dropped): checkpoint the final
        # id, which the end of the connection alone would not have seen.
        self.state.registry.record(stream)
