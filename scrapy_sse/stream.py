"""The live stream between a transport (producer) and a spider (consumer).

A transport pushes raw bytes in with :meth:`SSEStream.feed`; the parser turns them into
events that wait in a bounded queue until the spider pulls them with ``async for``.
When the queue reaches ``queue_size`` the transport is paused (real TCP backpressure);
it is resumed once the spider has drained half of it. Nothing here knows Twisted or
aiohttp: a transport only has to offer the three :class:`Producer` methods.
"""

from __future__ import annotations

import logging
from asyncio import Future, get_running_loop
from collections import deque
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any, Protocol

from scrapy.utils.asyncio import call_later
from twisted.internet.defer import Deferred

from .durable import CURRENT, Slot
from .errors import SSEEventTooLarge
from .events import SSEComment, SSEEvent
from .http import redact_url
from .parser import SSEParser
from .policy import CLOSED, COMPLETED, EVENT_TOO_LARGE, RESTART

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence

    from scrapy import Request
    from scrapy.statscollectors import StatsCollector

    from .durable import Track

logger = logging.getLogger(__name__)


class Producer(Protocol):
    """What a transport lets the stream do to the connection."""

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def abort(self) -> None: ...


#: Longest integer id whose gaps are counted (18 digits: any counter, and int() is cheap).
MAX_ID_DIGITS = 18

#: How many recently delivered events a reconnect remembers to skip if resent.
DEDUP_WINDOW = 64

#: Marks fingerprints made in this process: ``hash()`` of text is salted per process,
#: so a fingerprint read back by another (a ``JOBDIR`` restart) is not compared.
FINGERPRINT_SALT = hash("scrapy-sse event fingerprint")

#: Shared by every stream that resumes from nothing (most of them): no dict per stream.
#: Never modified: a stream replaces it.
_NO_SKIP: dict[str, int | None] = {}


def fingerprint(event: SSEEvent) -> int:
    """What tells a resent event from another event that reuses its id."""
    return hash((event.data, event.event))


#: Stands for the queue of a stream nothing was ever queued on. Most open streams of
#: a large crawl only carry heartbeats, and a deque costs ~760 bytes even when empty,
#: so the real one is made by the first event (see ``_enqueue``).
_NO_QUEUE: deque[Any] = deque(maxlen=0)


