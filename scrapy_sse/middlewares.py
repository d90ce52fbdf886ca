"""The middlewares that give a stream its life cycle.

``SSEDownloaderMiddleware`` (near the downloader):
  * gives each stream a key (the fingerprint of the request that first opened it) and
    resumes it from its ``JOBDIR`` checkpoint on a restarted crawl;
  * turns a failed connection attempt of a stream (an error status, a wrong content
    type, a refused connection, a timeout) into an ``SSEResponse`` whose stream has
    already ended, so every end of a stream, at connect time or later, reaches one
    place: the spider middleware.

``SSESpiderMiddleware`` (nearest the engine, so reconnect requests are not made
deeper by ``DepthMiddleware`` nor filtered as off-site):
  * closes the stream when its callback is done with it;
  * decides, from how the stream ended, whether to reconnect (after the delay the
    policy sets, with ``Last-Event-ID`` of the last delivered event and fresh
    credentials from the spider's ``sse_refresh_auth``), to give up (the failure goes
    to the errback), or to stop.
"""

from __future__ import annotations

import inspect
import logging
import random
from time import time
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import IgnoreRequest
from twisted.python.failure import Failure

from .deadletter import redact_url
from .dispatch import _outputs
from .errors import SSEResponseError, SSEStreamError
from .handler import failed_response
from .http import SSERequest, SSEResponse, apply_stream_defaults, is_sse_request
from .idle_chain import is_released
from .policy import CALLBACK_DONE, GIVE_UP, RECONNECT, History, Outcome, decide, parse_retry_after
from .registry import StreamRegistry
from .settings import SSESettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from typing_extensions import Self

    from .stream import SSEStream

logger = logging.getLogger(__name__)

HISTORY_KEY = "sse_history"
SKIP_IDS_KEY = "sse_skip_ids"
STREAM_KEY = "sse_stream_key"


class SSEDownloaderMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.registry = StreamRegistry.for_crawler(crawler)
        accept = crawler.settings.getdict("DEFAULT_REQUEST_HEADERS").get("Accept")
        self._default_accept = accept.encode("latin-1") if isinstance(accept, str) else None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def process_request(self, request: Request) -> None:
        if not is_sse_request(request):
            return
        if not isinstance(request, SSERequest):
            # A FormRequest(meta={"sse": True}), say: the defaults an SSERequest sets
            # itself (dont_filter must be set by the spider: the scheduler came first).
            # DefaultHeadersMiddleware ran before this one: its Accept is replaced.
            if request.headers.get(b"Accept") == self._default_accept:
                del request.headers[b"Accept"]
            apply_stream_defaults(request)
        meta = request.meta
        if STREAM_KEY not in meta:
            assert self.crawler.request_fingerprinter is not None
            # Fingerprint a throwaway copy: Scrapy caches a fingerprint for as long as
            # its request lives, and a stream's request lives as long as the stream
            # (about 500 bytes per open stream for a value needed once, here).
            fingerprint = self.crawler.request_fingerprinter.fingerprint(request.replace())
            meta[STREAM_KEY] = fingerprint.hex()
            checkpoints = self.registry.checkpoints
            resume = checkpoints.get(meta[STREAM_KEY]) if checkpoints is not None else None
            if resume and not request.headers.get(b"Last-Event-ID"):
                logger.info(
                    "Resuming SSE stream %s from checkpoint id %r", redact_url(request.url), resume
                )
                request.headers[b"Last-Event-ID"] = resume.encode("utf-8")
                if isinstance(request, SSERequest):
                    request.last_event_id = resume

    def process_exception(self, request: Request, exception: Exception) -> Response | None:
        if not is_sse_request(request) or isinstance(exception, IgnoreRequest):
            return None
        return failed_response(self.crawler, request, exception)


