"""Assembling an LLM completion from its stream's events: one class per wire format.

Sans-IO and standard library only: each :class:`Assembly` is fed ``(event type, data)``
pairs as the SSE parser made them and knows nothing of sockets, Scrapy or clocks. They
follow what the vendors' own SDKs do with the same events (openai-python's
``ChatCompletionStreamState`` and ``ResponseStreamState``, anthropic-python's
``accumulate_event``), which the tests check on the same bytes:

* ``openai-chat``: ``choices[].delta`` per chunk, tool-call argument fragments joined by
  ``index``, ``finish_reason`` per choice, usage from the last chunk that has one (the
  ``include_usage`` chunk with empty ``choices``), ``[DONE]`` at the end.
* ``openai-responses``: typed events with a ``sequence_number``; text and function-call
  argument deltas per output item, ``response.completed`` (or ``incomplete``/``failed``)
  at the end, with the usage. Background responses can be resumed after the last
  sequence number.
* ``anthropic``: ``message_start``, ``content_block_start/delta/stop`` (text, tool
  input JSON, thinking), ``message_delta`` (stop reason, cumulative usage),
  ``message_stop`` at the end; ``ping`` ignored; ``error`` mid-stream.
* ``gemini``: every event a whole ``GenerateContentResponse``; the last one carries
  ``finishReason`` and ``usageMetadata``, then the server closes (no end marker).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .completion import LLMCompletion

#: Accepted values of ``meta["sse_llm"]`` besides ``"auto"``.
FORMATS = ("openai-chat", "openai-responses", "anthropic", "gemini")

PROVIDERS = {
    "openai-chat": "openai",
    "openai-responses": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
}


def _json(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def parse_arguments(raw: str) -> Any:
    """Tool-call arguments: the JSON value the fragments spell, or the raw string when
    they do not spell one (a model can stream invalid JSON; nothing is lost)."""
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return raw


#: How a stream ended, as :meth:`Assembly.complete` weighs it.
DONE = "done"  # the format's end, or the stream's done marker (``[DONE]``)
CLOSED = "closed"  # the server ended the body
BROKEN = "broken"  # the connection broke, or the stream was stopped

#: Errors in reading an event's fields: the event was not of the shape its format has.
_MALFORMED = (TypeError, ValueError, KeyError, AttributeError, IndexError)


class Assembly:
    """What every format's assembly has; subclasses read their own events. Text comes
    in many small deltas: it is kept as lists of parts, joined once at the end."""

    format = ""

    def __init__(self) -> None:
        self.model: str | None = None
        self.response_id: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        #: The error is the provider's answer, which sending the request again would
        #: not change (a blocked prompt).
        self.final = False
        #: The format's own end arrived (its terminal event).
        self.ended = False
        #: Some content (text, tool call, thinking) has arrived: for time to first token.
        self.started = False
        self.events = 0
        self.refusal: list[str] = []

    def feed(self, event: str, data: str) -> bool:
        """Read one event; ``True`` once the format's end (or an error) has arrived,
        after which nothing more belongs to this completion. An event not of its
        format's shape ends it too, with a ``malformed_event`` error: never an
        exception into the crawl, never a guess."""
        if self.ended:
            return True
        self.events += 1
        value = _json(data)
        if isinstance(value, dict):
            try:
                self._read(event, value)
            except _MALFORMED as exc:
                self._fail(
                    {
                        "type": "malformed_event",
                        "message": f"{type(exc).__name__}: {exc}",
                        "data": data[:200],
                    }
                )
        return self.ended

    def _read(self, event: str, value: dict[str, Any]) -> None:
        raise NotImplementedError

    def complete(self, end: str) -> bool:
        """Whether the completion is whole, given how its stream ended (:data:`DONE`,
        :data:`CLOSED` or :data:`BROKEN`): its end arrived and no error did."""
        return self.ended and self.error is None

    def resume_url(self, url: str) -> str | None:
        """Where a dropped stream can be resumed without a new completion (``None``:
        it cannot be)."""
        return None

    def _fail(self, error: Any) -> None:
        self.error = error if isinstance(error, dict) else {"message": str(error)}
        self.ended = True

    def result(self) -> LLMCompletion:
        raise NotImplementedError

    def _one_choice(
        self,
        text: list[str],
        calls: list[dict[str, Any]],
        thinking: list[str],
        finish_reason: str | None,
    ) -> LLMCompletion:
        """The completion of a format with one answer per response."""
        joined = "".join(text)
        return self._completion(
            text=joined,
            texts=[joined],
            tool_calls=calls,
            thinking="".join(thinking),
            finish_reason=finish_reason,
        )

    def _completion(self, **fields: Any) -> LLMCompletion:
        return LLMCompletion(
            provider=PROVIDERS[self.format],
            format=self.format,
            model=self.model,
            response_id=self.response_id,
            usage=self.usage,
            error=self.error,
            events=self.events,
            refusal="".join(self.refusal),
            **fields,
        )


class _Choice:
    __slots__ = ("finish_reason", "parts", "tools")

    def __init__(self) -> None:
        self.parts: list[str] = []
        #: Tool calls by index: ``{"id", "name", "arguments": [fragments]}``.
        self.tools: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None


def _calls(choices: dict[int, _Choice]) -> list[dict[str, Any]]:
    """The tool calls of every choice, in order (``"choice"`` when there are several)."""
    several = len(choices) > 1
    calls = []
    for number in sorted(choices):
        tools = choices[number].tools
        for index in sorted(tools):
            tool = tools[index]
            arguments = tool["arguments"]
            call = {
                "id": tool["id"],
                "name": tool["name"],
                "arguments": parse_arguments("".join(arguments))
                if isinstance(arguments, list)
                else arguments,
            }
            if several:
                call["choice"] = number
            calls.append(call)
    return calls


class OpenAIChat(Assembly):
    format = "openai-chat"

    def __init__(self) -> None:
        super().__init__()
        self.choices: dict[int, _Choice] = {}

    def feed(self, event: str, data: str) -> bool:
        if data == "[DONE]":  # (also when SSE_DONE_DATA lets it through)
            self.ended = True
        return super().feed(event, data)

    def _read(self, event: str, value: dict[str, Any]) -> None:
        if "error" in value and "choices" not in value:
            self._fail(value["error"])
            return
        self.response_id = value.get("id") or self.response_id
        self.model = value.get("model") or self.model
        if value.get("usage") is not None:
            self.usage = value["usage"]
        for choice in value.get("choices") or ():
            index = int(choice.get("index") or 0)
            state = self.choices.get(index)
            if state is None:
                state = self.choices[index] = _Choice()
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                state.parts.append(content)
                self.started = True
            if delta.get("refusal") and index == 0:
                self.refusal.append(delta["refusal"])
                self.started = True
            for fragment in delta.get("tool_calls") or ():
                self.started = True
                tool = state.tools.setdefault(
                    int(fragment.get("index") or 0), {"id": None, "name": "", "arguments": []}
                )
                if fragment.get("id"):
                    tool["id"] = fragment["id"]
                function = fragment.get("function") or {}
                if function.get("name"):
                    tool["name"] += function["name"]
                if function.get("arguments"):
                    tool["arguments"].append(function["arguments"])
            if choice.get("finish_reason"):
                state.finish_reason = choice["finish_reason"]

    def complete(self, end: str) -> bool:
        if self.error is not None:
            return False
        # ``[DONE]``; or, from servers that only close, a clean close once every choice
        # has its finish reason.
        return (
            self.ended
            or end == DONE
            or (
                end == CLOSED
                and bool(self.choices)
                and all(choice.finish_reason for choice in self.choices.values())
            )
        )

    def result(self) -> LLMCompletion:
        ordered = [self.choices[i] for i in sorted(self.choices)]
        texts = ["".join(choice.parts) for choice in ordered]
        return self._completion(
            text=texts[0] if texts else "",
            texts=texts,
            tool_calls=_calls(self.choices),
            finish_reason=ordered[0].finish_reason if ordered else None,
        )


class OpenAIResponses(Assembly):
    format = "openai-responses"

    def __init__(self) -> None:
        super().__init__()
        # Output items by output_index: {"type", "text": {content_index: [parts]},
        # "id", "name", "arguments": [fragments] or the whole string, "thinking": [...]}.
        self.items: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None
        self.background = False
        self.sequence: int | None = None

    def _read(self, event: str, value: dict[str, Any]) -> None:
        kind = value.get("type") or event
        if isinstance(value.get("sequence_number"), int):
            self.sequence = value["sequence_number"]
        response = value.get("response")
        if isinstance(response, dict):
            self.response_id = response.get("id") or self.response_id
            self.model = response.get("model") or self.model
            self.background = bool(response.get("background")) or self.background
        if kind in {"response.output_item.added", "response.output_item.done"}:
            item = value.get("item") or {}
            state = self._item(value)
            state["type"] = item.get("type")
            done = kind.endswith(".done")
            if item.get("type") == "function_call":
                self.started = True
                state["id"] = item.get("call_id")
                state["name"] = item.get("name") or ""
                if done or item.get("arguments"):
                    state["arguments"] = [item.get("arguments") or "".join(state["arguments"])]
            elif item.get("type") == "message" and done:
                for index, part in enumerate(item.get("content") or ()):
                    if part.get("type") == "output_text":
                        state["text"][index] = [part.get("text", "")]
                    elif part.get("type") == "refusal":
                        self.refusal[:] = [part.get("refusal", "")]
            elif item.get("type") == "reasoning" and done:
                summary = item.get("summary") or ()
                state["thinking"] = [part.get("text", "") for part in summary]
        elif kind == "response.output_text.delta":
            self.started = True
            parts = self._item(value)["text"]
            parts.setdefault(int(value.get("content_index") or 0), []).append(
                value.get("delta") or ""
            )
        elif kind == "response.output_text.done":
            index = int(value.get("content_index") or 0)
            self._item(value)["text"][index] = [value.get("text", "")]
        elif kind == "response.refusal.delta":
            self.started = True
            self.refusal.append(value.get("delta") or "")
        elif kind == "response.refusal.done":
            self.refusal[:] = [value.get("refusal", "")]
        elif kind == "response.function_call_arguments.delta":
            self.started = True
            self._item(value)["arguments"].append(value.get("delta") or "")
        elif kind == "response.function_call_arguments.done":
            self._item(value)["arguments"] = [value.get("arguments", "")]
        elif kind == "response.reasoning_summary_text.delta":
            self.started = True
            self._item(value)["thinking"].append(value.get("delta") or "")
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            if not isinstance(response, dict):
                raise TypeError(f"{kind} without its response")
            self.usage = response.get("usage") or self.usage
            details = response.get("incomplete_details") or {}
            self.finish = details.get("reason") or response.get("status")
            if kind == "response.failed":
                self._fail(response.get("error") or {"message": "response failed"})
            self.ended = True
        elif kind == "error":
            self._fail({k: v for k, v in value.items() if k not in ("type", "sequence_number")})

    def _item(self, value: dict[str, Any]) -> dict[str, Any]:
        index = int(value.get("output_index") or 0)
        state = self.items.get(index)
        if state is None:
            state = self.items[index] = {"type": None, "text": {}, "arguments": [], "thinking": []}
        return state

    def resume_url(self, url: str) -> str | None:
        """``GET /responses/{id}?stream=true&starting_after=N``: what OpenAI offers a
        background response whose stream dropped before its end."""
        if self.ended or not self.background or not self.response_id or self.sequence is None:
            return None
        parts = urlsplit(url)
        path = parts.path.rstrip("/")
        if not path.endswith("/responses"):
            return None
        query = f"stream=true&starting_after={self.sequence}"
        return urlunsplit((parts.scheme, parts.netloc, f"{path}/{self.response_id}", query, ""))

    def result(self) -> LLMCompletion:
        text: list[str] = []
        calls = []
        thinking: list[str] = []
        for index in sorted(self.items):
            state = self.items[index]
            if state["type"] == "function_call":
                calls.append(
                    {
                        "id": state.get("id"),
                        "name": state.get("name", ""),
                        "arguments": parse_arguments("".join(state["arguments"])),
                    }
                )
            for content in sorted(state["text"]):
                text.extend(state["text"][content])
            thinking.extend(state["thinking"])
        return self._one_choice(text, calls, thinking, self.finish)


class Anthropic(Assembly):
    format = "anthropic"

    def __init__(self) -> None:
        super().__init__()
        # Content blocks by index: their start's fields, plus lists of parts.
        self.blocks: dict[int, dict[str, Any]] = {}
        self.stop_reason: str | None = None

    def _block(self, index: int, start: dict[str, Any] | None = None) -> dict[str, Any]:
        block = self.blocks.get(index)
        if block is None or start is not None:
            block = self.blocks[index] = {
                **(start or {"type": "text"}),
                "parts": [],
                "json": [],
            }
        return block

    def _read(self, event: str, value: dict[str, Any]) -> None:
        kind = value.get("type") or event
        if kind == "message_start":
            message = value.get("message") or {}
            self.response_id = message.get("id")
            self.model = message.get("model")
            self.usage = dict(message.get("usage") or {})
        elif kind == "content_block_start":
            block = self._block(
                int(value.get("index") or 0), dict(value.get("content_block") or {})
            )
            if block.get("type") in ("tool_use", "server_tool_use"):
                self.started = True
        elif kind == "content_block_delta":
            block = self._block(int(value.get("index") or 0))
            delta = value.get("delta") or {}
            delta_type = delta.get("type")
            self.started = True
            if delta_type == "text_delta":
                block["parts"].append(delta.get("text", ""))
            elif delta_type == "input_json_delta":
                block["json"].append(delta.get("partial_json", ""))
            elif delta_type == "thinking_delta":
                block["parts"].append(delta.get("thinking", ""))
            elif delta_type == "signature_delta":
                block["signature"] = delta.get("signature")
        elif kind == "message_delta":
            delta = value.get("delta") or {}
            self.stop_reason = delta.get("stop_reason")
            # Cumulative totals: they overwrite; those left out keep message_start's.
            usage = self.usage if self.usage is not None else {}
            for name, count in (value.get("usage") or {}).items():
                if count is not None:
                    usage[name] = count
            self.usage = usage
        elif kind == "message_stop":
            self.ended = True
        elif kind == "error":
            self._fail(value.get("error") or value)

    def result(self) -> LLMCompletion:
        text = []
        calls = []
        thinking = []
        for index in sorted(self.blocks):
            block = self.blocks[index]
            kind = block.get("type")
            if kind == "text":
                text.append(block.get("text", "") + "".join(block["parts"]))
            elif kind in ("tool_use", "server_tool_use"):
                raw = "".join(block["json"])
                arguments = parse_arguments(raw) if raw else block.get("input", {})
                calls.append(
                    {"id": block.get("id"), "name": block.get("name", ""), "arguments": arguments}
                )
            elif kind == "thinking":
                thinking.append(block.get("thinking", "") + "".join(block["parts"]))
        return self._one_choice(text, calls, thinking, self.stop_reason)


class Gemini(Assembly):
    format = "gemini"

    def __init__(self) -> None:
        super().__init__()
        self.candidates: dict[int, _Choice] = {}
        self.thoughts: list[str] = []

    def _read(self, event: str, value: dict[str, Any]) -> None:
        if "error" in value and "candidates" not in value:
            self._fail(value["error"])
            return
        self.response_id = value.get("responseId") or self.response_id
        self.model = value.get("modelVersion") or self.model
        if value.get("usageMetadata") is not None:
            self.usage = value["usageMetadata"]
        blocked = (value.get("promptFeedback") or {}).get("blockReason")
        if blocked and not value.get("candidates"):
            # The prompt itself was refused: the answer, not a fault to retry.
            self.final = True
            self._fail({"type": "prompt_blocked", "reason": blocked, **value["promptFeedback"]})
            return
        for candidate in value.get("candidates") or ():
            index = int(candidate.get("index") or 0)
            state = self.candidates.get(index)
            if state is None:
                state = self.candidates[index] = _Choice()
            for part in (candidate.get("content") or {}).get("parts") or ():
                if "functionCall" in part:
                    self.started = True
                    call = part["functionCall"] or {}
                    state.tools[len(state.tools)] = {
                        "id": call.get("id"),
                        "name": call.get("name", ""),
                        "arguments": call.get("args", {}),
                    }
                elif part.get("thought"):
                    self.started = True
                    if index == 0:
                        self.thoughts.append(part.get("text", ""))
                elif part.get("text"):
                    self.started = True
                    state.parts.append(part["text"])
            if candidate.get("finishReason"):
                state.finish_reason = candidate["finishReason"]

    def complete(self, end: str) -> bool:
        # No end marker: the last frame has every candidate's finishReason, then the
        # server closes. A break after it may have cut the usage frame: not whole.
        return (
            self.error is None
            and end in (DONE, CLOSED)
            and bool(self.candidates)
            and all(state.finish_reason for state in self.candidates.values())
        )

    def result(self) -> LLMCompletion:
        ordered = [self.candidates[i] for i in sorted(self.candidates)]
        texts = ["".join(state.parts) for state in ordered]
        return self._completion(
            text=texts[0] if texts else "",
            texts=texts,
            tool_calls=_calls(self.candidates),
            thinking="".join(self.thoughts),
            finish_reason=ordered[0].finish_reason if ordered else None,
        )


_CLASSES: dict[str, type[Assembly]] = {
    "openai-chat": OpenAIChat,
    "openai-responses": OpenAIResponses,
    "anthropic": Anthropic,
    "gemini": Gemini,
}


def format_from_url(url: str) -> str | None:
    """The format a well-known endpoint streams (``None``: not known from the URL)."""
    path = urlsplit(url).path
    if ":streamGenerateContent" in path:
        return "gemini"
    if path.endswith("/chat/completions"):
        return "openai-chat"
    if path.endswith("/messages"):
        return "anthropic"
    if "/responses" in path:
        return "openai-responses"
    return None


def format_from_event(event: str, data: str) -> str | None:
    """The format one event belongs to (``None``: this event does not tell)."""
    value = _json(data)
    if not isinstance(value, dict):
        return None
    kind = value.get("type") or event
    if isinstance(kind, str):
        if kind.startswith("response."):
            return "openai-responses"
        if kind.startswith(("message_", "content_block_")):
            return "anthropic"
    if value.get("object") == "chat.completion.chunk" or "choices" in value:
        return "openai-chat"
    if "candidates" in value or "usageMetadata" in value or "promptFeedback" in value:
        return "gemini"
    error = value.get("error")
    if isinstance(error, dict):  # (an error before anything else: whose shape is it?)
        if kind == "error":
            return "anthropic"
        return "gemini" if "status" in error and "code" in error else "openai-chat"
    return None


def new_assembly(name: str) -> Assembly:
    """The assembly for a format name (one of :data:`FORMATS`)."""
    return _CLASSES[name]()


class LLMStream:
    """One request's completion in the making, across the connections it takes.

    Picks the format (``"auto"``: from the URL, else from the first event that tells;
    events before that, such as pings, are counted and otherwise skipped), feeds the
    events to its assembly and builds the :class:`LLMCompletion` at the end. Plain
    data, so it pickles with a ``JOBDIR`` request that resumes it.
    """

    def __init__(self, name: str, url: str) -> None:
        if name == "auto":
            known = format_from_url(url)
            self.assembly: Assembly | None = new_assembly(known) if known else None
        else:
            self.assembly = new_assembly(name)
        self.skipped = 0
        #: The URL the completion was asked of (a resume may read another).
        self.url = url
        #: When its request was sent (``time.time()``), and the seconds from then to
        #: the first content: set by whoever reads the clock.
        self.sent_at = 0.0
        self.ttft_s: float | None = None

    @property
    def started(self) -> bool:
        return self.assembly is not None and self.assembly.started

    def feed(self, event: str, data: str) -> bool:
        """Read one event; ``True`` once the completion's end (or an error) came."""
        if self.assembly is None:
            name = format_from_event(event, data)
            if name is None:
                self.skipped += 1
                return False
            self.assembly = new_assembly(name)
            self.assembly.events = self.skipped
        return self.assembly.feed(event, data)

    def complete(self, end: str) -> bool:
        """Whether the completion is whole, given how its stream ended (:data:`DONE`,
        :data:`CLOSED` or :data:`BROKEN`)."""
        return self.assembly is not None and self.assembly.complete(end)

    @property
    def final(self) -> bool:
        """Its error is the provider's answer (a blocked prompt): a retry cannot help."""
        return self.assembly is not None and self.assembly.final

    def resume_url(self, url: str) -> str | None:
        return self.assembly.resume_url(url) if self.assembly is not None else None

    def result(self, *, end: str, failure: dict[str, Any] | None) -> LLMCompletion:
        """The completion as it stands. ``failure``: why the stream ended, when it did
        not end whole (the provider's own error, if it sent one, wins)."""
        if self.assembly is None:
            completion = LLMCompletion(events=self.skipped)
        else:
            completion = self.assembly.result()
        completion.complete = self.complete(end)
        if not completion.complete and completion.error is None:
            completion.error = failure or {
                "type": "incomplete",
                "message": "the stream ended before the completion's end",
            }
        return completion


def llm_format(value: object) -> str:
    """The format named by ``meta["sse_llm"]`` (``True`` means ``"auto"``), checked."""
    name = "auto" if value is True else str(value)
    if name != "auto" and name not in FORMATS:
        raise ValueError(
            f"Unknown LLM stream format {name!r}: use 'auto' or one of {', '.join(FORMATS)}"
        )
    return name
