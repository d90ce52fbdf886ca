"""The download handler: event streams through a transport, everything else through
the handler Scrapy would otherwise have used.

The fallback is resolved when it is first needed, not when the add-on runs: Scrapy
rewrites ``DOWNLOAD_HANDLERS_BASE`` for reactorless mode after add-ons have run.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from hashlib import blake2b
from time import time
from typing import TYPE_CHECKING, Any

from pydispatch.dispatcher import getAllReceivers, liveReceivers
from scrapy.core.downloader.handlers.base import BaseDownloadHandler
from scrapy.exceptions import NotConfigured, NotSupported
from scrapy.http import Headers, Response
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.misc import build_from_crawler, load_object

from . import signals
from .errors import SSEResponseError, SSEStreamError
from .events import SSEComment
from .extension import sse_state
from .failures import FailureLog
from .http import LLM_KEY, SENT_AT_KEY, SSEResponse, is_sse_request, read_by_parse, redact_url
from .policy import BAD_HEADERS, CLOSING, NO_CONTENT
from .secrets import DEFAULT_SECRET_PARAMS, mask_url
from .settings import meta_flag
from .stream import FINGERPRINT_SALT, SSEStream
from .transport import body_decoder

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from scrapy import Request
    from scrapy.crawler import Crawler

    from .registry import Places
    from .settings import SSESettings
    from .transport import OpenedResponse, Transport

logger = logging.getLogger(__name__)

#: Bytes of an error body kept in SSEResponseError (APIs explain errors there).
ERROR_BODY_LIMIT = 1024
#: Most response headers, and header bytes, a stream is read with (a hostile server's
#: head is refused, with a clear reason).
MAX_HEADERS = 100
MAX_HEAD = 64 * 1024


def download_slot(request: Request) -> str:
    """The key ``SSE_MAX_STREAMS_PER_SLOT`` counts by: Scrapy's download slot."""
    slot = request.meta.get("download_slot")
    return str(slot) if slot is not None else (urlparse_cached(request).hostname or "")


#: Request headers that carry an API key, as LLM providers name them.
API_KEY_HEADERS = (b"Authorization", b"X-Api-Key", b"X-Goog-Api-Key", b"Api-Key")


def api_key(request: Request) -> str | None:
    """What ``SSE_MAX_STREAMS_PER_KEY`` counts by: the host and a digest of the
    request's API key (a header, or ``?key=`` as Gemini allows), never the key itself;
    ``None`` for a request that carries none."""
    parts = urlparse_cached(request)
    secret = next(
        (request.headers.get(name) for name in API_KEY_HEADERS if name in request.headers), None
    )
    if secret is None:
        query = [p[4:] for p in (parts.query or "").split("&") if p.startswith("key=")]
        if not query:
            return None
        secret = query[0].encode()
    return f"{parts.hostname}:{blake2b(secret, digest_size=8).hexdigest()}"


def is_event_stream(content_type: bytes | None) -> bool:
    """Whether a Content-Type's essence is ``text/event-stream``."""
    if not content_type:
        return False
    return content_type.split(b";", 1)[0].strip().lower() == b"text/event-stream"


