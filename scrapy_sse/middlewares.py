"""Spider middleware: ends a stream's life with its callback.

A ``parse(response)`` callback may stop reading ``response.events`` and return; the
connection must not stay open behind it. When the callback's output is exhausted,
the stream is closed (reason ``callback_done``) if it is still open.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .http import SSEResponse
from .stream import CALLBACK_DONE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from typing_extensions import Self


class SSESpiderMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def process_spider_output(
        self, response: Response, result: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        if not isinstance(response, SSEResponse) or response.stream is None:
            async for value in result:
                yield value
            return
        stream = response.stream
        try:
            async for value in result:
                yield value
        finally:
            if stream.is_open:
                stream.close(CALLBACK_DONE)
