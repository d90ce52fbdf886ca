"""This crawl as one worker of a cluster: which streams it opens, takes over, hands on.

Scrapy glue around :mod:`~scrapy_sse.cluster.leases` (the shared state in Redis) and
:mod:`~scrapy_sse.cluster.balance` (the pure share computation). Set
``SSE_CLUSTER_URL`` and every worker runs the same spider:

* A stream request (from ``start()`` or a callback) is not sent at once: it is
  *parked* (kept here, a few hundred bytes) and declared to the cluster. The worker
  opens a parked stream only once it holds the stream's lease.
* Every ``SSE_LEASE_TTL / 3`` seconds a tick renews the leases held, reads the live
  workers, and takes free streams up to this worker's share or hands the excess over.
* Taking a stream: the lease's fencing token is claimed in every sink (one
  transaction that also reads the stream's stored cursor), then the request is
  scheduled and resumes after the stored cursor. From then on the store refuses
  batches of that stream from any earlier holder.
* Handing a stream over (balance, Ctrl-C): the stream is closed, its delivered events
  are written and committed, then the lease is released: the next holder resumes at
  that cursor. A worker that learns it lost a lease (it was paused past the TTL, or a
  sink was fenced) closes the stream and writes nothing more of it.
* A stream that completes is marked done for the whole cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import random
import time
import zlib
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import CloseSpider
from scrapy.utils.asyncio import (
    call_later,
    create_looping_call,
    is_asyncio_available,
    run_in_thread,
)
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from scrapy.utils.request import request_from_dict

from ..downloadermw import assign_stream_key
from ..http import STREAM_KEY, redact_url
from ..policy import HANDED_OVER, SPIDER_CLOSED
from .balance import plan
from .leases import LeaseStore
from .redis_spider import divert, is_redis_spider, subscription_request

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from twisted.internet.defer import Deferred

    from ..extension import SSEExtension
    from ..stream import SSEStream

logger = logging.getLogger(__name__)

#: Default seconds a lease lasts without renewal (``SSE_LEASE_TTL``).
DEFAULT_TTL = 10.0
#: Workers (at most; fewer when fewer are live) that must give up on a stream before
#: it is done for the cluster: one worker's failure may be its own proxy or credentials.
GIVE_UP_WORKERS = 3
#: Ticks in a row (three lease periods) a parked stream must go unheld before a worker
#: at its share takes it anyway (long enough for a slow new worker to take what is
#: handed over to it).
ORPHAN_TICKS = 9


class ClusterWorker:
    """The crawl's membership in the cluster (one per crawler, on its extension)."""

    def __init__(self, crawler: Crawler, state: SSEExtension) -> None:
        self.crawler = crawler
        self.state = state
        settings = crawler.settings
        self.url: str = settings.get("SSE_CLUSTER_URL")
        self.name: str = settings.get("SSE_CLUSTER_NAME") or ""
        self.ttl = max(0.3, settings.getfloat("SSE_LEASE_TTL", DEFAULT_TTL))
        self.weight = settings.getfloat("SSE_CLUSTER_WEIGHT", 1.0)
        self.worker = LeaseStore.new_worker_id()
        #: Every stream request this worker knows, by stream key, as the spider made it
        #: (packed: a parked stream costs about 600 bytes, see :func:`pack`).
        self.requests: dict[str, bytes | Request] = {}
        #: Streams held: key -> fencing token.
        self.held: dict[str, int] = {}
        #: Held streams being handed over (closed, waiting for their rows' commit).
        self.handing_over: set[str] = set()
        self.store: LeaseStore | None = None
        self._undeclared: dict[str, dict[str, Any]] = {}
        #: Streams popped from a scrapy-redis start-URL key, not yet parked.
        self._subscribed: list[tuple[str, Request]] = []
        self._redis_spider = False
        self._version = -1  # (of the cluster's stream records last read)
        #: Streams other workers declared that this one cannot build (their spiders'
        #: own requests): known, not parked.
        self._foreign: set[str] = set()
        #: Parked streams nobody held, with how many ticks in a row (see _tick).
        self._unheld: dict[str, int] = {}
        #: Held streams taken beyond this worker's share because nobody else took
        #: them: kept (never handed over for balance) and not counted in the share.
        self._orphans: set[str] = set()
        #: Streams this worker gave up on, and until when it does not take them again.
        self._cooldown: dict[str, float] = {}
        self._cooldown_s = max(self.ttl, settings.getfloat("SSE_BACKOFF_MAX", 60.0))
        #: Streams being taken (claimed in the sinks): renewed, not yet held.
        self.taking: dict[str, int] = {}
        self._loop: Any = None
        self._ticking = False
        self._tick_d: Deferred[None] | None = None
        self._tick_soon: Any = None
        self._closing = False
        self._joined = 0.0
        self._started = time.time()
        self._rng = random.Random()
        crawler.signals.connect(self._spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)

    # -- what the rest of scrapy-sse asks --------------------------------------------

    def holds(self, key: str) -> bool:
        """Whether this worker may open (or reconnect) the stream ``key``."""
        return key in self.held and key not in self.handing_over

    def has_work(self) -> bool:
        """Streams held, or parked that another worker may leave: keep the spider open."""
        return bool(self.held or self.taking or self.requests) and not self._closing

    def park(self, key: str, request: Request, data: str | None = None) -> None:
        """A stream request this worker does not hold (yet): keep it, declare it (with
        the scrapy-redis entry it came from, ``data``, from which any worker builds it)."""
        if key in self.requests:
            return  # (known: the spider's own request is kept, not a reconnect's)
        self.requests[key] = pack(request, self.crawler.spider)
        info = {"url": redact_url(request.url), "method": request.method}
        self._undeclared[key] = info if data is None else {**info, "data": data}
        self._schedule_tick()

    def fenced(self, keys: frozenset[str]) -> None:
        """A sink's store refused rows of ``keys``: a newer holder took them over."""
        for key in keys:
            if key in self.held:
                self._lost(key, "a sink refused its rows (a newer fencing token)")

    def stream_ended(self, key: str, reason: str, *, gave_up: bool = False) -> None:
        """The stream ``key`` ended without a reconnect (``reason``). Unless this
        worker closed it (hand-over, spider closing): if it completed, no worker of the
        cluster opens it again; if this worker gave up on it (an error status, too many
        failures: maybe this worker's proxy or credentials), it is handed over and this
        worker does not take it again for ``SSE_BACKOFF_MAX`` seconds."""
        if reason in (HANDED_OVER, SPIDER_CLOSED) or not self.holds(key):
            return
        self.handing_over.add(key)  # (no reconnect; renewed until marked or let go)
        deferred_from_coro(self._finish(key, reason, gave_up=gave_up)).addErrback(self._log_failure)

    async def _finish(self, key: str, reason: str, *, gave_up: bool) -> None:
        try:
            if gave_up:
                await self._give_up(key, reason)
            else:
                await self._complete(key, reason)
        finally:
            self.handing_over.discard(key)

    async def _give_up(self, key: str, reason: str) -> None:
        """This worker gave up on ``key``: another worker tries it (this one not for
        ``SSE_BACKOFF_MAX`` s), until as many workers as are live (at most 3) have
        given up on it; then it is done for the cluster."""
        store = self.store
        assert store is not None
        self._stat("given_up")
        if not await self._settled(key, deadline=time.monotonic() + self.ttl):
            return
        attempts = await store.gave_up(key)
        needed = min(GIVE_UP_WORKERS, max(1, len(await store.live_workers())))
        if attempts >= needed:
            logger.warning(
                "SSE cluster: %d worker(s) gave up on stream %s (last: %s); it is done",
                attempts,
                key,
                reason,
            )
            await self._complete(key, reason)
            return
        self._cooldown[key] = time.monotonic() + self._cooldown_s
        logger.warning(
            "SSE cluster: gave up on stream %s (%s); another worker may try it, this one "
            "not for %.0f s",
            key,
            reason,
            self._cooldown_s,
        )
        await self._hand_over(key)

    async def _complete(self, key: str, reason: str) -> None:
        """Once the stream's rows are committed (not spilled: a spill file's rows are
        not in the store yet), mark it completed for the cluster (a crash before that
        leaves it to another worker, which reads its end again)."""
        if not await self._settled(key, deadline=None, committed=True):
            return  # (lost meanwhile: the new holder reads the end and marks it)
        store = self.store
        assert store is not None
        if not await store.complete(key):
            logger.info("SSE cluster: stream %s ended, but its lease was lost meanwhile", key)
            return
        self.held.pop(key, None)
        self._orphans.discard(key)
        self.handing_over.discard(key)
        self.requests.pop(key, None)
        self._stat("completed")
        logger.info("SSE cluster: stream %s completed (%s); no worker reopens it", key, reason)

    # -- life cycle --------------------------------------------------------------------

    async def _spider_opened(self) -> None:
        spider = self.crawler.spider
        assert spider is not None
        if not is_asyncio_available():
            raise CloseSpider("SSE_CLUSTER_URL needs the asyncio reactor (Scrapy's default)")
        sinks = self.state.sinks
        unfit = [type(s).__name__ for s in sinks if not s.fences_streams]
        if not sinks or unfit:
            message = (
                "SSE_CLUSTER_URL: every item pipeline that stores stream rows must commit "
                "each stream's cursor with its rows and fence off earlier holders "
                f"(PostgresPipeline does); {', '.join(unfit) or 'no such sink'} cannot, so "
                "another worker taking a stream over could store events twice"
            )
            logger.error(message)
            raise CloseSpider("sse_cluster_unfit_sink")
        self.name = self.name or spider.name
        if "scrapy_redis" in str(self.crawler.settings.get("SCHEDULER", "")):
            logger.error(
                "SSE_CLUSTER_URL: scrapy-redis's SCHEDULER shares one request queue among "
                "the workers, so a stream a worker holds may be popped by another one and "
                "never opened; keep Scrapy's scheduler (RedisSpider works with it)"
            )
            raise CloseSpider("sse_cluster_shared_scheduler")
        if is_redis_spider(spider):
            divert(spider, lambda data, request: self._subscribed.append((data, request)))
            self._redis_spider = True
        try:
            from redis.asyncio import Redis
        except ImportError:
            logger.error("SSE_CLUSTER_URL needs redis-py: pip install scrapy-sse[cluster]")
            raise CloseSpider("sse_cluster_needs_redis") from None
        client = Redis.from_url(self.url)
        self.store = LeaseStore(client, self.name, self.worker, self.ttl)
        await self.store.heartbeat(self.weight, 0, self._started)
        logger.info(
            "SSE cluster %r: worker %s joined (leases of %.3g s, weight %g)",
            self.name,
            self.worker,
            self.ttl,
            self.weight,
        )
        self._joined = time.monotonic()
        self._loop = create_looping_call(self._tick_now)
        self._loop.start(self.ttl / 3, now=False)

    async def _spider_closed(self) -> None:
        """The item pipelines have closed (their rows are committed): every stream
        still held is handed over at once."""
        self._closing = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._tick_soon is not None:
            self._tick_soon.cancel()
        store = self.store
        if store is None:
            return
        if self._ticking and self._tick_d is not None:
            # (A tick half done would use a closed client.)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(maybe_deferred_to_future(self._tick_d), self.ttl)
        try:
            held = list(self.held)
            released = await store.release(held)
            await store.leave()
            if held:
                logger.info(
                    "SSE cluster %r: worker %s left; %d stream(s) handed over",
                    self.name,
                    self.worker,
                    released,
                )
        finally:
            await store.client.aclose()

    # -- ticks ---------------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        """A tick soon (new streams to declare and maybe take), not at the next period."""
        if self.store is None or self._closing or self._tick_soon is not None:
            return
        self._tick_soon = call_later(0.05, self._tick_due)

    def _tick_due(self) -> None:
        self._tick_soon = None
        if self._ticking:
            self._schedule_tick()  # (after the running one)
        else:
            self._tick_now()

    def _tick_now(self) -> None:
        if self._ticking or self._closing:
            return
        self._tick_d = deferred_from_coro(self._tick())
        self._tick_d.addErrback(self._log_failure)

    async def _tick(self) -> None:
        store = self.store
        assert store is not None
        self._ticking = True
        try:
            await self._read_subscriptions(store)
            if self._undeclared:
                declared = dict(self._undeclared)
                await store.declare(declared)
                for key in declared:  # (kept for the next tick if Redis failed)
                    self._undeclared.pop(key, None)
            await self._learn_streams(store)
            await store.heartbeat(self.weight, len(self.held), self._started)
            for key in await store.renew([*self.held, *self.taking]):
                if key in self.taking:
                    self.taking.pop(key)  # (its _take finds out, and gives up)
                else:
                    self._lost(key, "its lease expired (this worker was paused or cut off)")
            for key in await store.done_among(list(self.requests)):
                self.requests.pop(key, None)
                if key in self.held and key not in self.handing_over:
                    # (`scrapy sse-cluster --complete`: closed, its rows committed, let go)
                    logger.info("SSE cluster: stream %s was marked completed; closing it", key)
                    deferred_from_coro(self._hand_over(key)).addErrback(self._log_failure)
            weights = await store.live_workers()
            weights.setdefault(self.worker, self.weight)
            keeping = [
                key
                for key in self.held
                if key not in self.handing_over and key not in self._orphans
            ]
            # (Streams being taken count in the share, ahead of the held ones: they are
            # never among those handed over, the newest held ones.)
            keeping = [*self.taking, *keeping]
            now = time.monotonic()
            free = [
                key
                for key in self.requests
                if key not in self.held
                and key not in self.taking
                and self._cooldown.get(key, 0) <= now
            ]
            if self._closing:
                return
            step = plan(
                worker=self.worker,
                weights=weights,
                streams=await store.open_streams(),
                held=keeping,
                free=len(free),
            )
            for key in step.hand_over:
                if key in self.held:
                    deferred_from_coro(self._hand_over(key)).addErrback(self._log_failure)
            taken: dict[str, int] = {}
            if time.monotonic() < self._joined + self.ttl / 3:
                pass  # (a tick's grace after joining: workers started together see each other)
            elif step.take:
                self._rng.shuffle(free)
                taken = await store.acquire(free, step.take)
            elif free and not step.hand_over:
                # At its share, a worker still takes a stream nobody has held for three
                # lease periods: no other worker can build its request (a
                # callback's, this spider's own), and a stream nobody reads loses
                # events. (A worker of weight 0 takes only these: a standby worker.)
                unheld = await store.unheld(free)
                self._unheld = {key: self._unheld.get(key, 0) + 1 for key in unheld}
                orphans = [key for key, ticks in self._unheld.items() if ticks >= ORPHAN_TICKS]
                taken = await store.acquire(orphans, len(orphans))
                self._orphans.update(taken)
            for key, token in taken.items():
                # (Each in its own task: a claim waits for the sinks' current write,
                # and the ticks must go on renewing meanwhile.)
                self.taking[key] = token
                deferred_from_coro(self._take(key, token)).addErrback(self._log_failure)
            await store.report(self._status())
        except Exception as exc:  # Redis unreachable: the leases run out, fencing holds
            self._stat("tick_errors")
            logger.warning("SSE cluster %r: a lease tick failed (%s)", self.name, exc)
        finally:
            self._ticking = False

    async def _read_subscriptions(self, store: LeaseStore) -> None:
        """Pop the spider's scrapy-redis start URLs now (the spider is busy: scrapy-redis
        itself would not); streams among them become subscriptions of the cluster."""
        spider = self.crawler.spider
        if self._redis_spider:
            requests = await run_in_thread(lambda: list(spider.next_requests()))  # type: ignore[union-attr]
            engine = self.crawler.engine
            assert engine is not None
            for request in requests:
                engine.crawl(request)
        subscribed, self._subscribed = self._subscribed, []
        for data, request in subscribed:
            self.park(assign_stream_key(self.crawler, request), request, data)
            self._stat("subscriptions")
            logger.info("SSE cluster: new subscription %s", redact_url(request.url))

    async def _learn_streams(self, store: LeaseStore) -> None:
        """Streams other workers declared from scrapy-redis entries: parked here too, so
        that this worker can take them over."""
        version = await store.version()
        if version == self._version:
            return
        infos = await store.stream_infos({*self.requests, *self._foreign})
        done = await store.done_among(list(infos))
        for key, info in infos.items():
            request = None
            if key not in done and "data" in info:
                request = subscription_request(self.crawler.spider, info["data"])
            if request is None:
                self._foreign.add(key)
                continue
            request.meta[STREAM_KEY] = key
            self.requests[key] = pack(request, self.crawler.spider)
        self._version = version  # (only once read: a failed read is tried again)

    # -- taking, losing, handing over ----------------------------------------------------

    async def _take(self, key: str, token: int) -> None:
        """Claim ``key``'s fencing token in every sink, then open it after the cursor
        the sinks hold."""
        from ..pipelines.base import Fenced

        store = self.store
        assert store is not None
        cursor = None
        try:
            for sink in self.state.sinks:
                claimed = await sink.claim(key, token)
                if claimed is not None and (cursor is None or claimed.seq > cursor.seq):
                    cursor = claimed
        except Exception as exc:
            # (Fenced: a holder with a newer token wrote meanwhile, never ours after
            # all; anything else: a sink that cannot be reached, tried again later.)
            self.taking.pop(key, None)
            await store.release([key])
            if not isinstance(exc, Fenced):
                self._stat("take_errors")
                logger.warning("SSE cluster: could not take stream %s (%s)", key, exc)
            return
        if self.taking.pop(key, None) != token or self._closing:
            # (The lease ran out while the sinks were busy, or the spider closes.)
            await store.release([key])
            return
        ledger = self.state.ledger
        if cursor is None:
            ledger.stored.pop(key, None)
        else:
            ledger.stored[key] = cursor
        ledger.fallback.pop(key, None)
        ledger.tracks.pop(key, None)  # (from an earlier holding: resume from the store)
        ledger.fences[key] = token  # (the track of this holding writes with it)
        self.held[key] = token
        request = unpack(self.requests[key], self.crawler.spider)
        self._stat("taken")
        if cursor is not None:
            self._stat("takeovers")
            logger.info(
                "SSE cluster: took over stream %s (%s) after its stored id %r",
                key,
                redact_url(request.url),
                cursor.event_id,
            )
        else:
            logger.info("SSE cluster: opened stream %s (%s)", key, redact_url(request.url))
        engine = self.crawler.engine
        assert engine is not None
        engine.crawl(request.replace(dont_filter=True))

    def _lost(self, key: str, why: str) -> None:
        self._drop(key)
        self._stat("lost")
        logger.info("SSE cluster: lost stream %s: %s; another worker resumes it", key, why)

    def _drop(self, key: str) -> None:
        """Stop holding ``key``: close its stream; its rows are no longer written."""
        self.held.pop(key, None)
        self._orphans.discard(key)
        self.handing_over.discard(key)
        for sink in self.state.sinks:
            sink.forget_fence(key)
        stream = self._stream(key)
        if stream is not None:
            stream.close(HANDED_OVER)

    async def _hand_over(self, key: str) -> None:
        """Close the stream, wait (bounded) until what it delivered is committed, then
        release the lease: the next holder resumes where the stored rows end."""
        self.handing_over.add(key)
        try:
            await self._let_go(key)
        finally:
            self.handing_over.discard(key)

    async def _let_go(self, key: str) -> None:
        stream = self._stream(key)
        if stream is not None:
            stream.close(HANDED_OVER)
        # (Past the deadline the lease goes anyway: the next holder's claim fences off
        # what this worker would still commit, and it re-reads those events.)
        if not await self._settled(key, deadline=time.monotonic() + self.ttl):
            return  # (lost meanwhile, or the spider closes)
        store = self.store
        assert store is not None
        await store.release([key])
        self.held.pop(key, None)
        self.handing_over.discard(key)
        track = self.state.ledger.tracks.get(key)
        self._stat("handed_over")
        logger.info(
            "SSE cluster: handed stream %s over after its stored id %r",
            key,
            track.resume_id if track is not None else "",
        )

    async def _settled(self, key: str, deadline: float | None, *, committed: bool = False) -> bool:
        """Wait until the stream ``key`` has ended and everything it delivered is
        stored (with ``committed``: and no sink holds spilled rows), or ``deadline``;
        ``False`` if its lease was lost meanwhile or the spider closes."""
        while key in self.held and not self._closing:
            track = self.state.ledger.tracks.get(key)
            if (
                self._stream(key) is None
                and (track is None or not track.slots)
                and not (committed and any(sink.spill_pending for sink in self.state.sinks))
            ):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return True
            await asyncio.sleep(0.05)
        return False  # (lost, or the spider closes: its close releases every lease)

    # -- helpers -----------------------------------------------------------------------

    def _stream(self, key: str) -> SSEStream | None:
        return self.state.registry.by_key.get(key)

    def _status(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        status = {}
        for key, token in self.held.items():
            track = self.state.ledger.tracks.get(key)
            stream = self._stream(key)
            status[key] = {
                "holder": self.worker,
                "token": token,
                "url": redact_url(unpack(self.requests[key], self.crawler.spider).url)
                if key in self.requests
                else "",
                "stored_id": track.resume_id if track is not None else "",
                "events": track.seq if track is not None else 0,
                "last_id": stream.last_delivered_id if stream is not None else "",
                "open": stream is not None,
                "at": now,
            }
        return status

    def _stat(self, name: str) -> None:
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value(f"sse/cluster/{name}")

    def _log_failure(self, failure: Any) -> None:
        logger.error("SSE cluster %r: %s", self.name, failure.getErrorMessage())


def pack(request: Request, spider: Any) -> bytes | Request:
    """A parked request, small: its ``to_dict()`` pickled and compressed (about 450
    bytes instead of about 2 KiB for the object); the request itself when its
    callbacks are not the spider's methods (``to_dict`` cannot name them)."""
    try:
        return zlib.compress(pickle.dumps(request.to_dict(spider=spider), protocol=5))
    except Exception:  # (a callback to_dict cannot name, meta pickle cannot carry)
        return request


def unpack(value: bytes | Request, spider: Any) -> Request:
    if isinstance(value, bytes):
        return request_from_dict(pickle.loads(zlib.decompress(value)), spider=spider)
    return value
