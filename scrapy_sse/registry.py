"""Which streams are open in a crawl, and how many may be.

One registry per crawler, shared by the download handlers (one instance per scheme)
and the extension (which closes everything when the spider closes). It lives in a
weak mapping keyed by the crawler so no component has to find another.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import Deferred

from .errors import SSEStreamError

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from .stream import SSEStream

logger = logging.getLogger(__name__)

_registries: WeakKeyDictionary[Crawler, StreamRegistry] = WeakKeyDictionary()


class StreamRegistry:
    def __init__(self, max_streams: int = 0) -> None:
        self.max_streams = max_streams
        self.streams: set[SSEStream] = set()
        self._reserved = 0
        self._waiting: deque[Deferred[None]] = deque()
        self.closing = False

    @classmethod
    def for_crawler(cls, crawler: Crawler, max_streams: int = 0) -> StreamRegistry:
        registry = _registries.get(crawler)
        if registry is None:
            registry = _registries[crawler] = cls(max_streams)
        return registry

    async def acquire(self) -> None:
        """Wait for a free stream slot (``SSE_MAX_STREAMS``)."""
        if self.closing:
            raise SSEStreamError("The spider is closing; no new stream is opened", "closing")
        if not self.max_streams or self._reserved < self.max_streams:
            self._reserved += 1
            return
        waiter: Deferred[None] = Deferred()
        self._waiting.append(waiter)
        await maybe_deferred_to_future(waiter)

    def release(self) -> None:
        if self._waiting and not self.closing:
            # Hand the slot straight to the next waiting stream.
            self._waiting.popleft().callback(None)
        else:
            self._reserved -= 1

    def add(self, stream: SSEStream) -> None:
        self.streams.add(stream)
        stream.on_end(self._ended)

    def _ended(self, stream: SSEStream) -> None:
        self.streams.discard(stream)
        self.release()

    def close_all(self, reason: str) -> int:
        """Close every open stream and refuse waiting ones; returns how many closed."""
        self.closing = True
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            waiter.errback(SSEStreamError("The spider closed before the stream opened", reason))
        streams = list(self.streams)
        for stream in streams:
            stream.close(reason)
        return len(streams)
