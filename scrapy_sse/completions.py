"""LLM completion streams on the spider side: one :class:`LLMCompletion` per request.

A stream request with ``meta["sse_llm"]`` (``"auto"`` or a format, see
:mod:`scrapy_sse.llm.assembly`) is read by :func:`completion_callback` instead of a
per-event callback: its events are assembled as they come, and the format's own end
(``message_stop``, ``response.completed``, ``[DONE]``) ends the stream as completed, so
it is never sent again. The completion leaves only once the stream's fate is known, in
:meth:`Completions.deliver`, which :class:`~scrapy_sse.reconnect.StreamEnds` calls
after the reconnect policy has decided: a stream sent again from scratch (an opted-in
retry, ``SSE_LLM_RETRIES``) gives no item for the attempt it abandons, so a request
yields exactly one completion, whole or marked ``complete=False`` with its error.

The assembly in the making lives in the request's ``meta`` (``sse_llm_state``): it
follows the request to its next connection when that one resumes it (event ids, or a
background OpenAI response resumed after its last sequence number), and is dropped
when a retry starts the completion anew.
"""

from __future__ import annotations

import contextlib
import json
import logging
from time import time
from typing import TYPE_CHECKING, Any

from .dispatch import _callback_failed, callback_output
from .errors import SSEResponseError
from .handler import SKIP_KEY
from .http import LLM_KEY, SENT_AT_KEY, redact_url
from .llm.assembly import BROKEN, CLOSED, DONE, LLMStream, llm_format
from .policy import COMPLETED, LLM_ERROR, SERVER_CLOSED
from .secrets import mask_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from scrapy import Request
    from scrapy.crawler import Crawler

    from .extension import SSEExtension
    from .http import SSEResponse
    from .llm.completion import LLMCompletion
    from .stream import SSEStream

logger = logging.getLogger(__name__)

#: ``meta`` key of the completion in the making (an :class:`LLMStream`).
STATE_KEY = "sse_llm_state"
#: ``meta`` key of the number of requests sent for this completion so far.
ATTEMPTS_KEY = "sse_llm_attempts"


def is_completion(request: Request) -> bool:
    return bool(request.meta.get(LLM_KEY))


def _state(request: Request) -> LLMStream:
    """The completion in the making of ``request`` (made at its first event)."""
    meta = request.meta
    state: LLMStream | None = meta.get(STATE_KEY)
    if state is None:
        state = meta[STATE_KEY] = LLMStream(llm_format(meta[LLM_KEY]), request.url)
        state.sent_at = meta.get(SENT_AT_KEY) or time()
    return state


def completion_callback(request: Request, idle: float) -> Callable[..., Any]:
    """The callback that reads an LLM completion stream: it assembles, and yields
    nothing itself (the completion is delivered once the stream's end is known)."""
    llm_format(request.meta[LLM_KEY])  # (a wrong name fails the first burst, loudly)

    async def assemble(response: SSEResponse, **_: Any) -> AsyncIterator[Any]:
        stream = response.stream
        assert stream is not None
        state = _state(stream.request)
        async for event in stream.burst(idle):
            started = state.started
            if state.feed(event.event, event.data):
                error = state.assembly is not None and state.assembly.error is not None
                stream.finish(LLM_ERROR if error else COMPLETED)
            if not started and state.started:
                state.ttft_s = time() - state.sent_at
        return
        yield  # (an async generator, as Scrapy's scraper expects of a callback)

    return assemble


def _end(stream: SSEStream) -> str:
    """How the stream ended, as an assembly weighs it."""
    if stream.end_reason == COMPLETED:
        return DONE
    return CLOSED if stream.end_reason == SERVER_CLOSED else BROKEN


def _failure(stream: SSEStream) -> dict[str, Any]:
    """Why a stream did not give a whole completion, for :attr:`LLMCompletion.error`."""
    error = stream.error
    if isinstance(error, SSEResponseError):
        body: Any = error.body.decode("utf-8", "replace")
        with contextlib.suppress(ValueError):  # (an API's JSON explanation, parsed)
            body = json.loads(body)
        return {
            "type": f"http_{error.status}",
            "status": error.status,
            "message": str(error),
            "body": body,
        }
    reason = stream.end_reason or "unknown"
    messages = {
        "connection_lost": "the connection broke before the completion's end",
        SERVER_CLOSED: "the server ended the stream before the completion's end",
    }
    return {"type": reason, "message": str(error) if error else messages.get(reason, reason)}


