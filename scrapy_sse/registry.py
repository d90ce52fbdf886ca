"""The open streams of a crawl, how many may be open, and their timers.

One registry per crawler, held by its :class:`~scrapy_sse.extension.SSEExtension` and
shared by the download handlers (one instance per scheme), the middlewares and the
extension (which closes everything when the spider closes).

"Download slot" means Scrapy's (``meta["download_slot"]``, by default the host):
``SSE_MAX_STREAMS_PER_SLOT`` counts open streams per download slot, and
``SSE_MAX_STREAMS_PER_KEY`` per API key (LLM providers cap open streams per key). The
counting gates hand out *places*: one crawl-wide, one in the stream's download slot,
and one for its key when it has one. A stream's :data:`Places` name them.

It also owns the only timers: one watchdog for read timeouts of all streams (not a
timer per read, which would cost a reschedule per chunk), and the cancellable waits
before reconnects, so that closing the spider ends them at once. Connections still
waiting for their response head are tracked too: Scrapy's close waits for every
request in progress, and one server slow to answer would hold it for up to
``DOWNLOAD_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Coroutine
from time import monotonic
from typing import TYPE_CHECKING, Any, TypeVar

from scrapy.utils.asyncio import call_later, create_looping_call
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from twisted.internet.defer import Deferred

from .errors import SSEStreamError
from .http import STREAM_KEY
from .policy import CLOSING, READ_TIMEOUT

if TYPE_CHECKING:
    from .checkpoint import Checkpoints
    from .durable import Track
    from .stream import SSEStream

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Where a stream holds its places: its download slot, or (download slot, API key).
Places = str | tuple[str, str]


def _task_cancelling() -> bool:
    """Whether the running asyncio task is being cancelled (Python 3.11+)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: a plain Twisted reactor
        return False
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling is not None and cancelling())


class _Waiter:
    """A wait for a place at a gate, and whether a release handed it one."""

    __slots__ = ("deferred", "handed")

    def __init__(self) -> None:
        self.deferred: Deferred[None] = Deferred()
        self.handed = False


