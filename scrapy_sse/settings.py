"""Every ``SSE_*`` setting, its default, and the one place they are read.

Components read an :class:`SSESettings` built once per crawler instead of calling
``settings.get*`` on hot paths. Per-request overrides go through ``meta`` keys named
after the setting in lower case (``meta["sse_queue_size"]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .parser import DEFAULT_MAX_EVENT_SIZE

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.settings import BaseSettings

#: Defaults, with what each one means (the README's settings table mirrors this).
DEFAULTS: dict[str, Any] = {
    # Largest event (or line) in characters; a bigger one ends the stream with an error.
    "SSE_MAX_EVENT_SIZE": DEFAULT_MAX_EVENT_SIZE,
    # Parsed events waiting for the spider; when full, the socket is no longer read.
    "SSE_QUEUE_SIZE": 1000,
    # Data values that end a stream as completed (OpenAI-style sentinels).
    "SSE_DONE_DATA": ["[DONE]"],
    # Most streams open at once in the crawl (0: no limit); extra ones wait.
    "SSE_MAX_STREAMS": 0,
    # Hand comment lines (heartbeats) to response.events consumers as SSEComment.
    "SSE_COMMENTS": False,
    # Per scheme, the handler non-stream requests go to; default: what Scrapy would use.
    "SSE_FALLBACK_HANDLERS": {},
}


@dataclass(frozen=True, slots=True)
class SSESettings:
    max_event_size: int
    queue_size: int
    done_data: tuple[str, ...]
    max_streams: int
    comments: bool

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> SSESettings:
        def get(name: str) -> Any:
            value = settings.get(name)
            return DEFAULTS[name] if value is None else value

        return cls(
            max_event_size=int(get("SSE_MAX_EVENT_SIZE")),
            queue_size=int(get("SSE_QUEUE_SIZE")),
            done_data=tuple(settings.getlist("SSE_DONE_DATA", DEFAULTS["SSE_DONE_DATA"])),
            max_streams=int(get("SSE_MAX_STREAMS")),
            comments=bool(settings.getbool("SSE_COMMENTS", DEFAULTS["SSE_COMMENTS"])),
        )

    def for_request(self, request: Request, name: str) -> Any:
        """The value for one request: ``meta["sse_<name>"]`` wins over the setting."""
        return request.meta.get(f"sse_{name}", getattr(self, name))
