"""The default transport: Twisted's HTTP/1.1 client, kept open for the whole stream.

The connection and proxy/TLS set-up are Scrapy's own (see ``_scrapy_private``); what
differs from the stock handler is that the body is never buffered: ``deliverBody``
hands each read to the stream, and the stream can pause the transport (a real push
producer, TLS included) when the spider falls behind.
"""

from __future__ import annotations

import asyncio
import zlib
from contextlib import nullcontext
from time import monotonic
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import DownloadTimeoutError, NotSupported
from scrapy.http import Headers
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.python import to_bytes
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseDone,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers as TxHeaders
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from .. import _scrapy_private
from ..errors import SSEStreamError
from ..extension import sse_state
from ..http import redact_url
from ..policy import CONNECTION_LOST, DECODE_ERROR, DECOMPRESSION_BOMB, SERVER_CLOSED
from ..settings import verify_wanted
from ..tls import VerifyingPolicy, is_verification_failure, tls_refused, unverified
from . import DecompressionBomb

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Request
    from scrapy.crawler import Crawler
    from twisted.python.failure import Failure
    from twisted.web.client import Response as TxResponse

    from ..stream import SSEStream


@implementer(IBodyProducer)
class _BodyProducer:
    """The request body (an LLM prompt, say), written at once."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _reactor() -> Any:
    """The installed reactor, imported late: importing it installs the default one."""
    from twisted.internet import reactor

    return reactor


def _at_end_of_turn(function: Callable[[], object]) -> None:
    """Run ``function`` once the reactor has handled what it is handling now: with the
    asyncio reactor (Scrapy's default) a plain ``call_soon``, a third of the cost of
    ``reactor.callLater(0, ...)``, which other reactors get."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _reactor().callLater(0, function)
    else:
        loop.call_soon(function)


class _StreamProtocol(Protocol):
    """Body bytes into the stream; also the stream's view of the connection (its
    :class:`~scrapy_sse.stream.Producer`: Twisted's public push-producer calls), so
    that an open stream costs one object here, not two.

    Twisted hands over a chunked body one HTTP chunk at a time, and servers commonly
    write one chunk per event: a single socket read then arrives as hundreds of
    pieces. They are collected and fed to the stream once, at the end of the reactor
    turn, so the parser and the stream queue run once per read instead of once per
    chunk. At most what one turn reads is held, and nothing waits longer than that turn.
    """

    def __init__(self, stream: SSEStream, decode: Callable[[bytes], bytes] | None) -> None:
        self._stream = stream
        self._decode = decode
        # Pieces received in this reactor turn, not fed yet (None: no flush scheduled).
        self._pieces: list[bytes] | None = None

    def connectionMade(self) -> None:
        self._stream.attach(self)

    def pause(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def abort(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self._decode is not None:
            try:
                data = self._decode(data)
            except zlib.error as exc:
                self._flush()
                self._stream.finish(
                    _decode_reason(exc),
                    SSEStreamError(f"Could not decompress the stream: {exc}", _decode_reason(exc)),
                )
                return
        pieces = self._pieces
        if pieces is None:
            self._pieces = [data]
            _at_end_of_turn(self._flush)
        else:
            pieces.append(data)

    def _flush(self) -> None:
        pieces, self._pieces = self._pieces, None
        if pieces:
            self._stream.feed(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._flush()
        if reason.check(ResponseDone, PotentialDataLoss):
            self._stream.finish(SERVER_CLOSED)
        else:
            self._stream.finish(
                CONNECTION_LOST,
                SSEStreamError(
                    f"Connection to {redact_url(self._stream.url)} lost: {_why_lost(reason)}",
                    CONNECTION_LOST,
                ),
            )


def _why_lost(reason: Failure) -> str:
    """How a connection broke, in words: Twisted reports a body cut mid-chunk as a
    list of failures (the close, then the data loss)."""
    failures = getattr(reason.value, "reasons", None) or [reason]
    names = {type(getattr(failure, "value", failure)).__name__ for failure in failures}
    if "_DataLoss" in names:
        return "the server closed the connection in the middle of a chunk (data lost)"
    inner = getattr(failures[-1], "value", failures[-1])
    return str(getattr(inner, "strerror", None) or inner or type(inner).__name__)


class _PrefixReader(Protocol):
    """Reads the start of an error body, then lets the connection go."""

    def __init__(self, limit: int, finished: Deferred[bytes]) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._finished = finished

    def connectionMade(self) -> None:
        if self._limit <= 0:
            self.transport.stopProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= self._limit:
            self.transport.stopProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.give_up()

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def give_up(self) -> None:
        """Hand over what was read so far and let the connection go (idempotent)."""
        if not self._finished.called:
            self._finished.callback(b"".join(self._chunks)[: self._limit])
            if self.transport is not None:
                self.transport.stopProducing()


class _TwistedOpenedResponse:
    def __init__(self, txresponse: TxResponse, url: str, timeout: float) -> None:
        self._txresponse = txresponse
        self._timeout = timeout
        self.status: int = txresponse.code
        self.headers = Headers(txresponse.headers.getAllRawHeaders())
        self.url = url
        self.ip_address: Any = None
        self.certificate: Any = None
        self.protocol: str | None = "HTTP/1.1"
        # The reader of an error body, once one was given the body (see ``abort``).
        self._reader: _PrefixReader | None = None

    async def read_prefix(self, limit: int) -> bytes:
        reactor = _reactor()
        if self._txresponse.length == 0:  # type: ignore[comparison-overlap]
            return b""
        # Cancelled (the spider closing): drop the connection.
        finished: Deferred[bytes] = Deferred(lambda _: reader.stop())
        reader = self._reader = _PrefixReader(limit, finished)
        self._txresponse.deliverBody(reader)
        # A server that sends a short error body and keeps the socket open: give up
        # after the timeout with what arrived, and close the connection.
        timer = reactor.callLater(self._timeout, reader.give_up)
        try:
            return await maybe_deferred_to_future(finished)
        finally:
            if timer.active():
                timer.cancel()

    def stream_into(self, stream: SSEStream, decode: Callable[[bytes], bytes] | None) -> None:
        if self._txresponse.length == 0:  # type: ignore[comparison-overlap]
            stream.finish(SERVER_CLOSED)
            return
        _scrapy_private.forget_sent_headers(self._txresponse)
        self._txresponse.deliverBody(_StreamProtocol(stream, decode))

    def abort(self) -> None:
        # A body goes to one protocol only: if a reader has it, that reader lets go.
        if self._reader is not None:
            self._reader.stop()
        else:
            self._reader = _PrefixReader(0, Deferred())
            self._txresponse.deliverBody(self._reader)


class TwistedTransport:
    def __init__(self, crawler: Crawler) -> None:
        self._crawler = crawler
        state = sse_state(crawler)
        # Streams never return a connection to a pool: not persistent.
        self._pool = HTTPConnectionPool(_reactor(), persistent=False)
        self._tls_policy: Any = (
            _scrapy_private.load_tls_policy(crawler)
            if state.has(_scrapy_private.TLS_SETTINGS)
            else BrowserLikePolicyForHTTPS()
        )
        self._scrapy_agent = state.has(_scrapy_private.SCRAPY_AGENT)
        self._errors = (
            _scrapy_private.scrapy_exceptions
            if state.has(_scrapy_private.SCRAPY_ERRORS)
            else nullcontext
        )
        self._bind_address = crawler.settings.get("DOWNLOAD_BIND_ADDRESS")
        self._timeout = crawler.settings.getfloat("DOWNLOAD_TIMEOUT")
        self._settings = state.settings
        self._verifying: VerifyingPolicy | None = None
        self._unverified: set[str] = set()

    def _policy(self, request: Request) -> Any:
        """Verifying TLS for a stream (see :mod:`scrapy_sse.tls`), unless turned off."""
        if not verify_wanted(self._settings.for_request(request, "tls_verify")):
            unverified(request, self._unverified)
            return self._tls_policy
        if self._verifying is None:
            self._verifying = VerifyingPolicy(self._settings.tls_ca_file)
        return self._verifying

    def _agent(self, request: Request, timeout: float) -> tuple[Any, bool]:
        """The agent for ``request`` and whether it tunnels (see ``_scrapy_private``)."""
        policy = self._policy(request)
        if self._scrapy_agent:
            return _scrapy_private.build_twisted_agent(
                request,
                crawler=self._crawler,
                tls_policy=policy,
                pool=self._pool,
                bind_address=self._bind_address,
                timeout=timeout,
            )
        if request.meta.get("proxy"):
            raise NotSupported(
                f"Cannot open stream {redact_url(request.url)} through a proxy: this Scrapy lacks "
                "the private agent scrapy-sse builds proxied streams with (see the "
                "ERROR line at start)"
            )
        bind = self._bind_address
        agent = Agent(_reactor(), policy, timeout, bind, self._pool)
        return agent, False

    async def open(self, request: Request) -> _TwistedOpenedResponse:
        """Connect and wait for headers; ``download_timeout`` bounds only this part."""
        reactor = _reactor()
        timeout = request.meta.get("download_timeout") or self._timeout
        agent, tunnel = self._agent(request, timeout)
        headers = TxHeaders(request.headers)
        if tunnel:
            headers.removeHeader(b"Proxy-Authorization")
        url = request.url
        if "#" in url:  # else keep the request's string: the response holds it for hours
            url = url.split("#", 1)[0]
        body = _BodyProducer(request.body) if request.body else None
        started = monotonic()
        d = agent.request(to_bytes(request.method), to_bytes(url, "ascii"), headers, body)
        timer = reactor.callLater(timeout, d.cancel)
        try:
            with self._errors():
                txresponse = await maybe_deferred_to_future(d)
        except Exception as exc:
            if not timer.active():  # (the timer cancelled it: however the cancel shows)
                raise DownloadTimeoutError(
                    f"Opening stream {redact_url(url)} took longer than {timeout} seconds "
                    "(DOWNLOAD_TIMEOUT bounds connect and headers only)"
                ) from exc
            if is_verification_failure(exc):  # (also an https proxy's certificate)
                raise tls_refused(request, exc, self._verifying) from exc
            raise
        finally:
            if timer.active():
                timer.cancel()
        request.meta["download_latency"] = monotonic() - started
        return _TwistedOpenedResponse(txresponse, url, timeout)

    async def close(self) -> None:
        await maybe_deferred_to_future(self._pool.closeCachedConnections())


def _decode_reason(error: Exception) -> str:
    return DECOMPRESSION_BOMB if isinstance(error, DecompressionBomb) else DECODE_ERROR
