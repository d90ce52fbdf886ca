"""What an LLM completion stream becomes: one :class:`LLMCompletion` per request.

Pure data (standard library only): a dataclass, which Scrapy's item pipelines, feed
exports and scrapy-sse's sinks all accept as an item (``itemadapter`` supports
dataclasses), and which pickles with a ``JOBDIR`` request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class LLMCompletion:
    """One streamed completion, assembled the way the provider's own SDK assembles it.

    ``complete`` is true only when the format's own end arrived (``[DONE]``,
    ``message_stop``, ``response.completed``, Gemini's last frame with a
    ``finishReason`` followed by a clean close) and no error came: a cut-off answer
    never looks finished. ``error`` then says what happened instead: the provider's
    mid-stream error object (``{"type": "overloaded_error", "message": ...}``), or
    ``{"type": "connection_lost" | "server_closed" | "http_<status>", ...}`` for a
    stream that ended early or never opened (the API's JSON explanation in ``body``).
    """

    provider: str = ""  # "openai", "anthropic", "gemini"
    format: str = ""  # "openai-chat", "openai-responses", "anthropic", "gemini"
    model: str | None = None
    response_id: str | None = None
    text: str = ""  # the first (or only) choice's answer
    texts: list[str] = field(default_factory=list)  # one per choice (n > 1)
    #: Each ``{"id", "name", "arguments"}``: ``arguments`` parsed from the streamed JSON
    #: fragments, or the raw string when it is not valid JSON (``"choice"``: n > 1).
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    thinking: str = ""  # reasoning text streamed apart (Anthropic thinking, Gemini thoughts)
    refusal: str = ""  # a refusal streamed apart from the text (OpenAI)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None  # as the provider reports it
    error: dict[str, Any] | None = None
    complete: bool = False
    events: int = 0  # events read for it (over every connection)
    #: Request sent -> first content delta, and -> the completion's end (of the attempt
    #: that gave this completion, after an opted-in retry).
    ttft_s: float | None = None
    duration_s: float | None = None
    url: str = ""
    attempts: int = 1  # requests sent: more than one after an opted-in retry
