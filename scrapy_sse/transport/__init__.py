"""I/O backends. Each opens a connection for a request and, once headers are in,
pushes body bytes into an :class:`~scrapy_sse.stream.SSEStream`. All HTTP decisions
(status, content type, redirects) are made by the handler, the same for every backend.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Protocol

from ..errors import SSEStreamError

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Request
    from scrapy.http import Headers

    from ..stream import SSEStream


class OpenedResponse(Protocol):
    """A response whose headers arrived and whose body has not been read yet."""

    status: int
    headers: Headers
    url: str
    ip_address: object
    certificate: object
    protocol: str | None

    async def read_prefix(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of the body (for error messages), then close."""

    def stream_into(self, stream: SSEStream, decode: Callable[[bytes], bytes] | None) -> None:
        """Push body bytes (through ``decode``) into ``stream`` until either ends."""

    def abort(self) -> None:
        """Drop the connection without reading the body."""


class Transport(Protocol):
    async def open(self, request: Request) -> OpenedResponse: ...

    async def close(self) -> None: ...


def body_decoder(content_encoding: bytes | None) -> Callable[[bytes], bytes] | None:
    """An incremental decoder for a compressed stream (``None`` when identity).

    Some servers compress an event stream even when asked not to; it must then be
    decoded per read, since the body never ends.
    """
    if not content_encoding:
        return None
    encoding = content_encoding.strip().lower()
    if encoding in (b"identity", b""):
        return None
    if encoding in (b"gzip", b"x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
    if encoding == b"deflate":
        return _DeflateDecoder().decompress
    raise SSEStreamError(
        f"Unsupported Content-Encoding {encoding.decode('latin-1')!r} on an event stream; "
        "send Accept-Encoding: identity, gzip or deflate",
        reason="unsupported_encoding",
    )


class _DeflateDecoder:
    """``deflate`` is zlib-wrapped by the RFC and raw in some servers: detect once."""

    def __init__(self) -> None:
        self._obj: zlib._Decompress | None = None

    def decompress(self, data: bytes) -> bytes:
        if self._obj is None:
            try:
                self._obj = zlib.decompressobj()
                return self._obj.decompress(data)
            except zlib.error:
                self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._obj.decompress(data)
