"""A fault-injecting Server-Sent Events HTTP/1.1 server for tests.

Real SSE servers misbehave in ways a framework-based test server cannot imitate:
connections cut mid-event or mid-UTF-8 character, bodies split into one-byte chunks,
wrong content types, errors before a successful reconnect.  This server parses HTTP
by hand on ``asyncio`` streams to control every byte, and records every request so
tests can assert on what the client sent (``Last-Event-ID``, ``Authorization``, the
time between reconnects).

Usage::

    with SSEServer() as srv:
        url = srv.url("/stream?n=10&chunk=3")
        ...
        assert srv.requests[-1].headers["last-event-id"] == "4"

or standalone: ``python -m tests.servers.sse_server --port 8000``.

Scenarios (query parameters; all sizes and durations are capped):

``/stream``  ``n`` events (default 10) with ids ``start+1..start+n``, data
    ``{"seq": i, "text": "é€😀"}`` (``ascii=1`` drops the text, ``size=B`` pads the
    JSON to about B bytes, ``multiline=1`` splits it over several ``data:`` lines),
    ``event=TYPE``, ``retry=MS`` (first block), ``comment_every=M`` (``: heartbeat``),
    ``crlf=1`` / ``cr=1`` line endings, ``bom=1``, ``done=1`` (``data: [DONE]``).
    Delivery: ``chunk=C`` random 1..C-byte writes (each is one HTTP chunk; 0 = one
    write per event), ``chunk_delay=S``, ``delay=S`` between events, ``hold=S`` keep
    open after the last event, ``framing=chunked|close|length``, ``close=1``
    (``Connection: close``), ``seed`` for the chunking and drop RNGs.  Honours
    ``Last-Event-ID`` (``resend=K`` replays the K events before the resume point,
    as some servers do).  Drops: ``drop_at=B1,B2`` / ``drops=K`` cut the connection
    once at each offset of the logical stream (``rst=1``: TCP reset); state is per
    ``key`` (default: the request target).  See :mod:`servers.sse_plan`.
``/status``  ``code`` (500) with ``body``, ``ctype``, ``retry_after`` for the first
    ``times`` requests of the ``key`` (always, without ``times``), then ``/stream``.
``/ctype``  200 with Content-Type ``type`` (text/html) and ``body``.
``/nocontent``  204.
``/redirect``  ``code`` (302) to ``to`` (relative or absolute, sent verbatim).
``/auth``  401 + JSON unless ``Authorization: Bearer <token>``; then ``/stream``.
``/silent``  ``after`` events, then silence for ``hold`` s (default and cap 60).
``/stall``  no response head for ``hold`` s (default and cap 60), then ``/stream``.
``/heartbeat``  ``: ping`` every ``every`` s (1), ``count`` (3) times, then end; ``crlf=1``.
``/garbage``  :data:`servers.garbage.GARBAGE_BYTES` (``chunk``/``seed`` split it).
``/huge``  one event (``id: 1``) whose data is ``size`` bytes of ``x`` (1 MiB; cap 256 MiB).
``/gzip``  ``/stream`` bytes with ``Content-Encoding: gzip``, flushed per event.
``POST /v1/chat/completions``  OpenAI-style chunks; JSON body ``n`` (20); ``x_echo``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import json
import logging
import ssl
import threading
import time
from types import TracebackType

from ._background import ThreadedTCPServer
from .http_io import KEEPALIVE_IDLE_SECONDS, BadRequest, RecordedRequest, Responder, read_request
from .scenarios import ROUTES, Context, ScenarioState
from .sse_plan import ParamError

logger = logging.getLogger("tests.servers")

#: Requests served on one keep-alive connection before the server closes it.
MAX_REQUESTS_PER_CONNECTION = 1000


class SSEServer:
    """The fault-injecting server, run on 127.0.0.1 in a daemon thread (module doc)."""

    def __init__(
        self,
        *,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        max_connection_seconds: float = 120.0,
        host: str = "127.0.0.1",
    ) -> None:
        self._tcp = ThreadedTCPServer(
            self._serve_connection,
            host=host,
            port=port,
            ssl_context=ssl_context,
            name="sse-test-server",
            max_connection_seconds=max_connection_seconds,
        )
        self._requests: list[RecordedRequest] = []
        self._changed = threading.Condition()
        self._states: dict[str, ScenarioState] = {}  # owned by the server loop

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> SSEServer:
        """Bind and start serving; returns ``self``."""
        self._tcp.start()
        return self

    def stop(self) -> None:
        """Close every client connection, stop the loop and join its thread."""
        self._tcp.stop()

    def __enter__(self) -> SSEServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """The bound host (always a loopback address)."""
        return self._tcp.host

    @property
    def port(self) -> int:
        """The bound port (ephemeral unless one was asked for)."""
        return self._tcp.port

    @property
    def scheme(self) -> str:
        """``https`` when started with an SSL context, else ``http``."""
        return "https" if self._tcp.ssl_context is not None else "http"

    @property
    def base_url(self) -> str:
        """``scheme://host:port`` without a trailing slash."""
        return f"{self.scheme}://{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        """Absolute URL of ``path`` (which may carry a query string)."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    # -- what happened ----------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, in arrival order."""
        with self._changed:
            return list(self._requests)

    def requests_for(self, path: str) -> list[RecordedRequest]:
        """The requests whose path is ``path``."""
        return [r for r in self.requests if r.path == path]

    def requests_for_key(self, key: str) -> list[RecordedRequest]:
        """The requests of one scenario (its ``key`` query parameter), in order."""
        return [r for r in self.requests if r.query.get("key") == key]

    def wait_for_requests(
        self, count: int, timeout: float = 5.0, path: str | None = None
    ) -> list[RecordedRequest]:
        """Block until ``count`` requests (to ``path``, if given) arrived; bounded.

        Raises ``TimeoutError`` with what did arrive, so a failing test says why.
        """

        def matching() -> list[RecordedRequest]:
            return [r for r in self._requests if path is None or r.path == path]

        with self._changed:
            if not self._changed.wait_for(lambda: len(matching()) >= count, timeout):
                got = [(r.method, r.target) for r in matching()]
                raise TimeoutError(f"expected {count} requests within {timeout}s, got {got}")
            return matching()

    def state(self, key: str) -> ScenarioState | None:
        """A copy of a scenario's cross-connection state (drops fired, counters)."""
        return self._tcp.call(self._get_state(key))

    def reset(self) -> None:
        """Forget recorded requests and all scenario state (for shared fixtures)."""
        with self._changed:
            self._requests.clear()
        self._tcp.call(self._clear_states())

    @property
    def open_connections(self) -> int:
        """How many client connections are open right now."""
        return self._tcp.open_connections

    def abort_connections(self) -> int:
        """Cut every open connection at once (a server crash); returns how many."""
        return self._tcp.abort_connections()

    # -- loop side --------------------------------------------------------------------------
    async def _get_state(self, key: str) -> ScenarioState | None:
        state = self._states.get(key)
        return copy.deepcopy(state) if state is not None else None

    async def _clear_states(self) -> None:
        self._states.clear()

    def _record(self, request: RecordedRequest) -> None:
        with self._changed:
            self._requests.append(request)
            self._changed.notify_all()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn_id: int
    ) -> None:
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            try:
                request = await asyncio.wait_for(
                    read_request(reader, conn_id), KEEPALIVE_IDLE_SECONDS
                )
                peer = writer.get_extra_info("peername")
                if request is not None and peer:
                    request = dataclasses.replace(request, peer_host=str(peer[0]))
            except BadRequest as exc:
                body = json.dumps({"error": str(exc)}).encode()
                writer.write(
                    b"HTTP/1.1 %d Bad Request\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (exc.status, len(body), body)
                )
                await writer.drain()
                return
            except (asyncio.TimeoutError, TimeoutError):
                return  # idle keep-alive connection
            if request is None:
                return
            self._record(request)
            responder = Responder(writer, request)
            await self._dispatch(Context(request, responder, reader, self._states))
            if not (responder.finished and responder.keep_alive):
                return

    @staticmethod
    async def _dispatch(ctx: Context) -> None:
        handler = ROUTES.get(ctx.request.path)
        try:
            if handler is None:
                await ctx.responder.json(
                    404, {"error": "no such scenario", "path": ctx.request.path}
                )
            else:
                await handler(ctx)
        except ParamError as exc:
            if ctx.responder.started:
                raise
            ctx.responder.keep_alive = False
            await ctx.responder.json(400, {"error": str(exc)})


def main(argv: list[str] | None = None) -> None:
    """Run the server in the foreground until Ctrl+C (or ``--duration`` seconds)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a fresh cert")
    parser.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with contextlib.ExitStack() as stack:
        context = None
        if args.tls:
            from .tls import TemporaryTLS

            files = stack.enter_context(TemporaryTLS())
            context = files.server_context()
            print(f"CA certificate: {files.ca_path}", flush=True)
        server = stack.enter_context(SSEServer(port=args.port, ssl_context=context))
        print(f"serving on {server.base_url} (Ctrl+C to stop)", flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        idle = threading.Event()  # never set: waiting on it is an interruptible sleep
        with contextlib.suppress(KeyboardInterrupt):
            while deadline is None or time.monotonic() < deadline:
                remaining = 3600.0 if deadline is None else deadline - time.monotonic()
                idle.wait(max(0.0, min(3600.0, remaining)))
        print(f"stopping after {len(server.requests)} requests", flush=True)


if __name__ == "__main__":
    main()
