"""The events of a streamed LLM completion in each vendor's wire format.

Pure and standard library only: the demo server streams these, and the tests record
them from it and check scrapy-sse's assembly against the vendors' SDKs on the same
bytes. The shapes follow the APIs' documented streams (OpenAI Chat Completions and
Responses, Anthropic Messages, Gemini ``streamGenerateContent?alt=sse``).

A *scenario* picks what the completion holds:

* ``text``: an answer streamed word by word (the default);
* ``tools``: a short answer, then two tool calls whose JSON arguments arrive split in
  fragments that cut through keys and strings;
* ``choices``: two choices at once (``n=2``; Chat Completions and Gemini only, the
  others answer as ``text``);
* ``thinking``: reasoning streamed before the answer (Anthropic thinking blocks,
  Responses reasoning summaries, Gemini thought parts; Chat Completions as ``text``);
* ``error``: the provider's mid-stream error after a few words, then the server closes;
* ``drop``: half the answer, then the connection breaks (the server's
  :data:`DROP` marker: it closes without ending the body).
"""

from __future__ import annotations

import json
from typing import Any

SCENARIOS = ("text", "tools", "choices", "thinking", "error", "drop")
#: Put where the connection is to break without a proper end of body.
DROP = ("", "\x00drop")

Frame = tuple[str, str]  # (event type, "" for none; data)

#: The tool calls of the ``tools`` scenario and how their argument JSON is cut.
TOOLS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("get_weather", {"location": "Paris, France", "unit": "celsius"}),
    ("get_time", {"timezone": "Europe/Paris", "format": '24h "quoted" é'}),
)
THOUGHT = "The user asks something simple. I will answer briefly and clearly."


