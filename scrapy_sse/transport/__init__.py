"""I/O backends. Each opens a connection for a request and, once headers are in,
pushes body bytes into an :class:`~scrapy_sse.stream.SSEStream`. All HTTP decisions
(status, content type, redirects) are made by the handler, the same for every backend.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, Protocol

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


#: Decompressed bytes a stream may produce before its expansion is checked, and the
#: most it may then expand (event streams of JSON compress 5-20 times; a decompression
#: bomb, a thousand times and more).
BOMB_FLOOR = 4 * 1024 * 1024
MAX_EXPANSION = 200
#: Bytes decompressed per step: one read cannot expand into more than this at once.
DECOMPRESS_STEP = 256 * 1024


class DecompressionBomb(zlib.error):
    """A compressed stream that expands beyond :data:`MAX_EXPANSION` times."""


def body_decoder(content_encoding: bytes | None) -> Callable[[bytes], bytes] | None:
    """An incremental decoder for a compressed stream (``None`` when identity).

    Some servers compress an event stream even when asked not to; it must then be
    decoded per read, since the body never ends. Decompression is bounded: a read
    expands at most :data:`DECOMPRESS_STEP` bytes at a time, and a stream that expands
    more than :data:`MAX_EXPANSION` times (past :data:`BOMB_FLOOR`) is cut with
    :class:`DecompressionBomb`, before the memory it asks for is used.
    """
    if not content_encoding:
        return None
    encoding = content_encoding.strip().lower()
    if encoding in (b"identity", b""):
        return None
    if encoding in (b"gzip", b"x-gzip"):
        return _BoundedDecoder(16 + zlib.MAX_WBITS).decompress
    if encoding == b"deflate":
        return _BoundedDecoder(None).decompress
    raise SSEStreamError(
        f"Unsupported Content-Encoding {encoding.decode('latin-1')!r} on an event stream; "
        "send Accept-Encoding: identity, gzip or deflate",
        reason="unsupported_encoding",
    )


class _BoundedDecoder:
    """zlib decompression in bounded steps, with the expansion watched. ``wbits``
    ``None``: ``deflate``, zlib-wrapped by the RFC and raw in some servers (detected
    on the first read)."""

    def __init__(self, wbits: int | None) -> None:
        self._wbits = wbits
        self._obj: Any = zlib.decompressobj(wbits) if wbits is not None else None
        self._compressed = 0
        self._produced = 0

    def decompress(self, data: bytes) -> bytes:
        if self._obj is None:
            try:
                self._obj = zlib.decompressobj()
                return self._steps(data)
            except DecompressionBomb:
                raise
            except zlib.error:
                self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
                self._produced = self._compressed = 0
        return self._steps(data)

    def _steps(self, data: bytes) -> bytes:
        self._compressed += len(data)
        out = []
        while True:
            chunk = self._obj.decompress(data, DECOMPRESS_STEP)
            self._produced += len(chunk)
            if self._produced > BOMB_FLOOR and self._produced > MAX_EXPANSION * self._compressed:
                raise DecompressionBomb(
                    f"it expands more than {MAX_EXPANSION} times ({self._compressed} bytes "
                    f"gave {self._produced} and more): a decompression bomb"
                )
            out.append(chunk)
            data = self._obj.unconsumed_tail
            if not data:
                return b"".join(out)
