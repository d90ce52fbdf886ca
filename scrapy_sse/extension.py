"""``SSEExtension``: the crawl's scrapy-sse state, and the crawl-wide life cycle.

One instance per crawler, built by Scrapy's extension manager before the downloader
and the middlewares. It owns everything the other components share (the settings,
read once; the stream registry; the ``JOBDIR`` checkpoints; the dead-letter store; the
check of Scrapy's private names), and they get it from the crawler with
:func:`sse_state`, Scrapy's public ``crawler.get_extension``: no module-level registry.

Its signal handlers keep the crawl alive while streams are open but idle (a released
stream is no request in progress), close every stream as soon as the spider starts
closing, and write checkpoints.
"""

from __future__ import annotations

import logging
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

import scrapy
from scrapy import signals
from scrapy.exceptions import DontCloseSpider
from scrapy.utils.asyncio import call_later, create_looping_call
from scrapy.utils.job import job_dir

from . import _scrapy_private
from .checkpoint import Checkpoints
from .durable import Ledger
from .http import SSEResponse
from .logformatter import SSELogFormatter
from .policy import SPIDER_CLOSED
from .registry import StreamRegistry
from .secrets import Secrets, redact_logs, stop_redacting
from .settings import SSESettings
from .tls import check_ca_file

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from scrapy.crawler import Crawler
    from typing_extensions import Self

    from .cluster.worker import ClusterWorker
    from .deadletter import DeadLetters
    from .pipelines.base import BatchingPipeline

logger = logging.getLogger(__name__)


def _is_stream_response(response: Any) -> bool:
    return isinstance(response, SSEResponse)


def _backlog(response: Any) -> int:
    stream = response.stream
    return stream.queued if stream is not None else 0


