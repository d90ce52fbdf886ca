"""The recorded completions the LLM tests use: each format's requests to the demo server
(``example_project/demo_server.py``), and their bytes recorded with a plain HTTP client."""

from __future__ import annotations

import http.client
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "example_project") not in sys.path:
    sys.path.insert(0, str(ROOT / "example_project"))

from demo_server import DemoConfig, serve_in_thread  # noqa: E402

__all__ = ["DemoConfig", "record", "request_spec", "serve_in_thread"]

PATHS = {
    "openai-chat": "/v1/chat/completions",
    "openai-responses": "/v1/responses",
    "anthropic": "/v1/messages",
    "gemini": "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
}
KEYS = {
    "openai-chat": {"Authorization": "Bearer sk-test"},
    "openai-responses": {"Authorization": "Bearer sk-test"},
    "anthropic": {"x-api-key": "sk-ant-test"},
    "gemini": {"x-goog-api-key": "g-test"},
}


def request_spec(fmt: str, scenario: str, prompt: str = "hello", **body: Any) -> dict[str, Any]:
    """One request of the ``Completions`` test spider (and of :func:`record`)."""
    question = [{"role": "user", "content": prompt}]
    payload: dict[str, Any] = {
        "openai-chat": {
            "model": "gpt-4o-mini",
            "messages": question,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        "openai-responses": {"model": "gpt-4.1-mini", "input": prompt, "stream": True},
        "anthropic": {
            "model": "claude-sonnet-4-5",
            "messages": question,
            "stream": True,
            "max_tokens": 256,
        },
        "gemini": {"contents": [{"role": "user", "parts": [{"text": prompt}]}]},
    }[fmt]
    return {
        "path": PATHS[fmt],
        "body": {**payload, **body},
        "headers": {**KEYS[fmt], "X-Demo-Scenario": scenario},
        "llm": fmt,
    }


def record(base: str, spec: dict[str, Any]) -> bytes:
    """The bytes the server sends for ``spec`` (up to where it breaks the connection)."""
    request = urllib.request.Request(
        base + spec["path"],
        data=json.dumps(spec["body"]).encode(),
        headers={"Content-Type": "application/json", **spec["headers"]},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        try:
            return bytes(response.read())
        except http.client.IncompleteRead as cut:
            return bytes(cut.partial)
