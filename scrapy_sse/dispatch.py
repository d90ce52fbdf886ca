"""How a stream's events reach the spider: the callback Scrapy actually calls.

Scrapy calls ``response.request.callback(response)`` for a response (for a stream, once
per burst). The spider middleware sets that request's callback to one of the
functions built here, which iterate the stream and turn each event into the spider's
output, so that items and requests go through the scraper, spider middlewares and
item pipelines exactly as usual:

* ``SSERequest(callback=cb)``: ``cb(event, **cb_kwargs)`` once per event.
* no callback, spider defines ``parse``: ``parse(response)`` as Scrapy always does;
  it reads ``response.events``.
* no callback and no ``parse``: one :class:`~scrapy_sse.SSEEventItem` per event.

Being async generators, these are pulled by the scraper only as fast as the item
pipelines accept output, which is what lets the stream queue apply backpressure.

The first two end their output once the stream has been idle for ``idle`` seconds
(``SSE_RELEASE_IDLE_CHAIN``), leaving the stream :attr:`~scrapy_sse.SSEStream.resting`:
the spider middleware then hands the response to the scraper again when the next event
comes, so a quiet stream holds no spider-middleware chain and no worker task. A
spider's own ``parse(response)`` reads the stream in one call, so it keeps one chain.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from time import time
from types import GeneratorType
from typing import TYPE_CHECKING, Any, cast

from itemadapter import is_item
from scrapy import Request
from scrapy.exceptions import CloseSpider
from twisted.python.failure import Failure

from .events import SSEBatch, SSEEventItem, parse_json_or_none
from .extension import sse_state
from .http import read_by_parse

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from scrapy.crawler import Crawler

    from .deadletter import DeadLetters
    from .extension import SSEExtension
    from .http import SSEResponse

logger = logging.getLogger(__name__)


async def callback_output(result: Any) -> AsyncIterator[Any]:
    """What a callback (or errback) returned, as Scrapy would iterate it."""
    if result is None:
        return
    if isinstance(result, (Request, dict)) or is_item(result):
        yield result
        return
    if hasattr(result, "__anext__"):
        async for value in result:
            yield value
        return
    if inspect.isawaitable(result):
        async for value in callback_output(await result):
            yield value
        return
    if isinstance(result, (str, bytes)) or not hasattr(result, "__iter__"):
        yield result
        return
    for value in result:
        yield value


def build_callback(
    request: Request, crawler: Crawler, state: SSEExtension, idle: float
) -> Callable[..., Any] | None:
    """The callback Scrapy must call for the response of ``request`` (``None``: keep
    the request's own, i.e. the spider's ``parse(response)``). Its output ends after
    ``idle`` seconds without an event (0: only when the stream ends)."""
    spider = crawler.spider
    assert spider is not None
    event_callback = cast("Callable[..., Any] | None", request.callback)
    dead_letters = state.dead_letters if state.settings.dead_letters else None

    batch_size = getattr(request, "batch_size", None)
    if read_by_parse(request, spider):
        return None
    if batch_size:
        return _batch_callback(
            event_callback,
            size=batch_size,
            interval=getattr(request, "batch_interval", 0.05),
            idle=idle,
            request=request,
            crawler=crawler,
            dead_letters=dead_letters,
        )

    if event_callback is None:

        async def events_as_items(response: SSEResponse, **_: Any) -> AsyncIterator[Any]:
            stream = response.stream
            assert stream is not None
            url = response.safe_url  # (credentials masked: items are records)
            async for event in stream.burst(idle):
                data = event.data
                json = parse_json_or_none(data)
                yield SSEEventItem(url, event.event, event.id, data, json, time())

        return events_as_items

    async def per_event(response: SSEResponse, **kwargs: Any) -> AsyncIterator[Any]:
        stream = response.stream
        assert stream is not None
        async for event in stream.burst(idle):
            try:
                result = event_callback(event, **kwargs)
                if result is None:
                    continue
                # The two shapes most callbacks have, without an extra generator layer.
                kind = type(result)
                if kind is dict:
                    yield result
                elif kind is GeneratorType:
                    for value in result:
                        yield value
                else:
                    async for value in callback_output(result):
                        yield value
            except CloseSpider:
                raise  # Scrapy closes the spider, as from any callback
            except Exception as exc:
                async for value in _callback_failed(
                    crawler,
                    request,
                    exc,
                    what=f"SSE event {event!r}",
                    failed=[event],
                    dead_letters=dead_letters,
                    failure_attributes={"event": event},
                ):
                    yield value

    return per_event


def _batch_callback(
    event_callback: Callable[..., Any] | None,
    *,
    size: int,
    interval: float,
    idle: float,
    request: Request,
    crawler: Crawler,
    dead_letters: DeadLetters | None,
) -> Callable[..., Any]:
    """Batch delivery: one callback call (or one list item) per batch of events."""

    async def per_batch(response: SSEResponse, **kwargs: Any) -> AsyncIterator[Any]:
        stream = response.stream
        assert stream is not None
        async for events in stream.batches(size, interval, idle):
            batch = SSEBatch(events, response)
            if event_callback is None:
                # The batch itself is the item: a batching sink turns each event into
                # the columns of an SSEEventItem as it writes, so no per-event item (or
                # JSON parse) is made for a pipeline that does not store it.
                yield batch
                continue
            try:
                async for value in callback_output(event_callback(batch, **kwargs)):
                    yield value
            except CloseSpider:
                raise
            except Exception as exc:
                what = f"a batch of {len(batch)} SSE events (ids {batch[0].id!r}..{batch[-1].id!r})"
                async for value in _callback_failed(
                    crawler,
                    request,
                    exc,
                    what=what,
                    failed=batch,
                    dead_letters=dead_letters,
                    failure_attributes={"events": batch},
                ):
                    yield value

    return per_batch


async def _callback_failed(
    crawler: Crawler,
    request: Request,
    exc: Exception,
    *,
    what: str,
    failed: list[Any],
    dead_letters: DeadLetters | None,
    failure_attributes: dict[str, Any],
) -> AsyncIterator[Any]:
    """One place for a callback that raised: count it, log it with the event(s),
    keep them as dead letters if asked, and hand the failure to the errback, whose
    output is processed as usual. The stream goes on either way."""
    stats = crawler.stats
    assert stats is not None
    stats.inc_value("sse/callback_errors")
    stats.inc_value(f"sse/callback_errors/{type(exc).__name__}")
    # A callback that fails on every event would log a traceback per event: the first
    # of each kind per stream has it, repeats are summed up at the 2nd, 4th, 8th...
    counts = sse_state(crawler).callback_errors
    key = (request.url, type(exc).__name__)
    count = counts[key] = counts.get(key, 0) + 1
    if count == 1:
        logger.error(
            "Spider callback failed on %s from %s",
            what,
            request.url,
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"spider": crawler.spider},
        )
    elif count & (count - 1) == 0:
        logger.error(
            "Spider callback failed again on %s from %s: %s: %s (%d times on this stream "
            "so far; a traceback was logged for the first; repeats are logged at the 2nd, "
            "4th, 8th...; all are counted in sse/callback_errors)",
            what,
            request.url,
            type(exc).__name__,
            exc,
            count,
            extra={"spider": crawler.spider},
        )
    else:
        logger.debug(
            "Spider callback failed on %s: %r", what, exc, extra={"spider": crawler.spider}
        )
    if dead_letters is not None:
        for event in failed:
            dead_letters.record("callback_error", event=event, error=exc, spider=crawler.spider)
    if request.errback is None:
        return
    failure = Failure(exc)
    failure.request = request  # type: ignore[attr-defined]
    for name, value in failure_attributes.items():
        setattr(failure, name, value)
    try:
        async for output in callback_output(request.errback(failure)):
            yield output
    except Exception:
        logger.error("Errback failed for %s", what, exc_info=True, extra={"spider": crawler.spider})
