"""One stored LLM completion per prompt, whatever the provider's streaming format.

Reads prompts from a JSON-lines file (one ``{"id", "format", "model", "prompt"}`` per
line; ``format`` is ``openai-chat``, ``openai-responses``, ``anthropic`` or
``gemini``) and sends each to its provider's streaming endpoint with
``meta={"sse_llm": format}``: scrapy-sse assembles the stream into one
``LLMCompletion`` (text, tool calls, usage, finish reason, time to first token) and
calls :meth:`CompletionsSpider.store` with it once the stream has ended, whole or not::

    scrapy crawl completions                                  # the demo server
    scrapy crawl completions -a base=https://api.openai.com -a prompts=mine.jsonl

Against the real APIs, set ``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY`` and
``GEMINI_API_KEY``; the demo server accepts any key. A line may add
``"demo_scenario"`` (``tools``, ``error``, ``drop``...) for the demo server.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import scrapy

from scrapy_sse import LLMCompletion, SSERequest
from sse_demo.items import StoredCompletion

DEFAULT_BASE = "http://127.0.0.1:8765"
DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "prompts.jsonl"


def _endpoint(fmt: str, model: str, prompt: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    """Path, body and key header of one streamed completion request per format."""
    messages = [{"role": "user", "content": prompt}]
    if fmt == "openai-chat":
        body = {
            "model": model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return "/v1/chat/completions", body, {"Authorization": f"Bearer {_key('OPENAI')}"}
    if fmt == "openai-responses":
        body = {"model": model, "input": prompt, "stream": True}
        return "/v1/responses", body, {"Authorization": f"Bearer {_key('OPENAI')}"}
    if fmt == "anthropic":
        body = {"model": model, "messages": messages, "max_tokens": 1024, "stream": True}
        return (
            "/v1/messages",
            body,
            {"x-api-key": _key("ANTHROPIC"), "anthropic-version": "2023-06-01"},
        )
    if fmt == "gemini":
        body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
        path = f"/v1beta/models/{model}:streamGenerateContent?alt=sse"
        return path, body, {"x-goog-api-key": _key("GEMINI")}
    raise ValueError(f"unknown format {fmt!r}")


def _key(provider: str) -> str:
    return os.environ.get(f"{provider}_API_KEY") or "demo-key"


class CompletionsSpider(scrapy.Spider):
    """``-a base=`` (the API host; default the demo server), ``-a prompts=`` (file)."""

    name = "completions"
    custom_settings = {
        # Providers cap open streams per key (SSE_LLM_RETRIES = 1 would also ask again,
        # once, for an answer cut short: a second, billed completion).
        "SSE_MAX_STREAMS_PER_KEY": 3,
    }

    def __init__(
        self,
        url: str | None = None,
        base: str | None = None,
        prompts: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # (run_demo.py passes the demo server as url=; its host is the base.)
        self.base = (base or url or DEFAULT_BASE).rstrip("/")
        self.prompts = Path(prompts) if prompts else DEFAULT_PROMPTS

    async def start(self) -> AsyncIterator[SSERequest]:
        for line in self.prompts.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            spec = json.loads(line)
            path, body, key = _endpoint(spec["format"], spec["model"], spec["prompt"])
            headers = {"Content-Type": "application/json", **key}
            if spec.get("demo_scenario"):
                headers["X-Demo-Scenario"] = spec["demo_scenario"]
            yield SSERequest(
                self.base + path,
                method="POST",
                body=json.dumps(body),
                headers=headers,
                meta={"sse_llm": spec["format"]},
                callback=self.store,
                cb_kwargs={"prompt_id": spec["id"], "prompt": spec["prompt"]},
            )

    def store(self, completion: LLMCompletion, prompt_id: str, prompt: str) -> StoredCompletion:
        if not completion.complete:
            self.logger.warning("prompt %s: incomplete answer (%s)", prompt_id, completion.error)
        return StoredCompletion(
            prompt_id=prompt_id,
            prompt=prompt,
            provider=completion.provider,
            model=completion.model,
            text=completion.text,
            tool_calls=completion.tool_calls,
            finish_reason=completion.finish_reason,
            complete=completion.complete,
            error=completion.error,
            usage=completion.usage,
            ttft_s=completion.ttft_s,
            duration_s=completion.duration_s,
        )
