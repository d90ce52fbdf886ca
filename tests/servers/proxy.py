"""An HTTP proxy for tests: CONNECT tunnels and absolute-URI plain-HTTP forwarding.

Scrapy reaches HTTPS through a proxy with a CONNECT tunnel and plain HTTP by sending
the absolute URI to the proxy; an SSE client has to keep streaming through both.
This proxy records what it saw (CONNECT targets, ``Proxy-Authorization`` values) so
tests can check credentials were sent, and can require Basic credentials to test the
407 path.  It only connects to loopback targets, so a misconfigured test can never
reach the network, and it streams bytes as they come (no buffering), which is what
SSE through a proxy needs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

from ._background import ThreadedTCPServer, close_writer, set_nodelay
from .http_io import BadRequest, RecordedRequest, read_request

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "upgrade"}
)
UPSTREAM_CONNECT_TIMEOUT = 5.0
PIPE_BUFFER = 65536


@dataclass(frozen=True)
class ProxyRecord:
    """One request the proxy received (CONNECT or absolute-URI)."""

    method: str
    target: str
    proxy_authorization: str | None
    headers: dict[str, str]
    time: float


def basic_credentials(user: str, password: str) -> str:
    """The ``Proxy-Authorization`` value for Basic ``user:password``."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


class ConnectProxy:
    """``with ConnectProxy() as proxy: proxy.url`` is ``http://127.0.0.1:<port>``.

    ``auth=("user", "pass")`` makes the proxy answer 407 unless the matching Basic
    ``Proxy-Authorization`` is sent.
    """

    def __init__(self, *, auth: tuple[str, str] | None = None, port: int = 0) -> None:
        self.required_authorization = basic_credentials(*auth) if auth else None
        self._tcp = ThreadedTCPServer(self._serve, port=port, name="sse-test-proxy")
        self._lock = threading.Lock()
        self._records: list[ProxyRecord] = []

    def __enter__(self) -> ConnectProxy:
        self._tcp.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._tcp.stop()

    @property
    def port(self) -> int:
        """The bound port."""
        return self._tcp.port

    @property
    def url(self) -> str:
        """The proxy URL to configure a client with."""
        return f"http://127.0.0.1:{self._tcp.port}"

    @property
    def records(self) -> list[ProxyRecord]:
        """Every request seen, in order."""
        with self._lock:
            return list(self._records)

    @property
    def connect_targets(self) -> list[str]:
        """The ``host:port`` of every CONNECT request."""
        return [r.target for r in self.records if r.method == "CONNECT"]

    @property
    def proxy_authorizations(self) -> list[str | None]:
        """The ``Proxy-Authorization`` header of every request (``None`` if absent)."""
        return [r.proxy_authorization for r in self.records]

    # -- loop side --------------------------------------------------------------------------
    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn_id: int
    ) -> None:
        try:
            request = await asyncio.wait_for(read_request(reader, conn_id), 10.0)
        except BadRequest:
            await _reply(writer, 400, "bad request")
            return
        if request is None:
            return
        auth = request.headers.get("proxy-authorization")
        with self._lock:
            self._records.append(
                ProxyRecord(request.method, request.target, auth, request.headers, request.time)
            )
        if self.required_authorization and auth != self.required_authorization:
            challenge = [("Proxy-Authenticate", 'Basic realm="sse-test-proxy"')]
            await _reply(writer, 407, "proxy authentication required", challenge)
            return
        if request.method == "CONNECT":
            await self._tunnel(request, reader, writer)
        else:
            await self._forward(request, reader, writer)

    async def _tunnel(
        self, request: RecordedRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, _, port_text = request.target.rpartition(":")
        host = host.strip("[]")
        upstream = await _open_upstream(writer, host, port_text)
        if upstream is None:
            return
        up_reader, up_writer = upstream
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await _pipe_both(reader, writer, up_reader, up_writer)

    async def _forward(
        self, request: RecordedRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        split = urlsplit(request.target)
        if split.scheme != "http" or not split.hostname:
            await _reply(writer, 400, "absolute http:// URI or CONNECT expected")
            return
        upstream = await _open_upstream(writer, split.hostname, str(split.port or 80))
        if upstream is None:
            return
        up_reader, up_writer = upstream
        path = split.path or "/"
        if split.query:
            path += "?" + split.query
        lines = [f"{request.method} {path} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in request.raw_headers if k.lower() not in HOP_BY_HOP]
        lines.append("Connection: close")
        up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + request.body)
        await up_writer.drain()
        try:
            while data := await up_reader.read(PIPE_BUFFER):
                writer.write(data)
                await writer.drain()
        finally:
            await close_writer(up_writer)


async def _reply(
    writer: asyncio.StreamWriter,
    status: int,
    message: str,
    headers: list[tuple[str, str]] | None = None,
) -> None:
    body = message.encode()
    head = f"HTTP/1.1 {status} {message}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers or [])
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode("latin-1") + body)
    await writer.drain()


async def _open_upstream(
    writer: asyncio.StreamWriter, host: str, port_text: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """Connect to a loopback target, or answer the client with 403/502 and ``None``."""
    if host not in LOOPBACK_HOSTS or not port_text.isdigit():
        await _reply(writer, 403, "only loopback targets are allowed")
        return None
    try:
        reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port_text)), UPSTREAM_CONNECT_TIMEOUT
        )
    except (OSError, asyncio.TimeoutError, TimeoutError):
        await _reply(writer, 502, "upstream connection failed")
        return None
    set_nodelay(up_writer)
    return reader, up_writer


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side (TLS close_notify and FIN pass)."""
    with contextlib.suppress(OSError):
        while data := await reader.read(PIPE_BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


async def _pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Relay both directions until both have ended (or the connection cap cancels us)."""
    tasks = [
        asyncio.ensure_future(_copy(reader, up_writer)),
        asyncio.ensure_future(_copy(up_reader, writer)),
    ]
    try:
        # When the server side ends first, the client side may never send EOF (it just
        # sees the close), so stop relaying as soon as the upstream is done.
        await tasks[1]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_writer(up_writer)
