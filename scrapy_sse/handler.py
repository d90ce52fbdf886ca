"""The download handler: event streams through a transport, everything else through
the handler Scrapy would otherwise have used.

The fallback is resolved when it is first needed, not when the add-on runs: Scrapy
rewrites ``DOWNLOAD_HANDLERS_BASE`` for reactorless mode after add-ons have run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scrapy.core.downloader.handlers.base import BaseDownloadHandler
from scrapy.exceptions import NotConfigured, NotSupported
from scrapy.http import Response
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.misc import build_from_crawler, load_object

from .dispatch import build_callback
from .errors import SSEResponseError
from .http import SSEResponse, is_sse_request
from .registry import StreamRegistry
from .settings import SSESettings
from .stream import NO_CONTENT, SSEStream
from .transport import body_decoder

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

    from .transport import OpenedResponse, Transport

logger = logging.getLogger(__name__)

#: Bytes of an error body kept in SSEResponseError (APIs explain errors there).
ERROR_BODY_LIMIT = 1024


def is_event_stream(content_type: bytes | None) -> bool:
    """Whether a Content-Type's essence is ``text/event-stream``."""
    if not content_type:
        return False
    return content_type.split(b";", 1)[0].strip().lower() == b"text/event-stream"


class SSEDownloadHandler(BaseDownloadHandler):
    lazy = False

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self._settings = SSESettings.from_settings(crawler.settings)
        self._registry = StreamRegistry.for_crawler(crawler, self._settings.max_streams)
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
        await self._registry.acquire()
        try:
            opened = await self._get_transport().open(request)
            return await self._respond(request, opened)
        except BaseException:
            self._registry.release()
            raise

    async def _respond(self, request: Request, opened: OpenedResponse) -> Response:
        """Turn an opened response into what Scrapy should see. On return without a
        live stream registered, the caller releases the stream slot."""
        status = opened.status
        headers = opened.headers
        stats = self.crawler.stats
        assert stats is not None
        if 300 <= status < 400 and b"Location" in headers:
            # Let RedirectMiddleware follow it (method, body and headers as it decides).
            opened.abort()
            self._registry.release()
            return Response(opened.url, status=status, headers=headers, request=request)
        content_type = headers.get(b"Content-Type")
        if status == 204:
            opened.abort()
            stream = self._new_stream(request)
            stream.finish(NO_CONTENT)
            self._registry.release()
            logger.info("SSE stream %s answered 204 No Content: not streaming", request.url)
            return self._response(request, opened, stream)
        if status != 200 or not is_event_stream(content_type):
            body = await opened.read_prefix(ERROR_BODY_LIMIT)
            stats.inc_value(f"sse/errors/http_{status}")
            raise SSEResponseError(
                opened.url,
                status,
                (content_type or b"").decode("latin-1"),
                body,
                {k.decode("latin-1"): v[-1].decode("latin-1") for k, v in headers.items() if v},
            )
        try:
            decode = body_decoder(headers.get(b"Content-Encoding"))
        except Exception:
            opened.abort()
            raise
        # The body handed to the spider is decoded: keep middlewares from decoding again.
        headers.pop(b"Content-Encoding", None)
        headers.pop(b"Content-Length", None)
        stream = self._new_stream(request)
        self._registry.add(stream)
        stats.inc_value("sse/streams_opened")
        logger.debug("Opened SSE stream %s", request.url)
        response = self._response(request, opened, stream)
        opened.stream_into(stream, decode)
        return response

    def _new_stream(self, request: Request) -> SSEStream:
        settings = self._settings
        return SSEStream(
            request,
            queue_size=settings.for_request(request, "queue_size"),
            max_event_size=settings.for_request(request, "max_event_size"),
            done_data=settings.done_data,
            comments=settings.for_request(request, "comments"),
            stats=self.crawler.stats,
            last_event_id=getattr(request, "last_event_id", None)
            or (request.headers.get(b"Last-Event-ID") or b"").decode("utf-8", "replace"),
        )

    def _response(self, request: Request, opened: OpenedResponse, stream: SSEStream) -> SSEResponse:
        callback = build_callback(request, self.crawler)
        response_request = request if callback is None else request.replace(callback=callback)
        response = SSEResponse(
            opened.url,
            status=opened.status,
            headers=opened.headers,
            body=b"",
            request=response_request,
            stream=stream,
            ip_address=opened.ip_address,
            certificate=opened.certificate,
            protocol=opened.protocol,
        )
        stream.response = response
        stream.parser.source = response
        return response

    async def close(self) -> None:
        self._registry.close_all("spider_closed")
        if self._transport is not None:
            await self._transport.close()
        for handler in self._fallbacks.values():
            await handler.close()