class SSEDownloadHandler(BaseDownloadHandler):
    lazy = False

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        state = sse_state(crawler)
        self._settings = state.settings
        self._registry = state.registry
        self._fallbacks: dict[str, Any] = {}
        self._transport: Transport | None = None

    # -- fallback ----------------------------------------------------------------

    def _fallback(self, scheme: str) -> Any:
        handler = self._fallbacks.get(scheme)
        if handler is None:
            settings = self.crawler.settings
            path = settings.getdict("SSE_FALLBACK_HANDLERS").get(scheme) or settings.getdict(
                "DOWNLOAD_HANDLERS_BASE"
            ).get(scheme)
            if not path:
                raise NotSupported(f"No fallback download handler for scheme {scheme!r}")
            handler_cls = load_object(path)
            if handler_cls is type(self):
                raise NotConfigured("SSE_FALLBACK_HANDLERS must not point at SSEDownloadHandler")
            handler = self._fallbacks[scheme] = build_from_crawler(handler_cls, self.crawler)
        return handler

    # -- streams -----------------------------------------------------------------

    def _get_transport(self) -> Transport:
        if self._transport is None:
            if self.crawler.settings.getbool("TWISTED_REACTOR_ENABLED", True):
                from .transport.twisted import TwistedTransport

                self._transport = TwistedTransport(self.crawler)
            else:
                from .transport.aiohttp import AiohttpTransport

                self._transport = AiohttpTransport(self.crawler)
        return self._transport

    async def download_request(self, request: Request) -> Response:
        if not is_sse_request(request):
            fallback = self._fallback(urlparse_cached(request).scheme)
            response: Response = await fallback.download_request(request)
            return response
        slot: Places = download_slot(request)
        if self._registry.counts_keys:
            key = api_key(request)
            if key is not None:
                slot = (download_slot(request), key)
        await self._registry.acquire(slot)
        if request.meta.get(LLM_KEY):
            request.meta[SENT_AT_KEY] = time()  # (after any wait for a place: sent now)
        try:
            opened = await self._registry.opening(self._get_transport().open(request))
            if self._registry.closing:
                # The head arrived in the same turn as the close began.
                opened.abort()
                raise SSEStreamError("The spider closed as the stream opened", CLOSING)
            return await self._respond(request, opened, slot)
        except BaseException:
            self._registry.release(slot)
            raise

    async def _respond(self, request: Request, opened: OpenedResponse, slot: Places) -> Response:
        """Turn an opened response into what Scrapy should see. On return without a
        live stream registered, the caller releases the stream slot."""
        status = opened.status
        headers = opened.headers
        stats = self.crawler.stats
        assert stats is not None
        if 300 <= status < 400 and b"Location" in headers:
            # Let RedirectMiddleware follow it (method, body and headers as it decides).
            opened.abort()
            self._registry.release(slot)
            return Response(opened.url, status=status, headers=headers, request=request)
        content_type = headers.get(b"Content-Type")
        # (Counted as sent: each value a line of ``name: value\r\n``.)
        lines = size = 0
        for name, values in headers.items():
            for value in values or ():
                lines += 1
                size += len(name) + len(value) + 4
        too_many = lines > MAX_HEADERS
        if too_many or size > MAX_HEAD:
            opened.abort()
            stats.inc_value("sse/errors/bad_headers")
            raise SSEStreamError(
                f"{redact_url(request.url)} answered with "
                + (
                    f"more than {MAX_HEADERS} headers"
                    if too_many
                    else f"headers over {MAX_HEAD} bytes"
                )
                + ": not an event stream a client should read",
                BAD_HEADERS,
            )
        if status == 204:
            opened.abort()
            stream = self._new_stream(request)
            stream.finish(NO_CONTENT)
            self._registry.release(slot)
            logger.info("SSE stream %s answered 204 No Content: not streaming", request.url)
            return self._response(request, opened, stream)
        if status != 200 or not is_event_stream(content_type):
            try:
                body = await self._registry.opening(opened.read_prefix(ERROR_BODY_LIMIT))
            except BaseException:
                opened.abort()  # (cancelled by the close, maybe before it began)
                raise
            stats.inc_value(
                f"sse/errors/http_{status}" if status != 200 else "sse/errors/bad_content_type"
            )
            raise SSEResponseError(
                opened.url,
                status,
                (content_type or b"").decode("latin-1"),
                body,
                {k.decode("latin-1"): v[-1].decode("latin-1") for k, v in headers.items() if v},
            )
        try:
            decode = body_decoder(headers.get(b"Content-Encoding"))
            stream = self._new_stream(request)
        except Exception:
            opened.abort()
            raise
        # The body handed to the spider is decoded: keep middlewares from decoding again.
        headers.pop(b"Content-Encoding", None)
        headers.pop(b"Content-Length", None)
        self._registry.add(stream, slot)
        stats.inc_value("sse/streams_opened")
        back = FailureLog(request.meta).opened(time())
        if back is not None:
            logger.info(
                "SSE stream %s is open again after %d failed attempt(s) in %.0f s",
                redact_url(request.url),
                *back,
                extra={"spider": self.crawler.spider},
            )
        else:
            logger.debug("Opened SSE stream %s", request.url)
        response = self._response(request, opened, stream)
        # (Before any byte is read: a handler sees the stream before its first comment.)
        self.crawler.signals.send_catch_log(
            signals.stream_opened,
            request=request,
            response=response,
            status=status,
            headers=headers,
        )
        opened.stream_into(stream, decode)
        return response

    def _new_stream(self, request: Request) -> SSEStream:
        return new_stream(self.crawler, self._settings, request)

    def _response(self, request: Request, opened: OpenedResponse, stream: SSEStream) -> SSEResponse:
        response = self._stream_response(request, opened, stream)
        params = self._settings.secret_params
        if params != DEFAULT_SECRET_PARAMS:
            response.safe_url = mask_url(response.url, params)
        return response

    def _stream_response(
        self, request: Request, opened: OpenedResponse, stream: SSEStream
    ) -> SSEResponse:
        return stream_response(
            request,
            stream,
            url=opened.url,
            status=opened.status,
            headers=opened.headers,
            ip_address=opened.ip_address,
            certificate=opened.certificate,
            protocol=opened.protocol,
        )

    async def close(self) -> None:
        self._registry.close_all("spider_closed")
        if self._transport is not None:
            await self._transport.close()
        for handler in self._fallbacks.values():
            await handler.close()