class Completions:
    """The crawl's LLM completions at the end of their streams (held by
    :class:`~scrapy_sse.reconnect.StreamEnds`)."""

    def __init__(self, crawler: Crawler, state: SSEExtension) -> None:
        self.crawler = crawler
        self.state = state

    def outcome(self, stream: SSEStream) -> dict[str, bool]:
        """What the reconnect policy must know of a completion stream: whether it is
        whole, whether it can be resumed (a background OpenAI response: event ids are
        not trusted to resume a completion, a server that ignores them would start a
        new one), and whether a retry may send it again (``SSE_LLM_RETRIES`` alone
        decides, whatever the method or ``SSE_RESEND_POST``)."""
        request = stream.request
        state: LLMStream | None = request.meta.get(STATE_KEY)
        finished = state is not None and state.complete(_end(stream))
        attempts = int(request.meta.get(ATTEMPTS_KEY, 1))
        retries = int(self.state.settings.for_request(request, "llm_retries") or 0)
        resumable = state is not None and state.resume_url(state.url) is not None
        final = state is not None and state.final
        return {
            "finished": finished,
            "resumable": resumable,
            "resend_allowed": not resumable and not final and attempts <= retries,
        }

    def refusal(self, stream: SSEStream) -> str | None:
        """Why a completion's connection that never opened must not be tried again
        although its status alone would be retried: OpenAI's ``insufficient_quota``
        429 does not clear by waiting."""
        error = stream.error
        if isinstance(error, SSEResponseError) and b"insufficient_quota" in error.body:
            return "insufficient_quota"
        return None

    def next_request(self, stream: SSEStream, kwargs: dict[str, Any]) -> None:
        """Adjust the next request of a completion stream (``kwargs`` of
        ``request.replace``): resume it where the provider allows it, else start it
        anew, its partial answer discarded."""
        meta = kwargs["meta"]
        state: LLMStream | None = meta.get(STATE_KEY)
        resume = state.resume_url(state.url) if state is not None else None
        stats = self.crawler.stats
        assert stats is not None
        if resume is not None:
            kwargs.update(url=resume, method="GET", body=b"")
            stats.inc_value("sse/llm/resumed")
            logger.info(
                "Resuming LLM completion of %s at %s", redact_url(stream.url), redact_url(resume)
            )
            return
        meta.pop(SKIP_KEY, None)  # (a new completion: nothing of the last one to skip)
        if stream.response is not None:  # (a connection that never opened billed nothing)
            meta[ATTEMPTS_KEY] = int(meta.get(ATTEMPTS_KEY, 1)) + 1
            stats.inc_value("sse/llm/retried")
            error = state.assembly.error if state and state.assembly else None
            logger.warning(
                "Sending the LLM request to %s again from scratch (attempt %d), its partial "
                "answer discarded: %s",
                redact_url(stream.url),
                meta[ATTEMPTS_KEY],
                error or _failure(stream)["message"],
            )
        meta.pop(STATE_KEY, None)

    async def deliver(self, stream: SSEStream) -> AsyncIterator[Any]:
        """The request's one completion: to its callback, or as the item."""
        request = stream.request
        meta = request.meta
        state = _state(request)
        completion = state.result(end=_end(stream), failure=_failure(stream))
        completion.url = mask_url(state.url, self.state.settings.secret_params)
        completion.attempts = int(meta.get(ATTEMPTS_KEY, 1))
        completion.ttft_s = state.ttft_s
        completion.duration_s = time() - state.sent_at
        self._count(completion, stream)
        callback = request.callback
        if callback is None:
            yield completion
            return
        try:
            result = callback(completion, **request.cb_kwargs)  # type: ignore[arg-type]
            async for value in callback_output(result):
                yield value
        except Exception as exc:
            async for value in _callback_failed(
                self.crawler,
                request,
                exc,
                what=f"LLM completion {completion.response_id!r}",
                failed=[],
                dead_letters=None,
                failure_attributes={"completion": completion},
            ):
                yield value

    def _count(self, completion: LLMCompletion, stream: SSEStream) -> None:
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value("sse/llm/completions")
        if completion.complete:
            stats.inc_value("sse/llm/complete")
            return
        error = completion.error or {}
        kind = str(error.get("type") or error.get("code") or error.get("status") or "unknown")
        stats.inc_value("sse/llm/incomplete")
        stats.inc_value(f"sse/llm/incomplete/{kind}")
        logger.warning(
            "LLM completion from %s is incomplete (%s: %s) after %d event(s); it is "
            "delivered with complete=False",
            redact_url(completion.url),
            kind,
            error.get("message", error),
            completion.events,
            extra={"spider": self.crawler.spider},
        )
        if self.state.settings.dead_letters:
            self.state.dead_letters.record(
                "llm_incomplete",
                item=completion,
                url=completion.url,
                error=f"{kind}: {error.get('message', error)}",
                spider=self.crawler.spider,
            )