class SSEExtension:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.settings = SSESettings.from_settings(crawler.settings)
        self.registry = StreamRegistry(
            self.settings.max_streams,
            self.settings.max_streams_per_slot,
            self.settings.max_streams_per_key,
        )
        #: Features of :mod:`scrapy_sse._scrapy_private` the running Scrapy cannot give.
        check_ca_file(self.settings.tls_ca_file)
        if not self.settings.tls_verify:
            logger.warning(
                "SSE_TLS_VERIFY is False: the TLS certificates of streams are not verified, "
                "so their credentials may be sent to any server that answers"
            )
        self.missing = _scrapy_private.missing()
        if self.missing:
            logger.error(_scrapy_private.describe_gaps(self.missing, scrapy.__version__))
        #: Where each stream may resume: what the crawl's stores hold (see
        #: :mod:`scrapy_sse.durable`).
        self.ledger = Ledger()
        #: The credentials the crawl's streams carry, kept out of every log record for
        #: as long as the crawl runs.
        self.secrets = Secrets(self.settings.secret_params)
        redact_logs(self.secrets)
        #: Callback failures so far, by (stream URL, exception type): the log shows a
        #: traceback for the first only (see scrapy_sse.dispatch).
        self.callback_errors: dict[tuple[str, str], int] = {}
        self.registry.tracks = self.ledger.tracks
        self._dead_letters: DeadLetters | None = None
        #: The crawl's batching sinks, as each opens (the cluster claims streams in them).
        self.sinks: list[BatchingPipeline] = []
        #: This crawl as a worker of a cluster (``SSE_CLUSTER_URL``), else ``None``.
        self.cluster: ClusterWorker | None = None
        if crawler.settings.get("SSE_CLUSTER_URL"):
            from .cluster.worker import ClusterWorker

            self.cluster = ClusterWorker(crawler, self)
        #: The errback for a stream connection that never opened (set by the spider
        #: middleware, which owns reconnection; see the downloader middleware).
        self.connection_failed: Callable[..., AsyncIterator[Any]] | None = None
        self._checkpoint_timer: Any = None
        #: Resting streams whose next burst is arranged but has not started.
        self._pending_bursts = 0
        if self.settings.dead_letters:
            self.dead_letters.record_item_failures()
        # An item dropped or failed has settled once the dead letters (connected
        # first, so run first) have taken their own hold on it.
        crawler.signals.connect(self._item_settled, signal=signals.item_dropped)
        crawler.signals.connect(self._item_settled, signal=signals.item_error)
        crawler.signals.connect(self._engine_started, signal=signals.engine_started)
        crawler.signals.connect(self._spider_idle, signal=signals.spider_idle)
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(self._engine_stopped, signal=signals.engine_stopped)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def has(self, feature: _scrapy_private.Feature) -> bool:
        """Whether a feature that needs Scrapy's private names is available."""
        return feature not in self.missing

    @cached_property
    def burst_idle(self) -> float:
        """Seconds without an event after which a stream's burst ends (0: never).

        Bursts need the stream output wrapper (it says when all of a burst's output
        has been processed, so that the next burst never overlaps it) and the close
        hook (a resting stream is no request in progress: only the hook stops it when
        the spider closes)."""
        needs = (
            _scrapy_private.BURSTS,
            _scrapy_private.CLOSE_STREAMS,
            _scrapy_private.ORDERED_OUTPUT,
        )
        if self.settings.release_idle_chain <= 0 or not all(map(self.has, needs)):
            return 0.0
        return self.settings.release_idle_chain

    @property
    def dead_letters(self) -> DeadLetters:
        """The crawl's dead-letter store, created on first use (the sinks' side: the
        downloader never imports it)."""
        if self._dead_letters is None:
            from .deadletter import DeadLetters

            self._dead_letters = DeadLetters(self.crawler)
        return self._dead_letters

    def _engine_started(self) -> None:
        engine = self.crawler.engine
        assert engine is not None
        if self.has(_scrapy_private.CLOSE_STREAMS):
            _scrapy_private.install_close_hook(engine, self._closing)
        if self.has(_scrapy_private.ORDERED_OUTPUT):
            item_done = _scrapy_private.install_stream_output(
                engine.scraper,
                _is_stream_response,
                self.settings.concurrent_items,
                ordered=self.settings.ordered_items,
                backlog=_backlog,
                output_done=self._output_done,
            )
            if isinstance(self.crawler.logformatter, SSELogFormatter):
                self.crawler.logformatter.item_done = item_done
        if isinstance(self.crawler.logformatter, SSELogFormatter):
            self.crawler.logformatter.ledger = self.ledger
        else:
            # (Scrapy's own LogFormatter, or the user's: the signal says the same,
            # at the cost of one more receiver per item.)
            self.crawler.signals.connect(self._item_settled, signal=signals.item_scraped)
        jobdir = job_dir(self.crawler.settings)
        if jobdir:
            self.registry.checkpoints = Checkpoints(jobdir)
            self.ledger.fallback = self.registry.checkpoints.points()
            if len(self.registry.checkpoints):
                logger.info(
                    "Loaded SSE checkpoints for %d stream(s) from %s",
                    len(self.registry.checkpoints),
                    self.registry.checkpoints.path,
                )
            self._checkpoint_timer = create_looping_call(self.registry.flush_checkpoints)
            self._checkpoint_timer.start(self.settings.checkpoint_interval, now=False)

    def _item_settled(self) -> None:
        """An item left the item pipelines (the signal is sent in its context): it no
        longer holds its stream's resume point back."""
        self.ledger.item_done()

    def _output_done(self, response: SSEResponse) -> None:
        """All of a stream response's output has been processed: if its stream rests,
        its next burst starts when an event comes (or the stream ends), in a later
        turn (the scrape that just ended must be finished with first)."""
        stream = response.stream
        if stream is not None and stream.resting:
            self._pending_bursts += 1
            stream.when_ready(partial(call_later, 0, self._next_burst, response))

    def _next_burst(self, response: SSEResponse) -> None:
        self._pending_bursts -= 1
        if self.registry.closing:
            return  # (the close closed and recorded the stream)
        engine = self.crawler.engine
        assert engine is not None
        _scrapy_private.scrape_again(engine, response)

    def _spider_idle(self) -> None:
        # A stream between bursts has no request in progress: Scrapy would see an
        # idle spider and close it.
        # (A stream that ended while resting has left the registry, but its last
        # burst, which reconnects or calls the errback, is still to run.)
        # A cluster worker also waits for the streams it may still have to take over.
        if (
            self.registry.streams
            or self._pending_bursts
            or (self.cluster is not None and self.cluster.has_work())
        ):
            raise DontCloseSpider

    async def _closing(self, reason: str) -> None:
        closed = self.registry.close_all(SPIDER_CLOSED)
        if closed:
            logger.info(
                "Closed %d open SSE stream(s) because the spider is closing (%s)",
                closed,
                reason,
            )

    def _engine_stopped(self) -> None:
        # (After the stats dump: the last records of the crawl are redacted too.)
        stop_redacting(self.secrets)

    def _spider_closed(self) -> None:
        self.registry.close_all(SPIDER_CLOSED)
        if self._checkpoint_timer is not None and self._checkpoint_timer.running:
            self._checkpoint_timer.stop()
        # Every stream has ended and every delivered item has been processed by now.
        self.registry.flush_checkpoints()


def sse_state(crawler: Crawler) -> SSEExtension:
    """The crawl's scrapy-sse state (its :class:`SSEExtension`)."""
    state = crawler.get_extension(SSEExtension)
    if state is None:
        raise RuntimeError(
            "scrapy-sse is not enabled in this crawl: add 'scrapy_sse.SSEAddon' to ADDONS"
        )
    return state
