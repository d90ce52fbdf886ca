"""Transport for reactorless crawls (``TWISTED_REACTOR_ENABLED = False``).

aiohttp is what Scrapy itself uses there. Its line reader splits on LF only and fails
on lines over 128 KiB, so raw chunks (``readany``) go to our own parser instead.
Not reading is the backpressure: aiohttp stops reading the socket once its own
buffer is full.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from time import monotonic
from typing import TYPE_CHECKING, Any

import aiohttp
from scrapy.exceptions import (
    CannotResolveHostError,
    DownloadConnectionRefusedError,
    DownloadFailedError,
    DownloadTimeoutError,
)
from scrapy.http import Headers

from .. import _scrapy_private
from ..errors import SSEStreamError
from ..extension import sse_state
from ..http import redact_url
from ..policy import CONNECTION_LOST, DECODE_ERROR, DECOMPRESSION_BOMB, SERVER_CLOSED
from ..settings import verify_wanted
from ..tls import ssl_context, tls_refused, unverified
from . import DecompressionBomb

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Request
    from scrapy.crawler import Crawler

    from ..stream import SSEStream


class _AiohttpOpenedResponse:
    def __init__(self, response: aiohttp.ClientResponse, timeout: float) -> None:
        self._response = response
        self._timeout = timeout
        self.status = response.status
        self.headers = Headers(list(response.raw_headers))
        self.url = str(response.url)
        self.ip_address: Any = None
        self.certificate: Any = None
        version = response.version
        self.protocol: str | None = f"HTTP/{version.major}.{version.minor}" if version else None
        self._task: asyncio.Task[None] | None = None
        self._running = asyncio.Event()
        self._running.set()
        self._aborted = False

    async def read_prefix(self, limit: int) -> bytes:
        chunks: list[bytes] = []

        async def read() -> None:
            size = 0
            while size < limit:
                chunk = await self._response.content.read(limit - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)

        try:
            await asyncio.wait_for(read(), self._timeout)
        except (TimeoutError, asyncio.TimeoutError, aiohttp.ClientError, OSError):
            pass
        finally:
            self._response.close()
        return b"".join(chunks)

    def stream_into(self, stream: SSEStream, decode: Callable[[bytes], bytes] | None) -> None:
        stream.attach(self)
        self._task = asyncio.get_running_loop().create_task(self._pump(stream, decode))

    async def _pump(self, stream: SSEStream, decode: Callable[[bytes], bytes] | None) -> None:
        content = self._response.content
        try:
            while stream.is_open:
                if not self._running.is_set():
                    await self._running.wait()
                    continue
                data = await content.readany()
                if not data:
                    stream.finish(SERVER_CLOSED)
                    break
                if decode is not None:
                    try:
                        data = decode(data)
                    except zlib.error as exc:
                        stream.finish(
                            _decode_reason(exc),
                            SSEStreamError(
                                f"Could not decompress the stream: {exc}", _decode_reason(exc)
                            ),
                        )
                        break
                stream.feed(data)
        except asyncio.CancelledError:
            if not self._aborted:
                raise
        except (aiohttp.ClientError, OSError) as exc:
            stream.finish(
                CONNECTION_LOST,
                SSEStreamError(
                    f"Connection to {redact_url(stream.url)} lost: {exc or type(exc).__name__}",
                    CONNECTION_LOST,
                ),
            )
        finally:
            self._response.close()

    # Producer interface, used by the stream.
    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def abort(self) -> None:
        if self._aborted:
            return
        self._aborted = True
        self._response.close()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()


class AiohttpTransport:
    def __init__(self, crawler: Crawler) -> None:
        self._crawler = crawler
        self._timeout = crawler.settings.getfloat("DOWNLOAD_TIMEOUT")
        # (True: aiohttp's own default context, when Scrapy's cannot be built.)
        self._ssl: ssl.SSLContext | bool = (
            _scrapy_private.make_ssl_context(crawler)
            if sse_state(crawler).has(_scrapy_private.TLS_SETTINGS)
            else True
        )
        self._settings = sse_state(crawler).settings
        self._verifying: ssl.SSLContext | None = None
        self._unverified: set[str] = set()
        bind = crawler.settings.get("DOWNLOAD_BIND_ADDRESS")
        self._local_addr = (bind, 0) if isinstance(bind, str) else bind
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, local_addr=self._local_addr),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"),
            )
        return self._session

    async def open(self, request: Request) -> _AiohttpOpenedResponse:
        timeout = request.meta.get("download_timeout") or self._timeout
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, values in request.headers.items()
            for v in values
            if k.lower() != b"proxy-authorization"
        ]
        proxy = request.meta.get("proxy")
        proxy_headers = None
        auth = request.headers.get(b"Proxy-Authorization")
        if proxy and auth:
            proxy_headers = {"Proxy-Authorization": auth.decode("latin-1")}
        started = monotonic()
        opening = self._get_session().request(
            request.method,
            request.url.split("#", 1)[0],
            data=request.body or None,
            headers=headers,
            ssl=self._context(request),
            proxy=proxy,
            proxy_headers=proxy_headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
        try:
            response = await asyncio.wait_for(opening, timeout)
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise DownloadTimeoutError(
                f"Opening stream {redact_url(request.url)} took longer than {timeout} seconds "
                "(DOWNLOAD_TIMEOUT bounds connect and headers only)"
            ) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise tls_refused(request, exc, None) from exc
        except aiohttp.ClientConnectorDNSError as exc:
            raise CannotResolveHostError(str(exc)) from exc
        except aiohttp.ClientConnectorError as exc:
            raise DownloadConnectionRefusedError(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise DownloadFailedError(str(exc)) from exc
        request.meta["download_latency"] = monotonic() - started
        return _AiohttpOpenedResponse(response, timeout)

    def _context(self, request: Request) -> ssl.SSLContext | bool:
        """Verifying TLS for a stream (see :mod:`scrapy_sse.tls`), unless turned off."""
        if not verify_wanted(self._settings.for_request(request, "tls_verify")):
            unverified(request, self._unverified)
            return self._ssl
        if self._verifying is None:
            self._verifying = ssl_context(self._settings.tls_ca_file)
        return self._verifying

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _decode_reason(error: Exception) -> str:
    return DECOMPRESSION_BOMB if isinstance(error, DecompressionBomb) else DECODE_ERROR
