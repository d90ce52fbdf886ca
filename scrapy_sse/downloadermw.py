"""``SSEDownloaderMiddleware``: a stream request on its way to the download handler.

Nearest the downloader. It

* gives requests marked ``meta["sse"]`` (a ``FormRequest``, say) the headers and
  ``meta`` an :class:`~scrapy_sse.SSERequest` sets itself;
* gives each stream a key (the fingerprint of the request that first opened it, unless
  the request names one) and, on a restarted crawl, resumes it from the cursor its
  store committed with its data, or else from its ``JOBDIR`` checkpoint;
* routes a connection that never opened (refused, timed out, an error status, a wrong
  content type) to the stream's reconnect policy: the failure stays a download error,
  as Scrapy counts it, and goes to the errback that
  :class:`~scrapy_sse.spidermw.SSESpiderMiddleware` provides, which reconnects or, at
  give-up, calls the request's own errback.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import IgnoreRequest

from .errors import SSEResponseError, SSEStreamError
from .extension import sse_state
from .handler import new_stream
from .http import (
    LLM_KEY,
    STREAM_KEY,
    SSERequest,
    apply_stream_defaults,
    is_sse_request,
    redact_url,
)
from .llm.assembly import llm_format
from .policy import HTTP_ERROR, NETWORK_ERROR

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Request
    from scrapy.crawler import Crawler
    from twisted.python.failure import Failure
    from typing_extensions import Self

logger = logging.getLogger(__name__)


class RoutedFailure(partial[Any]):
    """The errback a failed stream connection is given: the reconnect policy's, with
    the ended stream and the request's own errback (``args``)."""


def user_errback(errback: Any) -> Callable[[Failure], Any] | None:
    """A request's own errback, whether or not a failed connection replaced it."""
    if isinstance(errback, RoutedFailure):
        return errback.args[1]  # type: ignore[no-any-return]
    return errback  # type: ignore[no-any-return]


def assign_stream_key(crawler: Crawler, request: Request) -> str:
    """The request's stream key (``meta["sse_stream_key"]``), set if it has none: the
    fingerprint of the request that first opens the stream."""
    key = request.meta.get(STREAM_KEY)
    if not key:
        assert crawler.request_fingerprinter is not None
        # Fingerprint a throwaway copy: Scrapy caches a fingerprint for as long as
        # its request lives, and a stream's request lives as long as the stream
        # (about 500 bytes per open stream for a value needed once, here).
        key = request.meta[STREAM_KEY] = crawler.request_fingerprinter.fingerprint(
            request.replace()
        ).hex()
    return str(key)


def _parked(failure: Failure) -> None:
    """The errback of a stream request a cluster worker parked: not an error."""


class SSEDownloaderMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.state = sse_state(crawler)
        accept = crawler.settings.getdict("DEFAULT_REQUEST_HEADERS").get("Accept")
        self._default_accept = accept.encode("latin-1") if isinstance(accept, str) else None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def process_request(self, request: Request) -> None:
        if not is_sse_request(request):
            return
        if isinstance(request.errback, RoutedFailure):
            # A copy of a failed request that another middleware sent again (a retry,
            # a proxy rotation): it gets its own errback back.
            request.errback = user_errback(request.errback)
        if not isinstance(request, SSERequest):
            # A FormRequest(meta={"sse": True}), say: the defaults an SSERequest sets
            # itself (dont_filter must be set by the spider: the scheduler came first).
            # DefaultHeadersMiddleware ran before this one: its Accept is replaced.
            if request.headers.get(b"Accept") == self._default_accept:
                del request.headers[b"Accept"]
            apply_stream_defaults(request)
        # What the request carries that no record may show (see scrapy_sse.secrets).
        self.state.secrets.add_request(request.url, request.headers, request.meta.get("proxy"))
        completion = request.meta.get(LLM_KEY)
        if completion:
            try:
                llm_format(completion)
            except ValueError as exc:
                logger.error("Not sending %s: %s", redact_url(request.url), exc)
                raise IgnoreRequest(str(exc)) from None
        key = assign_stream_key(self.crawler, request)
        if completion:
            return  # (a completion resumes by its provider's own means, never by id)
        cluster = self.state.cluster
        if cluster is not None and not cluster.holds(key):
            # A worker of a cluster opens a stream only while it holds its lease.
            cluster.park(key, request)
            request.errback = _parked
            raise IgnoreRequest(f"SSE stream {key} is parked until this worker holds it")
        if request.headers.get(b"Last-Event-ID"):
            return
        ledger = self.state.ledger
        if key in ledger.tracks:
            return  # (already read in this crawl: it reconnects with its own id)
        point = ledger.resume_point(key)
        if not point or not point[0]:
            return
        resume = point[0]
        stored = ledger.stored.get(key)
        where = "the cursor stored with its data" if stored else "the JOBDIR checkpoint"
        logger.info(
            "Resuming SSE stream %s after id %r (%s)", redact_url(request.url), resume, where
        )
        fallback = ledger.fallback.get(key)
        if stored is not None and fallback is not None and fallback[0] != stored.event_id:
            logger.info(
                "SSE stream %s: the JOBDIR checkpoint says id %r, its store says %r; the "
                "store holds the data, so the stream resumes from it",
                redact_url(request.url),
                fallback[0],
                stored.event_id,
            )
        request.headers[b"Last-Event-ID"] = resume.encode("utf-8")
        if isinstance(request, SSERequest):
            request.last_event_id = resume

    def process_exception(self, request: Request, exception: Exception) -> None:
        cluster = self.state.cluster
        if cluster is not None and isinstance(exception, IgnoreRequest) and is_sse_request(request):
            # (Another middleware refused a stream this worker holds, robots.txt say:
            # no reconnect follows, so the cluster must hear of it.)
            cluster.stream_ended(str(request.meta.get(STREAM_KEY, "")), "ignored", gave_up=True)
        connection_failed = self.state.connection_failed
        if (
            not is_sse_request(request)
            or isinstance(exception, IgnoreRequest)
            or connection_failed is None
        ):
            return
        stream = new_stream(self.crawler, self.state.settings, request)
        if isinstance(exception, SSEResponseError):
            reason = HTTP_ERROR
        elif isinstance(exception, SSEStreamError):
            reason = exception.reason
        else:
            reason = NETWORK_ERROR
        stream.finish(reason, exception)
        # The same request object reaches the scraper with this failure: its errback
        # is where Scrapy hands a download error to the spider.
        request.errback = RoutedFailure(connection_failed, stream, user_errback(request.errback))