class SSESpiderMiddleware:
    def __init__(self, crawler: Crawler, rng: random.Random | None = None) -> None:
        self.crawler = crawler
        self.settings = SSESettings.from_settings(crawler.settings)
        self.registry = StreamRegistry.for_crawler(crawler)
        self._rng = rng or random.Random()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def process_spider_output(
        self, response: Response, result: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        if not isinstance(response, SSEResponse) or response.stream is None:
            async for value in result:
                yield value
            return
        stream = response.stream
        try:
            async for value in result:
                yield value
        except BaseException:
            self._output_ended(stream)
            raise
        if is_released(response):
            return  # only this burst's chain ended: the output goes on in a new one
        self._output_ended(stream)
        async for value in self._after(stream):
            yield value

    def _output_ended(self, stream: SSEStream) -> None:
        if stream.is_open:
            stream.close(CALLBACK_DONE)
        # Now every queued event has been delivered (or dropped): checkpoint the final
        # id, which the end of the connection alone would not have seen.
        self.registry.record(stream)

    # -- end of a stream -------------------------------------------------------------

    def _outcome(self, stream: SSEStream, spider: Any) -> Outcome:
        error = stream.error
        status = None
        retry_after = None
        reason = stream.end_reason or ""
        if isinstance(error, SSEResponseError):
            status = error.status
            if status == 200:
                reason = "bad_content_type"
            retry_after = parse_retry_after(error.headers.get("Retry-After"), time())
        return Outcome(
            reason=reason,
            status=status,
            delivered=stream.events_delivered,
            retry_ms=stream.parser.retry,
            retry_after=retry_after,
            has_auth_hook=hasattr(spider, "sse_refresh_auth"),
        )

    async def _after(self, stream: SSEStream) -> AsyncIterator[Any]:
        if self.registry.closing:
            return  # the crawl is stopping: no reconnect, no errback
        spider = self.crawler.spider
        stats = self.crawler.stats
        assert stats is not None
        request = stream.request
        outcome = self._outcome(stream, spider)
        history = History.from_dict(request.meta.get(HISTORY_KEY))
        decision = decide(
            outcome,
            history,
            self.settings.policy(request),
            reconnect_enabled=getattr(request, "reconnect", True)
            and request.meta.get("sse_reconnect", True),
            now=time(),
            rng=self._rng,
        )
        if decision.action == RECONNECT:
            async for value in self._reconnect(stream, decision.delay, decision, outcome):
                yield value
        elif decision.action == GIVE_UP:
            stats.inc_value(f"sse/give_up/{decision.reason}")
            error = stream.error or SSEStreamError(
                f"SSE stream {redact_url(stream.url)} ended ({outcome.reason})", outcome.reason
            )
            logger.error(
                "Giving up on SSE stream %s after %d reconnect(s): %s (%s)",
                redact_url(stream.url),
                history.reconnects,
                decision.reason,
                error,
                extra={"spider": spider},
            )
            async for value in self._errback(request, error):
                yield value

    async def _errback(self, request: Request, error: BaseException) -> AsyncIterator[Any]:
        if request.errback is None:
            return
        failure = Failure(error)
        failure.request = request  # type: ignore[attr-defined]
        async for value in _outputs(request.errback(failure)):
            yield value

    async def _reconnect(
        self, stream: SSEStream, delay: float, decision: Any, outcome: Outcome
    ) -> AsyncIterator[Any]:
        stats = self.crawler.stats
        assert stats is not None
        request = stream.request
        resume_id = stream.last_delivered_id
        stats.inc_value(f"sse/reconnects/{outcome.reason}")
        logger.info(
            "Reconnecting SSE stream %s in %.2f s (%s; %d event(s) delivered on that "
            "connection; resuming after id %r; reconnect #%d)",
            redact_url(stream.url),
            delay,
            outcome.reason if outcome.status is None else f"HTTP {outcome.status}",
            outcome.delivered,
            resume_id,
            decision.history.reconnects,
            extra={"spider": self.crawler.spider},
        )
        if not await self.registry.sleep(delay):
            return  # the spider is closing
        meta = dict(request.meta)
        meta[HISTORY_KEY] = decision.history.to_dict()
        meta[SKIP_IDS_KEY] = list(stream.recent_ids)
        meta.pop("download_latency", None)
        kwargs: dict[str, Any] = {"dont_filter": True, "meta": meta}
        update = await self._refresh_auth(request, stream, decision.refresh_auth)
        if update is not None:
            headers = request.headers.copy()
            for name, value in (update.get("headers") or {}).items():
                headers[name] = value
            kwargs["headers"] = headers
            if update.get("cookies") is not None:
                kwargs["cookies"] = update["cookies"]
        if isinstance(request, SSERequest):
            kwargs["last_event_id"] = resume_id or request.last_event_id
        new_request = request.replace(**kwargs)
        if resume_id and not isinstance(new_request, SSERequest):
            new_request.headers[b"Last-Event-ID"] = resume_id.encode("utf-8")
        yield new_request

    async def _refresh_auth(
        self, request: Request, stream: SSEStream, required: bool
    ) -> dict[str, Any] | None:
        """Credentials for the next connection from ``spider.sse_refresh_auth``.

        Called before every reconnect, not only after a 401/403: an expiring token is
        renewed before the server has to refuse it.
        """
        hook = getattr(self.crawler.spider, "sse_refresh_auth", None)
        if hook is None:
            return None
        response_or_failure: Any = stream.response
        if stream.error is not None:
            response_or_failure = Failure(stream.error)
        try:
            result = hook(request, response_or_failure)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            logger.error(
                "sse_refresh_auth failed for %s; reconnecting with the old credentials",
                redact_url(request.url),
                exc_info=True,
                extra={"spider": self.crawler.spider},
            )
            return None
        if required and self.crawler.stats is not None:
            self.crawler.stats.inc_value("sse/auth_refreshed")
        return dict(result) if result else None
