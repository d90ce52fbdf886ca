"""Items yielded by the example spiders.

Dataclasses rather than ``scrapy.Item``: they give type checkers the field
types, and Scrapy's feed exports and pipelines accept them through itemadapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class WikiChange:
    """One Wikimedia recentchange event, reduced to what a dashboard would show."""

    wiki: str
    title: str
    user: str
    type: str
    timestamp: int | None
    bot: bool


@dataclass
class PriceTick:
    """One ``price_update`` event of the ticker."""

    symbol: str
    price: float
    ts: int | None
    event_id: str | None


@dataclass
class ChatChunk:
    """One piece of streamed completion text, in arrival order."""

    index: int
    content: str


@dataclass
class StoredCompletion:
    """One prompt's whole answer, as the ``completions`` spider stores it."""

    prompt_id: str
    prompt: str
    provider: str
    model: str | None
    text: str
    tool_calls: list[dict[str, Any]]
    finish_reason: str | None
    complete: bool
    error: dict[str, Any] | None
    usage: dict[str, Any] | None
    ttft_s: float | None
    duration_s: float | None