class _Gate:
    """A counting gate: at most ``limit`` holders (0: no limit), FIFO waiters."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.waiting: deque[_Waiter] = deque()

    def try_take(self) -> bool:
        if not self.limit or self.held < self.limit:
            self.held += 1
            return True
        return False

    def release(self) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.deferred.called:  # (a wait given up is skipped)
                waiter.handed = True
                waiter.deferred.callback(None)  # the place passes on as is
                return
        self.held -= 1


class StreamRegistry:
    def __init__(self, max_streams: int = 0, max_per_slot: int = 0, max_per_key: int = 0) -> None:
        self._total = _Gate(max_streams)
        self._per_download_slot: defaultdict[str, _Gate] = defaultdict(lambda: _Gate(max_per_slot))
        self._per_key: defaultdict[str, _Gate] = defaultdict(lambda: _Gate(max_per_key))
        #: Whether streams are counted per API key (``SSE_MAX_STREAMS_PER_KEY``).
        self.counts_keys = max_per_key > 0
        #: Open streams, each with its places.
        self.streams: dict[SSEStream, Places] = {}
        #: Open streams by stream key.
        self.by_key: dict[str, SSEStream] = {}
        # One bound method for every stream's end callback (a closure per stream
        # would cost a function, a cell and a tuple each).
        self._ended_callback = self._ended
        self._sleeps: set[Deferred[bool]] = set()
        self._opening: set[Deferred[Any]] = set()
        self._watchdog: Any = None
        self._watch_interval = 0.0
        self.closing = False
        #: Resume-point checkpoints (set by the extension when JOBDIR is set).
        self.checkpoints: Checkpoints | None = None
        #: The crawl's tracks by stream key (the extension's ledger's).
        self.tracks: dict[str, Track] = {}

    # -- caps ----------------------------------------------------------------------

    async def acquire(self, places: Places) -> None:
        """Wait for a place among open streams: for the API key
        (``SSE_MAX_STREAMS_PER_KEY``), then in the download slot
        (``SSE_MAX_STREAMS_PER_SLOT``), then crawl-wide (``SSE_MAX_STREAMS``). The
        narrowest first: a request waiting for its key holds no place another key's
        request could use."""
        download_slot, key = (places, None) if isinstance(places, str) else places
        taken: list[tuple[defaultdict[str, _Gate], str]] = []
        try:
            if key is not None:
                await self._take(self._per_key[key])
                taken.append((self._per_key, key))
            await self._take(self._per_download_slot[download_slot])
            taken.append((self._per_download_slot, download_slot))
            await self._take(self._total)
        except BaseException:
            for gates, name in taken:
                self._release(gates, name)
            raise

    async def _take(self, gate: _Gate) -> None:
        if self.closing:
            raise SSEStreamError("The spider is closing; no new stream is opened", CLOSING)
        if gate.try_take():
            return
        waiter = _Waiter()
        gate.waiting.append(waiter)
        try:
            await maybe_deferred_to_future(waiter.deferred)
        except BaseException:
            # Given up (the download cancelled): pass on a place handed meanwhile, or
            # make sure no later release hands one to this wait.
            if waiter.handed:
                gate.release()
            elif not waiter.deferred.called:
                waiter.deferred.cancel()
            raise
        if self.closing:
            # Handed a place in the turn the close began: give it back.
            gate.release()
            raise SSEStreamError("The spider is closing; no new stream is opened", CLOSING)

    async def opening(self, step: Coroutine[Any, Any, T]) -> T:
        """Await one step of opening a stream (connecting and reading the response
        head, or an error body): cancelled, the connection dropped, as soon as the
        spider starts closing."""
        if self.closing:
            step.close()
            raise SSEStreamError("The spider is closing; no new stream is opened", CLOSING)
        dfd: Deferred[T] = deferred_from_coro(step)
        self._opening.add(dfd)
        try:
            return await maybe_deferred_to_future(dfd)
        except (Exception, asyncio.CancelledError) as exc:
            if dfd in self._opening or (
                isinstance(exc, asyncio.CancelledError) and _task_cancelling()
            ):
                raise  # not (only) cancelled by close_all
            # (How the cancel shows depends on the reactor: asyncio's CancelledError,
            # or the transport's timeout error.)
            raise SSEStreamError(
                "The spider closed before the stream's server answered", CLOSING
            ) from None
        finally:
            self._opening.discard(dfd)

    def release(self, places: Places) -> None:
        if isinstance(places, str):
            self._release(self._per_download_slot, places)
        else:
            self._release(self._per_download_slot, places[0])
            self._release(self._per_key, places[1])
        self._total.release()

    @staticmethod
    def _release(gates: defaultdict[str, _Gate], name: str) -> None:
        gate = gates[name]
        gate.release()
        if not gate.held and not gate.waiting:
            del gates[name]

    def waiting(self) -> int:
        """Streams waiting for a place (crawl-wide, in their download slot or key)."""
        gates = (self._total, *self._per_download_slot.values(), *self._per_key.values())
        return sum(len(gate.waiting) for gate in gates)

    # -- open streams ----------------------------------------------------------------

    def add(self, stream: SSEStream, places: Places) -> None:
        self.streams[stream] = places
        key = stream.request.meta.get(STREAM_KEY)
        if key:
            self.by_key[key] = stream
        stream.on_end(self._ended_callback)
        if stream.read_timeout:
            stream.last_activity = monotonic()
            self._watch(stream.read_timeout)

    def _ended(self, stream: SSEStream) -> None:
        key = stream.request.meta.get(STREAM_KEY)
        if key and self.by_key.get(key) is stream:
            del self.by_key[key]
        places = self.streams.pop(stream, None)
        if places is not None:
            self.release(places)
        self.record(stream)

    def record(self, stream: SSEStream) -> None:
        """Checkpoint the stream's resume point (a no-op without JOBDIR): where
        everything delivered has been stored, or, for a stream no spider side has
        tracked, the last delivered id."""
        if self.checkpoints is None:
            return
        key = stream.request.meta.get(STREAM_KEY)
        if not key:
            return
        track = stream.track
        if track is not None:
            self.checkpoints.set(key, track.resume_id, track.resume_seq)
        elif stream.last_delivered_id:
            self.checkpoints.set(key, stream.last_delivered_id)

    def flush_checkpoints(self) -> None:
        if self.checkpoints is None:
            return
        for stream in self.streams:
            self.record(stream)
        # Streams that ended still advance as their items are stored.
        for track in self.tracks.values():
            self.checkpoints.set(track.key, track.resume_id, track.resume_seq)
        self.checkpoints.flush()

    def _watch(self, timeout: float) -> None:
        interval = max(0.05, min(1.0, timeout / 4))
        if self._watchdog is not None and interval >= self._watch_interval:
            return
        if self._watchdog is not None:
            self._watchdog.stop()
        self._watch_interval = interval
        self._watchdog = create_looping_call(self._check_idle)
        self._watchdog.start(interval, now=False)

    def _check_idle(self) -> None:
        now = monotonic()
        for stream in list(self.streams):
            timeout = stream.read_timeout
            # A paused stream is silent because we stopped reading, not the server.
            if timeout and not stream.is_paused and now - stream.last_activity > timeout:
                logger.warning(
                    "SSE stream %s received nothing for %.1f s (SSE_READ_TIMEOUT): "
                    "dropping the connection",
                    stream.url,
                    now - stream.last_activity,
                )
                stream.finish(
                    READ_TIMEOUT,
                    SSEStreamError(f"No data for {timeout} s (SSE_READ_TIMEOUT)", READ_TIMEOUT),
                )

    # -- reconnect waits ---------------------------------------------------------------

    async def sleep(self, seconds: float) -> bool:
        """Wait before a reconnect; ``False`` if the spider closed meanwhile."""
        if self.closing:
            return False
        if seconds <= 0:
            return True
        waiter: Deferred[bool] = Deferred()
        timer = call_later(seconds, waiter.callback, True)
        self._sleeps.add(waiter)
        try:
            return await maybe_deferred_to_future(waiter)
        finally:
            timer.cancel()
            self._sleeps.discard(waiter)

    # -- shutdown --------------------------------------------------------------------

    def close_all(self, reason: str) -> int:
        """Close every open stream, end reconnect waits and refuse waiting streams."""
        self.closing = True
        for gate in (self._total, *self._per_download_slot.values(), *self._per_key.values()):
            waiting, gate.waiting = gate.waiting, deque()
            for waiter in waiting:
                if not waiter.deferred.called:
                    waiter.deferred.errback(
                        SSEStreamError("The spider closed before the stream opened", reason)
                    )
        for sleep in list(self._sleeps):
            if not sleep.called:
                sleep.callback(False)
        opening, self._opening = self._opening, set()
        for dfd in opening:
            dfd.cancel()
        streams = list(self.streams)
        for stream in streams:
            stream.close(reason)
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        return len(streams)
