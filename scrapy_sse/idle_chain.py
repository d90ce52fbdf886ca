"""Spider-middleware chains for streams, built per burst of output and released while
a stream is idle.

Scrapy runs a callback's output through one chain of async generators per response
(each spider middleware's ``process_spider_output`` plus Scrapy's own wrappers, about
30 of them with the default middlewares). A page's chain lives for a moment; a stream's
would live for hours, suspended while the stream is quiet, at ~13 KiB each: with
10,000 mostly quiet streams, a third of the crawl's memory.

Here a stream's output goes through a chain while it flows. When the callback has been
waiting for ``idle`` seconds (for its next event, usually), the chain is finished and
freed, and the callback's pending step is carried, still waiting, outside any chain;
when it produces something, a new chain is built for the next burst. Nothing is lost
or reordered: the step that was waiting is the same one, and whatever it returns or
raises is handed to the new chain as the callback's next output or exception.

What a middleware sees: ``process_spider_output`` is called once per burst of a
stream's output, not once per stream (code after its loop runs at the end of each
burst). The callback itself runs in the crawl's task as before; the waiting is done by
stepping its awaitable by hand (what ``await`` does), so there is no task per item, and
while output flows the only cost is one generator per item.
"""

from __future__ import annotations

import asyncio
import functools
import types
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

__all__ = ["is_released", "released_chains"]

#: Responses whose output is parked outside any chain right now.
_released: weakref.WeakSet[Any] = weakref.WeakSet()


def is_released(response: Any) -> bool:
    """Whether the chain now ending for ``response`` ends because its callback went
    idle (a new chain follows), not because the callback is done. A middleware with
    code after its output loop checks this to run that code once per response."""
    return response in _released


#: Builds the spider-middleware chain for one burst: Scrapy's
#: ``SpiderMiddlewareManager._process_callback_output(response, output)``.
BuildChain = Callable[[Any, AsyncIterator[Any]], Awaitable[AsyncIterator[Any]]]


async def released_chains(
    build: BuildChain,
    response: Any,
    output: AsyncIterator[Any],
    idle: float,
    ready: Callable[[Any], bool] = lambda response: False,
) -> AsyncIterator[Any]:
    """The processed output of a stream callback, through one chain per burst.

    While ``ready(response)`` (events are queued, so the callback is not about to wait
    for one) its next output is taken as Scrapy would, with no idle watch at all."""
    carried: _Outcome | None = None
    burst: _Burst | None = None
    try:
        while True:
            burst = _Burst(response, output, idle, carried, ready)
            carried = None  # (held by the burst until used: not through the next idle)
            async for item in await build(response, burst):
                yield item
            if burst.parked is None:
                return  # the callback is done (or failed, and its chain handled it)
            step, waiting_on = burst.parked
            burst = None
            try:
                carried = _Outcome(await _finish(step, waiting_on), None)
            except Exception as exc:
                # Its end (StopAsyncIteration) included: the middlewares see it in a
                # chain of its own, as they would have without the release.
                carried = _Outcome(None, exc)
            _released.discard(response)
    finally:
        _released.discard(response)
        if burst is not None and burst.parked is not None:
            # The output ends here (the chain failed or was closed after the release):
            # the callback's waiting step ends too, running its ``finally`` blocks.
            _close(burst.parked[0])


def _close(step: Generator[Any, Any, Any]) -> None:
    """Close a parked step and the callback inside it. (Up to Python 3.12, closing an
    async generator's ``asend`` leaves the generator itself marked running: throw
    GeneratorExit into it, which reaches the callback at its ``await``.)"""
    try:
        step.throw(GeneratorExit)
    except (GeneratorExit, StopIteration, StopAsyncIteration):
        return
    raise RuntimeError("a stream callback kept running after GeneratorExit")


class _Outcome:
    __slots__ = ("error", "value")

    def __init__(self, value: Any, error: Exception | None) -> None:
        self.value = value
        self.error = error

    def get(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class _Burst:
    """The callback's output for one chain: ends when the callback has waited ``idle``
    seconds for its next item (``parked`` then holds that waiting step)."""

    __slots__ = ("_carried", "_idle", "_output", "_ready", "_response", "parked")

    def __init__(
        self,
        response: Any,
        output: AsyncIterator[Any],
        idle: float,
        carried: _Outcome | None,
        ready: Callable[[Any], bool],
    ) -> None:
        self._response = response
        self._output = output
        self._ready = ready
        self._idle = idle
        self._carried = carried
        self.parked: tuple[Generator[Any, Any, Any], Any] | None = None

    def __aiter__(self) -> _Burst:
        return self

    def __anext__(self) -> Awaitable[Any]:
        if self._carried is None and self.parked is None and self._ready(self._response):
            return self._output.__anext__()
        return _next(self)


@types.coroutine
def _next(burst: _Burst) -> Generator[Any, Any, Any]:
    """One step of the callback's output, waiting at most ``idle`` seconds on it."""
    if burst._carried is not None:
        carried, burst._carried = burst._carried, None
        return carried.get()
    if burst.parked is not None:
        raise StopAsyncIteration
    step = burst._output.__anext__().__await__()
    done, waiting_on = _advance(step, None, None)
    if done:
        return waiting_on  # ready at once: the usual case while output flows
    loop = asyncio.get_running_loop()
    deadline = loop.time() + burst._idle
    while not done:
        if not asyncio.isfuture(waiting_on) or waiting_on.done():
            # A bare yield (``sleep(0)``): hand it to the task, as ``await`` does.
            done, waiting_on = yield from _pass_up(step, waiting_on)
            continue
        waiter = loop.create_future()
        wake = functools.partial(_wake, waiter)
        waiting_on.add_done_callback(wake)
        timer = loop.call_at(deadline, wake, None)
        waiter._asyncio_future_blocking = True
        try:
            yield waiter
        except BaseException as exc:
            timer.cancel()
            waiting_on.remove_done_callback(wake)
            if isinstance(exc, GeneratorExit):
                step.close()
                raise
            if isinstance(exc, asyncio.CancelledError):
                # As a task would have done, had it been waiting on it directly.
                waiting_on.cancel()
            done, waiting_on = _advance(step, None, exc)
            continue
        timer.cancel()
        waiting_on.remove_done_callback(wake)
        if not waiting_on.done():
            burst.parked = (step, waiting_on)
            _released.add(burst._response)
            raise StopAsyncIteration
        done, waiting_on = _advance(step, None, None)
    return waiting_on


def _wake(waiter: asyncio.Future[None], _: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _advance(
    step: Generator[Any, Any, Any], sent: Any, exc: BaseException | None
) -> tuple[bool, Any]:
    """Resume ``step``: ``(True, result)`` when it finished, else ``(False, what it
    yielded)``. (A plain function: StopIteration must not cross a generator frame.)"""
    try:
        return False, step.send(sent) if exc is None else step.throw(exc)
    except StopIteration as finished:
        return True, finished.value


@types.coroutine
def _pass_up(step: Generator[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """Hand what ``step`` yielded to the task and the task's answer back, as ``yield
    from`` does for one round; returns what :func:`_advance` returns."""
    try:
        sent = yield waiting_on
    except GeneratorExit:
        step.close()
        raise
    except BaseException as exc:
        return _advance(step, None, exc)
    return _advance(step, sent, None)


@types.coroutine
def _finish(step: Generator[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """Drive a parked step to its end exactly as ``await`` would (``yield from``, with
    its first yield already made)."""
    done = False
    while not done:
        done, waiting_on = yield from _pass_up(step, waiting_on)
    return waiting_on