class SSEStream:
    """One open event stream: parser, bounded queue, flow control, end reason.

    A crawl may hold ten thousand of these for hours, so the object is slotted and
    everything only some streams need (the queue, the recent-id window, end
    callbacks) is created when first needed.
    """

    __slots__ = (
        "_comments_queued",
        "_done",
        "_events_at",
        "_gaps_pending",
        "_high",
        "_id_number",
        "_idle_timer",
        "_ids_count",
        "_low",
        "_on_comment",
        "_on_end",
        "_paused",
        "_paused_at",
        "_paused_total",
        "_producer",
        "_queue",
        "_recent",
        "_skip",
        "_stats",
        "_waiter",
        "bytes_received",
        "duplicates_skipped",
        "end_reason",
        "error",
        "events_delivered",
        "events_received",
        "id_gaps",
        "last_activity",
        "last_delivered_id",
        "opened_at",
        "parser",
        "pauses",
        "read_timeout",
        "request",
        "response",
        "resting",
        "track",
        "url",
    )

    def __init__(
        self,
        request: Request,
        *,
        queue_size: int = 1000,
        max_event_size: int,
        done_data: Collection[str] = ("[DONE]",),
        comments: bool = False,
        stats: StatsCollector | None = None,
        last_event_id: str = "",
        read_timeout: float = 0.0,
        skip: Iterable[tuple[str, int | None]] = (),
        on_comment: Callable[[SSEComment], object] | None = None,
    ) -> None:
        self.request = request
        self.url = request.url
        #: The SSEResponse this stream belongs to, once headers arrived.
        self.response: Any = None
        self.parser = SSEParser(
            max_event_size=max_event_size,
            comments=comments or on_comment is not None,
            last_event_id=last_event_id,
        )
        # Comments go to ``on_comment`` (a signal, say) and stay in the queue only for
        # a reader that asked for them (``comments``).
        self._on_comment = on_comment
        self._comments_queued = comments
        self._queue: deque[Any] = _NO_QUEUE
        self._high = max(1, queue_size)
        self._low = self._high // 2
        # A frozenset passed in is kept as is (``frozenset(x)`` returns ``x``): the
        # handler shares one among all its streams.
        self._done = frozenset(done_data)
        self._stats = stats
        self._producer: Producer | None = None
        self._paused = False
        self._paused_at = 0.0
        self._paused_total = 0.0
        #: ``time.monotonic()`` when this connection's stream was made.
        self.opened_at = _monotonic()
        # What the consumer waits on: a future (or Deferred) while it awaits, or, while
        # it rests between bursts, the function that starts its next burst.
        self._waiter: Future[None] | Deferred[None] | Callable[[], object] | None = None
        self._on_end: tuple[Callable[[SSEStream], None], ...] = ()
        #: Why the stream ended (see :mod:`scrapy_sse.policy`), ``None`` while open.
        self.end_reason: str | None = None
        #: The error that ended the stream, if it failed.
        self.error: BaseException | None = None
        #: Whether the consumer's last iteration ended because the stream was idle
        #: (see :meth:`burst`), not because the stream ended.
        self.resting = False
        # The idle watch of a consumer that may rest: one timer per quiet spell (not
        # per wait), and when events last came (a read's clock, see ``feed``).
        self._idle_timer: Any = None
        self._events_at = 0.0
        #: Id of the last event handed to the spider: where a resume must start.
        self.last_delivered_id: str = last_event_id
        self.events_received = 0
        self.events_delivered = 0
        #: Integer ids skipped between delivered events (3 then 5: one).
        self.id_gaps = 0
        # The last integer id (-1: none yet; None: ids are not integers).
        self._id_number: int | None = -1
        if last_event_id.isascii() and last_event_id.isdigit():
            self._id_number = int(last_event_id[:MAX_ID_DIGITS])
        # Whether ids have gone up by one: only then is a jump a gap (ids that are
        # timestamps jump every time).
        self._ids_count = False
        self._gaps_pending = 0
        self.bytes_received = 0
        self.pauses = 0
        #: Seconds without any byte after which the watchdog aborts (0: never).
        self.read_timeout = read_timeout
        #: ``time.monotonic()`` of the last read (set by the watchdog's clock).
        self.last_activity = 0.0
        # Events delivered before a reconnect, by id, with their fingerprint (None:
        # unknown, as for a checkpoint's id): a server that resends one is skipped.
        skipped = dict(skip)
        self._skip = skipped or _NO_SKIP
        self._recent: deque[tuple[str, int | None]] | None = (
            deque(skipped.items(), maxlen=DEDUP_WINDOW) if skipped else None
        )
        self.duplicates_skipped = 0
        #: Where each delivery is recorded until what the spider made of it is stored
        #: (see :mod:`scrapy_sse.durable`); set by the spider side.
        self.track: Track | None = None

    @property
    def recent(self) -> list[tuple[str, int | None]]:
        """The last ``DEDUP_WINDOW`` delivered ids with their fingerprints: what the
        next connection skips if the server sends the same events again."""
        return list(self._recent or ())

    # -- producer side -------------------------------------------------------------

    def attach(self, producer: Producer) -> None:
        self._producer = producer
        if self.end_reason is not None:
            producer.abort()

    def feed(self, data: bytes) -> None:
        """Bytes from the transport. Never raises: a parse failure ends the stream."""
        if self.end_reason is not None:
            return
        self.bytes_received += len(data)
        self.last_activity = _monotonic()
        try:
            events = self.parser.feed(data)
        except SSEEventTooLarge as exc:
            self._enqueue(exc.events)
            logger.error(
                "Closing SSE stream %s: %s. Raise SSE_MAX_EVENT_SIZE (setting or "
                "meta['sse_max_event_size']) if such events are expected.",
                self.url,
                exc,
            )
            self.finish(EVENT_TOO_LARGE, exc)
            return
        if events:
            self._enqueue(events)
        if self._producer is not None and len(self._queue) >= self._high:
            # Re-pause on every read while over the limit: Twisted resumes the transport
            # by itself after replaying bytes that arrived with the headers.
            if not self._paused:
                self.pauses += 1
                self._paused_at = _monotonic()
            self._paused = True
            self._producer.pause()

    def _comments_out(self, events: Sequence[Any]) -> Sequence[Any]:
        """Hand the comments among ``events`` to ``on_comment``; keep them queued only
        for a reader that asked for comments."""
        assert self._on_comment is not None
        for event in events:
            if type(event) is SSEComment:
                self._on_comment(event)
        if self._comments_queued:
            return events
        return [event for event in events if type(event) is not SSEComment]

    def _enqueue(self, events: Any) -> None:
        if self._on_comment is not None:
            events = self._comments_out(events)
        if self._queue is _NO_QUEUE:
            self._queue = deque()
        done = self._done
        if done:
            for i, event in enumerate(events):
                if type(event) is SSEEvent and event.data in done:
                    self._queue.extend(events[:i])
                    self.events_received += i
                    self._wake()
                    self.finish(COMPLETED)
                    return
        self._queue.extend(events)
        self.events_received += len(events)
        self._events_at = self.last_activity
        self._wake()

    def finish(self, reason: str, error: BaseException | None = None) -> None:
        """End the stream (idempotent). Events already queued are still delivered."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        self.error = error
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self.parser.close() and self._stats is not None:
            self._stats.inc_value("sse/incomplete_events_dropped")
        if self._producer is not None:
            self._producer.abort()
        if self._stats is not None:
            self._stats.inc_value(f"sse/ends/{reason}")
            # (Comments handed to response.events readers are counted apart.)
            comments = self.parser.comments
            events = self.events_received - (comments if self._comments_queued else 0)
            self._stats.inc_value("sse/events", events)
            self._stats.inc_value("sse/bytes", self.bytes_received)
            self._stats.inc_value("sse/comments", self.parser.comments)
            if self.pauses:
                self._stats.inc_value("sse/backpressure_pauses", self.pauses)
                self._stats.inc_value("sse/paused_ms", round(self.paused_seconds * 1000))
        self._wake()
        callbacks, self._on_end = self._on_end, ()
        for callback in callbacks:
            callback(self)

    def on_end(self, callback: Callable[[SSEStream], None]) -> None:
        if self.end_reason is not None:
            callback(self)
        else:
            self._on_end = (*self._on_end, callback)

    # -- consumer side -------------------------------------------------------------

    def close(self, reason: str = CLOSED) -> None:
        """Stop the stream for good; queued events are dropped, nothing more is read."""
        self._queue.clear()
        self.finish(reason)

    def restart(self) -> None:
        """Drop the connection and reconnect now, resuming after the last delivered
        event (queued, undelivered events are fetched again from the server)."""
        self._queue.clear()
        self.finish(RESTART)

    @property
    def queued(self) -> int:
        """Events parsed and waiting for the spider (at most about ``queue_size``)."""
        return len(self._queue)

    @property
    def paused_seconds(self) -> float:
        """Seconds the transport spent paused because the spider was behind (a pause
        in progress included)."""
        if self._paused:
            return self._paused_total + (_monotonic() - self._paused_at)
        return self._paused_total

    @property
    def last_event_at(self) -> float:
        """``time.monotonic()`` when the last events arrived (0: none yet)."""
        return self._events_at

    @property
    def is_paused(self) -> bool:
        """Whether the transport is paused because the spider is behind."""
        return self._paused

    @property
    def is_open(self) -> bool:
        return self.end_reason is None

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        if isinstance(waiter, Deferred):
            if not waiter.called:
                waiter.callback(None)
        elif isinstance(waiter, Future):
            if not waiter.done():  # a cancelled task cancels the future it awaited
                waiter.set_result(None)
        else:
            waiter()

    def when_ready(self, start_burst: Callable[[], object]) -> None:
        """Call ``start_burst()`` once an event is queued or the stream ends (at once
        if either is already so). For a consumer resting between bursts: it holds no
        task, no generator and no timer meanwhile."""
        if self._queue or self.end_reason is not None:
            start_burst()
        else:
            self._waiter = start_burst

    def _count_delivered(self, event: Any) -> bool:
        """Count ``event`` as delivered (``False``: a resent duplicate, skip it)."""
        if type(event) is SSEEvent:
            event_id = event.id
            if self._skip and self._is_resent(event):
                return False
            if event_id != self.last_delivered_id:
                self.last_delivered_id = event_id
                recent = self._recent
                if recent is None:
                    recent = self._recent = deque(maxlen=DEDUP_WINDOW)
                recent.append((event_id, fingerprint(event)))
                if self._id_number is not None:
                    self._count_gap(event_id)
            self.events_delivered += 1
        return True

    def _count_gap(self, event_id: str) -> None:
        """Ids that count events (integers that go up by one, at least once) and skip
        some (5 after 3): count the ids skipped. Jumps before the first step of one
        wait until it comes; ids that are not short integers, or never go up by one
        (timestamps), are not counted."""
        if not (event_id.isascii() and event_id.isdigit() and len(event_id) <= MAX_ID_DIGITS):
            self._id_number = None
            return
        number = int(event_id)
        last = self._id_number
        if last is not None and last >= 0:
            if number == last + 1:
                if not self._ids_count:  # (they count: the jumps seen so far were gaps)
                    self._ids_count = True
                    self.id_gaps += self._gaps_pending
            elif number > last + 1:
                if self._ids_count:
                    self.id_gaps += number - last - 1
                else:
                    self._gaps_pending += number - last - 1
        self._id_number = number

    def _is_resent(self, event: SSEEvent) -> bool:
        """After a reconnect: whether ``event`` is one delivered before (same id and
        content). Only an event that carries its own id can be: one without an id
        line inherits the resume id and is new. The first new event ends the check."""
        if event.own_id and event.id in self._skip:
            known = self._skip[event.id]
            if known is None or known == fingerprint(event):
                self.duplicates_skipped += 1
                self._server_quirk(
                    "duplicates_skipped",
                    "resends events already delivered (it ignores Last-Event-ID or "
                    "replays): they are skipped",
                )
                return True
            self._server_quirk(
                "ids_reused",
                "reuses event ids for new events (ids per connection, or restarted "
                "after a reload): they are delivered; Last-Event-ID cannot resume it",
            )
        self._skip = _NO_SKIP
        return False

    def _server_quirk(self, kind: str, what: str) -> None:
        """Count a server's quirk (``sse/<kind>``); log it once per stream (across its
        reconnects)."""
        if self._stats is not None:
            self._stats.inc_value(f"sse/{kind}")
        warned = self.request.meta.setdefault("sse_warned", [])
        if kind not in warned:
            warned.append(kind)
            logger.warning("SSE server of %s %s", redact_url(self.url), what)

    def _resume_if_drained(self) -> None:
        """Resume a paused transport once the spider has drained half the queue."""
        if self._paused and len(self._queue) <= self._low:
            self._paused = False
            self._paused_total += _monotonic() - self._paused_at
            if self._producer is not None:
                self._producer.resume()

    def _new_waiter(self) -> Future[None] | Deferred[None]:
        """What the consumer awaits until something is queued or the stream ends.

        In an asyncio loop (the asyncio reactor, or no reactor) a bare future: every
        idle stream waits on one all the time, and a Deferred converted to a future
        costs about a kilobyte more (the Deferred, its callbacks and closures). With
        another reactor, a Deferred, which is what can be awaited there.
        """
        waiter: Future[None] | Deferred[None]
        try:
            waiter = get_running_loop().create_future()
        except RuntimeError:
            waiter = Deferred()
        self._waiter = waiter
        return waiter

    async def _wait(self, timeout: float) -> None:
        """Until something is queued, the stream ends or ``timeout`` passes."""
        timer = call_later(timeout, self._wake)
        try:
            await self._new_waiter()
        finally:
            timer.cancel()

    def __aiter__(self) -> AsyncIterator[SSEEvent]:
        """Events in order; ends when the stream ends (see ``end_reason``, ``error``).

        Each event handed out counts as delivered: a resume starts after the last one.
        It never raises for a failed stream: the end of a stream (reconnect, give up,
        errback) is handled once, by the spider middleware, whatever the callback style.
        """
        return self.burst(0)

    async def burst(self, idle: float) -> AsyncIterator[SSEEvent]:
        """Events in order, like ``async for event in stream``, but ending early, with
        :attr:`resting` set, once no event has come for ``idle`` seconds (never when
        ``idle`` is 0). The consumer then calls :meth:`when_ready` to be told when
        its next burst can start."""
        accept = self._count_delivered
        track = self.track
        if track is not None:
            slots = track.slots
            set_current = CURRENT.set
        self.resting = False
        try:
            while True:
                # Read again after every wait: the first event replaces the empty
                # placeholder queue with a real one.
                queue = self._queue
                if queue:
                    popleft = queue.popleft
                    while queue:
                        event = popleft()
                        if self._paused:
                            self._resume_if_drained()
                        if not accept(event):
                            continue
                        if track is None or type(event) is not SSEEvent:
                            yield event  # (a comment is no delivery to resume after)
                            continue
                        # Held while the spider reads it: what it makes meanwhile is
                        # counted against it (see scrapy_sse.durable). Track.open and
                        # Track.settle, inlined: this runs for every event.
                        if track.expect is None:
                            seq = track.seq + 1
                            track.seq = seq
                            event_id = event.id
                            slot = Slot(track, seq, seq, event_id, event_id)
                            slots.append(slot)
                        else:  # (the first event after a restart is checked)
                            slot = track.open(event.id)
                        set_current(slot)
                        try:
                            yield event
                        finally:
                            slot.pending -= 1
                            if slot.pending <= 0 and slots[0] is slot:
                                track.advance()
                    continue
                if self.end_reason is not None:
                    return
                if idle <= 0:
                    await self._new_waiter()
                elif await self._rested(idle):
                    return
        finally:
            if track is not None:
                CURRENT.set(None)

    async def _rested(self, idle: float) -> bool:
        """Wait for an event; ``True`` (and :attr:`resting`) when none has come for
        ``idle`` seconds and the stream is still open. The timer that says so is armed
        once per quiet spell: a consumer that waits after every event (a trickling
        stream) arms none per event."""
        if self._idle_timer is None:
            self._idle_timer = call_later(idle, self._idle_due, idle)
        await self._new_waiter()
        if self._idle_timer is None and not self._queue and self.end_reason is None:
            self.resting = True
        return self.resting

    def _idle_due(self, idle: float) -> None:
        quiet = _monotonic() - self._events_at
        if quiet < idle:  # events came meanwhile: watch the rest of the spell
            self._idle_timer = call_later(idle - quiet, self._idle_due, idle)
            return
        self._idle_timer = None
        if isinstance(self._waiter, (Future, Deferred)):  # (the consumer waits)
            self._wake()

    async def batches(
        self, size: int, interval: float, idle: float = 0
    ) -> AsyncIterator[list[Any]]:
        """Events in lists of up to ``size``; an event waits at most ``interval``
        seconds for others to join its list. For high-rate feeds, where one item per
        event would cost more than the event itself. Ends early, with :attr:`resting`
        set, after ``idle`` seconds without an event (as :meth:`burst` does)."""
        accept = self._count_delivered
        self.resting = False
        while True:
            queue = self._queue  # (replaced by the first event: read after each wait)
            if not queue:
                if self.end_reason is not None:
                    return
                if idle <= 0:
                    await self._new_waiter()
                elif await self._rested(idle):
                    return
                continue
            popleft = queue.popleft
            deadline = _monotonic() + interval
            batch: list[Any] = []
            while len(batch) < size:
                if queue:
                    take = min(size - len(batch), len(queue))
                    for _ in range(take):
                        event = popleft()
                        if accept(event):
                            batch.append(event)
                    self._resume_if_drained()
                    continue
                remaining = deadline - _monotonic()
                if self.end_reason is not None or remaining <= 0:
                    break
                await self._wait(remaining)
            if not batch:
                continue
            track = self.track
            if track is None:
                yield batch
                continue
            slot = track.open(batch[-1].id, len(batch), batch[0].id)
            CURRENT.set(slot)
            try:
                yield batch
            finally:
                track.settle(slot)
                CURRENT.set(None)

    def __repr__(self) -> str:
        state = self.end_reason or "open"
        return f"<SSEStream {self.url} {state} events={self.events_received}>"


__all__ = ["SSEComment", "SSEStream"]
