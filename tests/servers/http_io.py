"""Minimal HTTP/1.1 request parsing and response writing on asyncio streams.

The fault-injecting servers parse HTTP by hand instead of using a framework because
they must control the wire byte by byte: cut a chunked body in the middle of a chunk,
close without the terminating ``0\\r\\n\\r\\n``, or send a body that no framework would
let through.  Only what test clients send is supported: ``Content-Length`` or chunked
request bodies, CRLF line endings, and keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

#: Largest request body accepted; anything bigger is a test bug, not a scenario.
MAX_BODY = 16 * 1024 * 1024
#: How long an idle keep-alive connection waits for its next request.
KEEPALIVE_IDLE_SECONDS = 10.0


class BadRequest(Exception):
    """The request could not be parsed; answered with ``status`` and the connection closed."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it, kept so tests can assert on reconnect behaviour.

    ``headers`` has lower-case keys (repeated headers joined with ``", "``), ``query``
    keeps the last value of a repeated parameter, and ``time`` is ``time.monotonic()``
    when the request head had fully arrived, to measure reconnect delays.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    time: float
    target: str = ""
    http_version: str = "HTTP/1.1"
    connection_id: int = 0
    raw_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: The client's address, as the server saw it (tests of DOWNLOAD_BIND_ADDRESS).
    peer_host: str = ""

    def header(self, name: str, default: str | None = None) -> str | None:
        """Case-insensitive header lookup."""
        return self.headers.get(name.lower(), default)

    def json(self) -> Any:
        """The body decoded as JSON (raises ``ValueError`` when it is not JSON)."""
        return json.loads(self.body.decode("utf-8"))


async def read_request(reader: asyncio.StreamReader, connection_id: int) -> RecordedRequest | None:
    """Read one request; ``None`` on a clean EOF before any byte (keep-alive end)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadRequest("truncated request head") from exc
    except asyncio.LimitOverrunError as exc:
        raise BadRequest("request head too large", 431) from exc
    arrived = time.monotonic()
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadRequest(f"bad request line {lines[0]!r}")
    method, target, version = parts
    raw_headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"bad header line {line!r}")
        raw_headers.append((name, value.strip()))
    headers: dict[str, str] = {}
    for name, value in raw_headers:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    body = await _read_body(reader, headers)
    split = urlsplit(target)
    return RecordedRequest(
        method=method.upper(),
        path=split.path or "/",
        query=dict(parse_qsl(split.query, keep_blank_values=True)),
        headers=headers,
        body=body,
        time=arrived,
        target=target,
        http_version=version,
        connection_id=connection_id,
        raw_headers=tuple(raw_headers),
    )


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    length_text = headers.get("content-length")
    if length_text is None:
        return b""
    try:
        length = int(length_text)
    except ValueError as exc:
        raise BadRequest("bad Content-Length") from exc
    if not 0 <= length <= MAX_BODY:
        raise BadRequest("body too large", 413)
    return await reader.readexactly(length)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError as exc:
            raise BadRequest("bad chunk size") from exc
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # skip trailers
                pass
            return bytes(body)
        if len(body) + size > MAX_BODY:
            raise BadRequest("body too large", 413)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def wants_close(request: RecordedRequest) -> bool:
    """Whether the client asked not to reuse the connection after this response."""
    connection = request.headers.get("connection", "").lower()
    if request.http_version == "HTTP/1.0":
        return "keep-alive" not in connection
    return "close" in connection


class Responder:
    """Writes one response, with the framing chosen by the scenario.

    ``framing`` is ``"chunked"`` (default; an abrupt close then shows as data loss to
    the client), ``"close"`` (body delimited by connection close, HTTP/1.0 style) or
    ``"length"`` (``Content-Length`` given upfront).  ``keep_alive`` tells the connection
    loop whether it may read another request afterwards.
    """

    def __init__(self, writer: asyncio.StreamWriter, request: RecordedRequest) -> None:
        self.writer = writer
        self.request = request
        self.framing = "chunked"
        self.started = False
        self.finished = False
        self.keep_alive = not wants_close(request)
        self.head_only = request.method == "HEAD"
        self.bytes_sent = 0

    async def start(
        self,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        *,
        framing: str = "chunked",
        length: int | None = None,
        close: bool = False,
    ) -> None:
        """Send the status line and headers; ``framing`` as described on the class."""
        if framing not in ("chunked", "close", "length"):
            raise ValueError(f"unknown framing {framing!r}")
        self.framing = framing
        if framing == "close" or close:
            self.keep_alive = False
        all_headers = list(headers or [])
        if status in (204, 304) or 100 <= status < 200:
            self.framing = "length"
            length = None
        elif framing == "chunked":
            all_headers.append(("Transfer-Encoding", "chunked"))
        elif framing == "length":
            all_headers.append(("Content-Length", str(length or 0)))
        all_headers.append(("Connection", "keep-alive" if self.keep_alive else "close"))
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        head = f"HTTP/1.1 {status} {reason}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in all_headers)
        self.writer.write(head.encode("latin-1") + b"\r\n")
        self.started = True
        await self.writer.drain()

    async def write(self, data: bytes) -> None:
        """Send body bytes; each call is one HTTP chunk under chunked framing."""
        if not data or self.head_only:
            return
        if self.framing == "chunked":
            self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.writer.write(data)
        self.bytes_sent += len(data)
        await self.writer.drain()

    async def end(self) -> None:
        """Finish the body cleanly (terminating chunk; FIN for close framing)."""
        if self.framing == "chunked" and not self.head_only:
            self.writer.write(b"0\r\n\r\n")
            await self.writer.drain()
        self.finished = True
        if self.framing == "close":
            self.keep_alive = False

    async def abort(self, *, reset: bool = False) -> None:
        """Cut the connection now, mid-body: what a crashing server or proxy does.

        Everything already written is drained first so the client receives exactly the
        bytes before the cut.  ``reset=True`` sends a TCP RST instead of a FIN; the peer
        may then lose bytes it has not read yet, so offsets are no longer exact.
        """
        self.keep_alive = False
        with contextlib.suppress(Exception):
            await self.writer.drain()
        if reset:
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
        else:
            self.writer.close()

    async def simple(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """A complete non-streaming response with ``Content-Length``."""
        all_headers = list(headers or [])
        if body or status not in (204, 304):
            all_headers.insert(0, ("Content-Type", content_type))
        await self.start(status, all_headers, framing="length", length=len(body))
        if status not in (204, 304) and not self.head_only:
            self.writer.write(body)
            self.bytes_sent += len(body)
            await self.writer.drain()
        self.finished = True

    async def json(
        self, status: int, payload: Any, headers: list[tuple[str, str]] | None = None
    ) -> None:
        """A complete JSON response."""
        body = json.dumps(payload).encode("utf-8")
        await self.simple(status, body, "application/json", headers)