@lru_cache(maxsize=16)
def shared_frozenset(values: tuple[str, ...]) -> frozenset[str]:
    """One frozenset per distinct ``SSE_DONE_DATA``, shared by all streams using it."""
    return frozenset(values)


def as_strings(value: str | Iterable[str]) -> tuple[str, ...]:
    """``meta["sse_done_data"]`` may be one string or several."""
    return (value,) if isinstance(value, str) else tuple(value)


def new_stream(crawler: Crawler, settings: SSESettings, request: Request) -> SSEStream:
    """The stream object for one connection of ``request``, configured per request."""
    last_event_id = getattr(request, "last_event_id", None) or (
        request.headers.get(b"Last-Event-ID") or b""
    ).decode("utf-8", "replace")
    return SSEStream(
        request,
        queue_size=int(settings.for_request(request, "queue_size")),
        max_event_size=int(settings.for_request(request, "max_event_size")),
        done_data=shared_frozenset(as_strings(settings.for_request(request, "done_data"))),
        # (Comments are for a spider's own parse(response); kept for no one else,
        # they would only wake a resting stream for nothing.)
        comments=meta_flag(settings.for_request(request, "comments"))
        and read_by_parse(request, crawler.spider),
        stats=crawler.stats,
        last_event_id=last_event_id,
        read_timeout=float(settings.for_request(request, "read_timeout") or 0),
        skip=resent_to_skip(request.meta.get(SKIP_KEY), last_event_id),
        on_comment=_comment_signal(crawler, request),
    )


def _comment_signal(crawler: Crawler, request: Request) -> Callable[[SSEComment], None] | None:
    """What sends ``comment_received`` for a stream's comments: ``None`` while no
    handler is connected (comments are then not even kept by the parser)."""
    receivers = liveReceivers(getAllReceivers(crawler.signals.sender, signals.comment_received))
    if next(iter(receivers), None) is None:
        return None
    send = crawler.signals.send_catch_log

    def received(comment: SSEComment) -> None:
        send(signals.comment_received, comment=comment, request=request)

    return received


#: ``meta`` key of a reconnect request: the events its previous connection delivered
#: last, as ``{"salt": FINGERPRINT_SALT, "events": [[id, fingerprint], ...]}``.
SKIP_KEY = "sse_skip"


def resent_to_skip(value: Any, last_event_id: str) -> list[tuple[str, int | None]]:
    """The events a new connection skips if the server sends them again: those in
    ``meta[SKIP_KEY]`` (fingerprints dropped when made by another process), else the
    resume id alone (its content unknown)."""
    if isinstance(value, dict) and value.get("events"):
        same_process = value.get("salt") == FINGERPRINT_SALT
        return [(str(i), fp if same_process else None) for i, fp in value["events"]]
    return [(last_event_id, None)] if last_event_id else []


def stream_response(
    request: Request,
    stream: SSEStream,
    *,
    url: str,
    status: int,
    headers: Headers | None,
    **kwargs: Any,
) -> SSEResponse:
    """The ``SSEResponse`` Scrapy passes on.

    Its request is a copy, on which the spider middleware installs the callback that
    reads the stream (the original keeps the user's callback, for reconnects).

    Both live as long as the stream (hours, thousands at once), so nothing is copied
    that need not be: the copy shares the ``Headers`` of the request it stands for
    (it is that request, as sent), and the response keeps ``headers`` as given
    instead of copying them once more.
    """
    response_request = request.replace(headers=None)
    response_request.headers = request.headers
    response = SSEResponse(
        url,
        status=status,
        body=b"",
        request=response_request,
        stream=stream,
        **kwargs,
    )
    if headers is not None:
        response.headers = headers
    stream.response = response
    stream.parser.source = response
    return response
