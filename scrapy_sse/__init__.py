"""Stream Server-Sent Events through Scrapy spiders, middlewares and item pipelines.

The public names are loaded on first use (PEP 562), so that importing the pure layers
(``scrapy_sse.parser``, ``scrapy_sse.events``, ``scrapy_sse.policy``) loads no Scrapy
or Twisted module: a benchmark, a notebook or another client can parse with them alone.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .addon import SSEAddon
    from .errors import SSEError, SSEEventTooLarge, SSEResponseError, SSEStreamError
    from .events import SSEBatch, SSEComment, SSEEvent, SSEEventItem
    from .http import SSERequest, SSEResponse
    from .llm.completion import LLMCompletion
    from .parser import SSEParser
    from .stream import SSEStream

#: Where each public name lives.
_EXPORTS = {
    "LLMCompletion": "llm.completion",
    "SSEAddon": "addon",
    "SSEBatch": "events",
    "SSEComment": "events",
    "SSEError": "errors",
    "SSEEvent": "events",
    "SSEEventItem": "events",
    "SSEEventTooLarge": "errors",
    "SSEParser": "parser",
    "SSERequest": "http",
    "SSEResponse": "http",
    "SSEResponseError": "errors",
    "SSEStream": "stream",
    "SSEStreamError": "errors",
}

__all__ = [  # (the names of _EXPORTS, as static tools want them)
    "LLMCompletion",
    "SSEAddon",
    "SSEBatch",
    "SSEComment",
    "SSEError",
    "SSEEvent",
    "SSEEventItem",
    "SSEEventTooLarge",
    "SSEParser",
    "SSERequest",
    "SSEResponse",
    "SSEResponseError",
    "SSEStream",
    "SSEStreamError",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scrapy_sse' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # (found directly next time)
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
