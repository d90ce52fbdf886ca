"""A blocking raw-socket HTTP/1.1 client that reports exactly what came over the wire.

``http.client`` hides the things fault tests must see: where a chunked body was cut,
how the body was split into chunks, whether the terminating chunk ever came.  This
client returns all of that and never raises for a truncated body; every socket
operation runs under one overall deadline so a test cannot hang.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    """What one request got back.

    ``body`` is de-chunked; ``chunks`` lists the body pieces as framed by the server
    (one entry per HTTP chunk, or per ``recv`` without chunked framing); ``complete``
    is true when the body ended as its framing says it should (terminating chunk, full
    ``Content-Length``, or EOF for close-delimited bodies); ``timed_out`` when the
    deadline (``max_time``) stopped reading first.
    """

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False
    timed_out: bool = False
    elapsed: float = 0.0


class _Reader:
    """Buffered reads from a socket with one overall deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = bytearray()

    def fill(self) -> bool:
        """Receive more bytes; ``False`` on EOF, ``TimeoutError`` past the deadline."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            return False
        except TimeoutError as exc:  # socket.timeout is an alias
            raise TimeoutError("deadline passed") from exc
        if not data:
            return False
        self.buffer += data
        return True

    def line(self) -> bytes | None:
        """One CRLF-terminated line without the CRLF, ``None`` on EOF."""
        while (index := self.buffer.find(b"\r\n")) < 0:
            if not self.fill():
                return None
        line = bytes(self.buffer[:index])
        del self.buffer[: index + 2]
        return line

    def take(self, count: int) -> bytes:
        """Up to ``count`` bytes (fewer only on EOF)."""
        while len(self.buffer) < count and self.fill():
            pass
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data


def _read_body(reader: _Reader, response: RawResponse, head_only: bool) -> None:
    headers = response.headers
    if head_only or response.status in (204, 304) or response.status < 200:
        response.complete = True
        return
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = reader.line()
            if size_line is None:
                return
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                response.complete = reader.line() is not None
                return
            data = reader.take(size)
            if data:
                response.chunks.append(data)
            if len(data) < size or reader.take(2) != b"\r\n":
                return
    elif "content-length" in headers:
        length = int(headers["content-length"])
        data = reader.take(length)
        if data:
            response.chunks.append(data)
        response.complete = len(data) == length
    else:
        if reader.buffer:
            response.chunks.append(bytes(reader.buffer))
            reader.buffer.clear()
        while reader.fill():
            response.chunks.append(bytes(reader.buffer))
            reader.buffer.clear()
        response.complete = True


def fetch(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    max_time: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
    proxy: tuple[str, int] | None = None,
) -> RawResponse:
    """Send one request (``Connection: close``) and read the whole response.

    ``proxy=(host, port)`` sends the absolute URI to a plain-HTTP proxy instead.
    Reading stops at ``max_time`` seconds with ``timed_out=True`` (not an exception).
    """
    split = urlsplit(url)
    host = split.hostname or "127.0.0.1"
    port = split.port or (443 if split.scheme == "https" else 80)
    target = (split.path or "/") + (f"?{split.query}" if split.query else "")
    if proxy is not None:
        target = url
    all_headers = {"Host": split.netloc, "Accept": "text/event-stream", "Connection": "close"}
    all_headers.update(headers or {})
    if body:
        all_headers["Content-Length"] = str(len(body))
    request = f"{method} {target} HTTP/1.1\r\n"
    request += "".join(f"{k}: {v}\r\n" for k, v in all_headers.items()) + "\r\n"
    started = time.monotonic()
    deadline = started + max_time
    address = proxy or (host, port)
    sock: socket.socket = socket.create_connection(address, timeout=max_time)
    try:
        if split.scheme == "https" and proxy is None:
            context = ssl_context or ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=host)
        sock.sendall(request.encode("latin-1") + body)
        reader = _Reader(sock, deadline)
        response = RawResponse(0, "", {})
        try:
            status_line = reader.line()
            if status_line is None:
                raise ConnectionError("connection closed before a response")
            _, status, reason = status_line.decode("latin-1").split(" ", 2)
            response.status, response.reason = int(status), reason
            while line := reader.line():
                name, _, value = line.decode("latin-1").partition(":")
                response.headers[name.strip().lower()] = value.strip()
            _read_body(reader, response, method == "HEAD")
        except TimeoutError:
            response.timed_out = True
        response.body = b"".join(response.chunks)
        response.elapsed = time.monotonic() - started
        return response
    finally:
        sock.close()
