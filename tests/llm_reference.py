"""What the vendors' own SDKs make of a recorded completion stream, in the fields of
:class:`scrapy_sse.LLMCompletion`: the reference the tests hold scrapy-sse's assembly
to. Each SDK decodes the bytes with its own SSE decoder and accumulates with its own
code (openai-python's ``ChatCompletionStreamState`` and ``ResponseStreamState``,
anthropic-python's ``accumulate_event``); where the SDK would raise (a mid-stream
``error``), the accumulation so far and the error's body are what it leaves."""

from __future__ import annotations

import json
from typing import Any


def _dump(model: Any) -> Any:
    return None if model is None else model.model_dump(exclude_unset=True, exclude_none=True)


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return raw


def openai_chat(raw: bytes) -> dict[str, Any]:
    from openai._models import construct_type
    from openai._streaming import SSEDecoder
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    state: Any = ChatCompletionStreamState()
    error = None
    seen = False
    for sse in SSEDecoder().iter_bytes(iter([raw])):
        if sse.data.startswith("[DONE]"):
            break
        data = sse.json()
        if data.get("error"):  # (openai._streaming.Stream raises APIError here)
            error = data["error"]
            break
        state.handle_chunk(construct_type(type_=ChatCompletionChunk, value=data))
        seen = True
    if not seen:
        return {"error": error}
    snapshot = state.current_completion_snapshot
    texts = [choice.message.content or "" for choice in snapshot.choices]
    several = len(snapshot.choices) > 1
    calls = []
    for choice in snapshot.choices:
        for call in choice.message.tool_calls or ():
            row = {
                "id": call.id,
                "name": call.function.name,
                "arguments": _arguments(call.function.arguments),
            }
            if several:
                row["choice"] = choice.index
            calls.append(row)
    return {
        "response_id": snapshot.id,
        "model": snapshot.model,
        "text": texts[0] if texts else "",
        "texts": texts,
        "tool_calls": calls,
        "finish_reason": snapshot.choices[0].finish_reason if snapshot.choices else None,
        "usage": _dump(snapshot.usage),
        "error": error,
    }


def openai_responses(raw: bytes) -> dict[str, Any]:
    from openai._models import construct_type
    from openai._streaming import SSEDecoder
    from openai._types import omit
    from openai.lib.streaming.responses._responses import ResponseStreamState
    from openai.types.responses import ResponseStreamEvent

    state: Any = ResponseStreamState(input_tools=omit, text_format=omit)
    error = None
    final = None
    snapshot = None
    for sse in SSEDecoder().iter_bytes(iter([raw])):
        data = sse.json()
        if data.get("type") == "error":
            error = {k: v for k, v in data.items() if k not in ("type", "sequence_number")}
            break
        for event in state.handle_event(construct_type(type_=ResponseStreamEvent, value=data)):
            if event.type == "response.completed":
                final = event.response
        snapshot = state._ResponseStreamState__current_snapshot
    response = final or snapshot
    assert response is not None
    text = "".join(
        part.text
        for item in response.output
        if item.type == "message"
        for part in item.content
        if part.type == "output_text"
    )
    calls = [
        {"id": item.call_id, "name": item.name, "arguments": _arguments(item.arguments)}
        for item in response.output
        if item.type == "function_call"
    ]
    thinking = "".join(
        part.text for item in response.output if item.type == "reasoning" for part in item.summary
    )
    return {
        "response_id": response.id,
        "model": response.model,
        "text": text,
        "texts": [text],
        "tool_calls": calls,
        "thinking": thinking,
        "finish_reason": response.status if final is not None else None,
        "usage": _dump(response.usage),
        "error": error,
    }


def anthropic(raw: bytes) -> dict[str, Any]:
    from anthropic._streaming import SSEDecoder
    from anthropic.lib.streaming._messages import accumulate_event

    snapshot: Any = None
    json_bufs: dict[int, bytes] = {}
    error = None
    for sse in SSEDecoder().iter_bytes(iter([raw])):
        if sse.event == "error":  # (anthropic._streaming.Stream raises here)
            error = sse.json()["error"]
            break
        if sse.event == "ping":
            continue
        snapshot = accumulate_event(
            event=sse.json(), current_snapshot=snapshot, json_bufs=json_bufs
        )
    text = "".join(block.text for block in snapshot.content if block.type == "text")
    calls = [
        {"id": block.id, "name": block.name, "arguments": block.input}
        for block in snapshot.content
        if block.type == "tool_use"
    ]
    thinking = "".join(block.thinking for block in snapshot.content if block.type == "thinking")
    return {
        "response_id": snapshot.id,
        "model": snapshot.model,
        "text": text,
        "texts": [text],
        "tool_calls": calls,
        "thinking": thinking,
        "finish_reason": snapshot.stop_reason,
        "usage": _dump(snapshot.usage),
        "error": error,
    }


REFERENCES = {
    "openai-chat": openai_chat,
    "openai-responses": openai_responses,
    "anthropic": anthropic,
}