def _pieces(text: str, size: int = 7) -> list[str]:
    """Cut ``text`` every ``size`` characters: fragments that split keys and strings."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _j(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _ident(prefix: str, seed: str, index: int = 0) -> str:
    digits = "".join(f"{ord(c) * (index + 7) % 36:x}" for c in seed)[:24]
    return f"{prefix}{digits:0<24}"


def frames(
    fmt: str,
    tokens: list[str],
    *,
    scenario: str = "text",
    model: str,
    seed: str,
    input_tokens: int = 12,
    include_usage: bool = True,
    background: bool = False,
) -> list[Frame]:
    """Every event of one completion of ``tokens`` (words) in format ``fmt``."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    build = {
        "openai-chat": _chat,
        "openai-responses": _responses,
        "anthropic": _anthropic,
        "gemini": _gemini,
    }[fmt]
    cut = max(1, len(tokens) // 2)
    if scenario == "tools":
        tokens = tokens[:3]
    return build(
        tokens,
        scenario=scenario,
        model=model,
        seed=seed,
        input_tokens=input_tokens,
        include_usage=include_usage,
        background=background,
        cut=cut,
    )


# -- OpenAI Chat Completions ------------------------------------------------------------


def _chat(
    tokens: list[str], *, scenario: str, model: str, seed: str, cut: int, **kw: Any
) -> list[Frame]:
    base = {
        "id": _ident("chatcmpl-", seed),
        "object": "chat.completion.chunk",
        "created": 1_714_564_800,
        "model": model,
        "system_fingerprint": "fp_demo0000",
    }
    choices = 2 if scenario == "choices" else 1

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> Frame:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return ("", _j({**base, "choices": [choice]}))

    out: list[Frame] = [
        chunk(i, {"role": "assistant", "content": "", "refusal": None}) for i in range(choices)
    ]
    for number, token in enumerate(tokens):
        if scenario == "error" and number == cut:
            error = {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            return [*out, ("", _j({"error": error}))]
        if scenario == "drop" and number == cut:
            return [*out, DROP]
        for index in range(choices):
            out.append(chunk(index, {"content": token if index == 0 else token.upper()}))
    finish = "stop"
    if scenario == "tools":
        finish = "tool_calls"
        for number, (name, arguments) in enumerate(TOOLS):
            call_id = _ident("call_", seed, number)
            head = {
                "index": number,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            out.append(chunk(0, {"tool_calls": [head]}))
            for piece in _pieces(_j(arguments)):
                out.append(
                    chunk(0, {"tool_calls": [{"index": number, "function": {"arguments": piece}}]})
                )
    for index in range(choices):
        out.append(chunk(index, {}, finish))
    if kw.get("include_usage"):
        completion = len(tokens) * choices
        usage = {
            "prompt_tokens": kw["input_tokens"],
            "completion_tokens": completion,
            "total_tokens": kw["input_tokens"] + completion,
        }
        out.append(("", _j({**base, "choices": [], "usage": usage})))
    out.append(("", "[DONE]"))
    return out


# -- OpenAI Responses --------------------------------------------------------------------


def _responses(
    tokens: list[str], *, scenario: str, model: str, seed: str, cut: int, **kw: Any
) -> list[Frame]:
    response_id = _ident("resp_", seed)
    out: list[Frame] = []

    def emit(kind: str, **fields: Any) -> None:
        out.append((kind, _j({"type": kind, "sequence_number": len(out), **fields})))

    def response(status: str, output: list[Any], usage: Any = None) -> dict[str, Any]:
        return {
            "id": response_id,
            "object": "response",
            "created_at": 1_714_564_800,
            "status": status,
            "background": kw.get("background", False),
            "error": None,
            "incomplete_details": None,
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage,
        }

    emit("response.created", response=response("in_progress", []))
    emit("response.in_progress", response=response("in_progress", []))
    output: list[dict[str, Any]] = []
    if scenario == "thinking":
        reasoning_id = _ident("rs_", seed)
        item: dict[str, Any] = {"id": reasoning_id, "type": "reasoning", "summary": []}
        emit("response.output_item.added", output_index=0, item=item)
        summary = {"type": "summary_text", "text": ""}
        emit(
            "response.reasoning_summary_part.added",
            item_id=reasoning_id,
            output_index=0,
            summary_index=0,
            part=summary,
        )
        for piece in _pieces(THOUGHT, 11):
            emit(
                "response.reasoning_summary_text.delta",
                item_id=reasoning_id,
                output_index=0,
                summary_index=0,
                delta=piece,
            )
        emit(
            "response.reasoning_summary_text.done",
            item_id=reasoning_id,
            output_index=0,
            summary_index=0,
            text=THOUGHT,
        )
        done = {**item, "summary": [{"type": "summary_text", "text": THOUGHT}]}
        emit("response.output_item.done", output_index=0, item=done)
        output.append(done)
    index = len(output)
    message_id = _ident("msg_", seed)
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    emit("response.output_item.added", output_index=index, item=message)
    part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": []}
    emit(
        "response.content_part.added",
        item_id=message_id,
        output_index=index,
        content_index=0,
        part=part,
    )
    for number, token in enumerate(tokens):
        if scenario == "error" and number == cut:
            out.append(
                (
                    "error",
                    _j(
                        {
                            "type": "error",
                            "code": "server_error",
                            "message": "The model produced invalid content.",
                            "param": None,
                            "sequence_number": len(out),
                        }
                    ),
                )
            )
            return out
        if scenario == "drop" and number == cut:
            return [*out, DROP]
        emit(
            "response.output_text.delta",
            item_id=message_id,
            output_index=index,
            content_index=0,
            delta=token,
            logprobs=[],
        )
    text = "".join(tokens)
    emit(
        "response.output_text.done",
        item_id=message_id,
        output_index=index,
        content_index=0,
        text=text,
        logprobs=[],
    )
    part = {"type": "output_text", "text": text, "annotations": []}
    emit(
        "response.content_part.done",
        item_id=message_id,
        output_index=index,
        content_index=0,
        part=part,
    )
    message = {**message, "status": "completed", "content": [part]}
    emit("response.output_item.done", output_index=index, item=message)
    output.append(message)
    if scenario == "tools":
        for number, (name, arguments) in enumerate(TOOLS):
            index = len(output)
            item_id = _ident("fc_", seed, number)
            call = {
                "id": item_id,
                "type": "function_call",
                "status": "in_progress",
                "call_id": _ident("call_", seed, number),
                "name": name,
                "arguments": "",
            }
            emit("response.output_item.added", output_index=index, item=call)
            raw = _j(arguments)
            for piece in _pieces(raw):
                emit(
                    "response.function_call_arguments.delta",
                    item_id=item_id,
                    output_index=index,
                    delta=piece,
                )
            emit(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                arguments=raw,
            )
            call = {**call, "status": "completed", "arguments": raw}
            emit("response.output_item.done", output_index=index, item=call)
            output.append(call)
    usage = {
        "input_tokens": kw["input_tokens"],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": len(tokens),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": kw["input_tokens"] + len(tokens),
    }
    emit("response.completed", response=response("completed", output, usage))
    return out


# -- Anthropic Messages ------------------------------------------------------------------


def _anthropic(
    tokens: list[str], *, scenario: str, model: str, seed: str, cut: int, **kw: Any
) -> list[Frame]:
    out: list[Frame] = []

    def emit(kind: str, **fields: Any) -> None:
        out.append((kind, _j({"type": kind, **fields})))

    usage = {
        "input_tokens": kw["input_tokens"],
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    }
    message: dict[str, Any] = {
        "id": _ident("msg_", seed),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    emit("message_start", message=message)
    index = 0
    if scenario == "thinking":
        emit(
            "content_block_start",
            index=0,
            content_block={"type": "thinking", "thinking": "", "signature": ""},
        )
        for piece in _pieces(THOUGHT, 11):
            emit(
                "content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": piece}
            )
        emit(
            "content_block_delta",
            index=0,
            delta={"type": "signature_delta", "signature": "EqQBCgIYAhIM" + seed[:8]},
        )
        emit("content_block_stop", index=0)
        index = 1
    emit("content_block_start", index=index, content_block={"type": "text", "text": ""})
    emit("ping")
    for number, token in enumerate(tokens):
        if scenario == "error" and number == cut:
            emit("error", error={"type": "overloaded_error", "message": "Overloaded"})
            return out
        if scenario == "drop" and number == cut:
            return [*out, DROP]
        emit("content_block_delta", index=index, delta={"type": "text_delta", "text": token})
    emit("content_block_stop", index=index)
    stop = "end_turn"
    if scenario == "tools":
        stop = "tool_use"
        for number, (name, arguments) in enumerate(TOOLS):
            index += 1
            block = {
                "type": "tool_use",
                "id": _ident("toolu_", seed, number),
                "name": name,
                "input": {},
            }
            emit("content_block_start", index=index, content_block=block)
            for piece in _pieces(_j(arguments)):
                emit(
                    "content_block_delta",
                    index=index,
                    delta={"type": "input_json_delta", "partial_json": piece},
                )
            emit("content_block_stop", index=index)
    emit(
        "message_delta",
        delta={"stop_reason": stop, "stop_sequence": None},
        usage={"output_tokens": len(tokens)},
    )
    emit("message_stop")
    return out


# -- Gemini -------------------------------------------------------------------------------


def _gemini(
    tokens: list[str], *, scenario: str, model: str, seed: str, cut: int, **kw: Any
) -> list[Frame]:
    candidates = 2 if scenario == "choices" else 1
    response_id = _ident("", seed)[:22]
    out: list[Frame] = []

    def frame(
        parts_by_candidate: list[list[dict[str, Any]]], finish: str | None = None, usage: Any = None
    ) -> None:
        body: dict[str, Any] = {
            "candidates": [
                {
                    "content": {"parts": parts, "role": "model"},
                    "index": i,
                    **({"finishReason": finish} if finish else {}),
                }
                for i, parts in enumerate(parts_by_candidate)
            ],
            "usageMetadata": usage
            or {"promptTokenCount": kw["input_tokens"], "totalTokenCount": kw["input_tokens"]},
            "modelVersion": model,
            "responseId": response_id,
        }
        out.append(("", _j(body)))

    if scenario == "thinking":
        frame([[{"text": THOUGHT, "thought": True}]])
    for number, token in enumerate(tokens):
        if scenario == "error" and number == cut:
            error = {
                "code": 503,
                "message": "The model is overloaded. Please try again later.",
                "status": "UNAVAILABLE",
            }
            out.append(("", _j({"error": error})))
            return out
        if scenario == "drop" and number == cut:
            return [*out, DROP]
        frame([[{"text": token if i == 0 else token.upper()}] for i in range(candidates)])
    usage = {
        "promptTokenCount": kw["input_tokens"],
        "candidatesTokenCount": len(tokens) * candidates,
        "totalTokenCount": kw["input_tokens"] + len(tokens) * candidates,
    }
    last: list[list[dict[str, Any]]] = [[] for _ in range(candidates)]
    if scenario == "tools":
        last[0] = [{"functionCall": {"name": name, "args": arguments}} for name, arguments in TOOLS]
    frame(last, "STOP", usage)
    return out


def to_sse(events: list[Frame]) -> bytes:
    """The bytes a server sends for ``events`` (up to a :data:`DROP`)."""
    text = []
    for kind, data in events:
        if (kind, data) == DROP:
            break
        head = f"event: {kind}\n" if kind else ""
        text.append(head + "".join(f"data: {line}\n" for line in data.split("\n")) + "\n")
    return "".join(text).encode("utf-8")
