"""LLM completion streams as items: pure assembly of each provider's wire format
(:mod:`.assembly`) into one :class:`LLMCompletion` per request (:mod:`.completion`).
The Scrapy side is :mod:`scrapy_sse.completions`."""

from __future__ import annotations

from .assembly import FORMATS, LLMStream
from .completion import LLMCompletion

__all__ = ["FORMATS", "LLMCompletion", "LLMStream"]
