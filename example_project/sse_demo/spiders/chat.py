"""An OpenAI-style streamed chat completion, read as SSE.

The request is a POST with a JSON body and ``"stream": true``; the answer comes
back as ``chat.completion.chunk`` events, each carrying a small ``delta`` of
text, and the stream ends with ``data: [DONE]``.

    scrapy crawl chat -a prompt="What is SSE?"                  # demo server
    scrapy crawl chat -a url=https://api.openai.com/v1/chat/completions \\
        -a model=gpt-4o-mini                                      # real API, OPENAI_API_KEY
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy
from twisted.python.failure import Failure

from scrapy_sse import SSEEvent, SSERequest
from sse_demo.items import ChatChunk

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8765/v1/chat/completions"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_PROMPT = "In two sentences: what are Server-Sent Events good for?"
DONE_SENTINEL = "[DONE]"
STATS_PREFIX = "chat"


class ChatSpider(scrapy.Spider):
    """Yields one :class:`ChatChunk` per chunk of text and logs the whole answer.

    Arguments: ``-a url=``, ``-a model=``, ``-a prompt=``, ``-a api_key=``
    (else ``$OPENAI_API_KEY``, else ``demo-key``, which only the demo server
    accepts).  The key is kept off the spider's public attributes so it does
    not end up in logs or stats dumps.
    """

    name = "chat"

    def __init__(
        self,
        url: str | None = None,
        model: str | None = None,
        prompt: str | None = None,
        api_key: str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.url: str = url or DEFAULT_URL
        self.model: str = model or DEFAULT_MODEL
        self.prompt: str = prompt or DEFAULT_PROMPT
        self._api_key: str = api_key or os.environ.get("OPENAI_API_KEY") or "demo-key"
        self._parts: list[str] = []
        self._finish_reason: str | None = None

    async def start(self) -> AsyncIterator[SSERequest]:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": self.prompt}],
            "stream": True,
        }
        yield SSERequest(
            self.url,
            method="POST",
            headers={
                "Authorization": f"Bearer {self._api_key}",
                "Content-Type": "application/json",
            },
            body=json.dumps(body),
            callback=self.parse_event,
            errback=self.on_error,
        )

    def parse_event(self, event: SSEEvent) -> Iterator[ChatChunk]:
        """Append each delta's text to the answer and emit it as an item.

        Chunks without text (the opening role chunk, the closing one with
        ``finish_reason``, a usage chunk) update state but yield nothing, so
        item indexes count text pieces only.
        """
        if event.data == DONE_SENTINEL:  # normally consumed by scrapy_sse itself
            return
        try:
            chunk = event.json()
        except ValueError:
            self._stat("events_skipped/unparsable")
            return
        if not isinstance(chunk, dict):
            self._stat("events_skipped/unparsable")
            return
        if "error" in chunk:
            # OpenAI reports failures after the 200 status line this way.
            self._stat("stream_errors")
            logger.error("chat stream reported an error: %s", chunk["error"])
            return
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self._finish_reason = str(choice["finish_reason"])
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                yield ChatChunk(index=len(self._parts), content=content)
                self._parts.append(content)

    @property
    def answer(self) -> str:
        """The assembled completion text received so far."""
        return "".join(self._parts)

    def on_error(self, failure: Failure) -> None:
        """Log a failed request (bad key, wrong URL) once, and count it."""
        self._stat("stream_errors")
        logger.error("chat request to %s failed: %s", self.url, failure.getErrorMessage())

    def closed(self, reason: str) -> None:
        """Report the assembled answer: the point of streaming it piece by piece."""
        stats = self.crawler.stats
        if stats is not None:
            stats.set_value(f"{STATS_PREFIX}/answer_chars", len(self.answer))
            if self._finish_reason:
                stats.set_value(f"{STATS_PREFIX}/finish_reason", self._finish_reason)
        logger.info(
            "chat answer (%d chunks, finish_reason=%s, close reason=%s): %s",
            len(self._parts),
            self._finish_reason,
            reason,
            self.answer,
        )

    def _stat(self, key: str) -> None:
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value(f"{STATS_PREFIX}/{key}")
