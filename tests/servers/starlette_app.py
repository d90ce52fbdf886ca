"""A real-world SSE producer: sse-starlette's ``EventSourceResponse`` under uvicorn.

The hand-written :mod:`servers.sse_server` can imitate any fault, but a client must
also interoperate with what a popular framework actually emits.  What sse-starlette
3.7 sends (read from its installed ``sse_starlette/sse.py`` and ``event.py``):

* line separator ``\\r\\n`` (CRLF) by default, for every line, including the blank
  line that ends an event; ``sep=`` may choose ``\\n`` or ``\\r``;
* fields in the order comment, ``id:``, ``event:``, ``data:`` (one line per line of
  the data), then ``retry:`` -- *after* the data, not first;
* no ``retry:`` unless the application sets one, no BOM;
* a keep-alive comment ``: ping - 2024-05-01 12:00:00.123456+00:00`` (current UTC
  time, so never byte-identical) every ``ping`` seconds, default 15; the first one
  only after a full interval; ``ping=0`` disables it;
* headers ``content-type: text/event-stream; charset=utf-8`` (Starlette appends the
  charset), ``cache-control: no-store``, ``connection: keep-alive``,
  ``x-accel-buffering: no``; the body is chunked (HTTP/1.1, no Content-Length);
* a HEAD request gets the headers and an empty body (the stream never starts).

Surprises worth knowing: importing ``sse_starlette`` monkey-patches
``uvicorn.Server.handle_exit`` for the whole process, and its shutdown flag
``AppStatus.should_exit`` is process-global and never reset, so once any uvicorn in
the process handled SIGINT/SIGTERM every later stream ends at once.  Its shutdown
detection relies on uvicorn's signal handlers, which uvicorn installs only on the main
thread; in a thread (as here) streams are not ended on server shutdown, so this
module ends its own generators through :attr:`AppState.closing` and also bounds
uvicorn's graceful shutdown.  An ASGI app cannot close the TCP connection itself: the
drop below raises inside the generator, uvicorn then logs "Exception in ASGI
application" and closes the transport without the final chunk; a logging filter hides
that expected traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import uvicorn
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .sse_plan import UNICODE_TEXT, ParamError, flag_param, float_param, int_param

SEPARATORS = {"crlf": "\r\n", "lf": "\n", "cr": "\r"}
MAX_DELAY = 10.0
MAX_HOLD = 60.0


class DropConnection(Exception):
    """Raised inside the event generator to make uvicorn cut the connection."""


@dataclass(frozen=True)
class SeenRequest:
    """A request the app received (lower-case header keys, monotonic arrival time)."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    time: float


@dataclass
class AppState:
    """Cross-request state: drops done per ``key``, requests seen, the closing signal."""

    drops_done: dict[str, int] = field(default_factory=dict)
    requests: list[SeenRequest] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None
    closing: asyncio.Event | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bind_loop(self) -> asyncio.Event:
        """Remember the serving loop (to signal closing from another thread)."""
        if self.closing is None:
            self.loop = asyncio.get_running_loop()
            self.closing = asyncio.Event()
        return self.closing

    def close_streams(self) -> None:
        """Thread-safe: make every running generator finish now."""
        if self.loop is not None and self.closing is not None:
            self.loop.call_soon_threadsafe(self.closing.set)


async def _pause(closing: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; ``True`` if the server is closing (stop streaming)."""
    if seconds <= 0:
        return closing.is_set()
    try:
        await asyncio.wait_for(closing.wait(), seconds)
    except (asyncio.TimeoutError, TimeoutError):
        return False
    return True


def create_app() -> Starlette:
    """The Starlette app; ``app.state.sse`` is its :class:`AppState`.

    ``GET /stream``: ``n`` (10) events with ids ``start+1..start+n`` and JSON data
    ``{"seq": i, "text": "é€😀"}``, honouring ``Last-Event-ID``.  ``drop_after=M``
    cuts the connection after M events on each of the first ``drops`` (1) connections
    of the ``key`` (default: the URL).  Also ``event``, ``retry`` (on the first
    event), ``delay`` (s between events), ``hold`` (s open after the last event),
    ``ping`` (s, sse-starlette's keep-alive; default 15), ``sep=crlf|lf|cr``,
    ``done=1`` (``data: [DONE]``).
    """
    state = AppState()

    async def stream(request: Request) -> Response:
        closing = state.bind_loop()
        query = dict(request.query_params)
        with state.lock:
            state.requests.append(
                SeenRequest(
                    request.url.path,
                    query,
                    {k.lower(): v for k, v in request.headers.items()},
                    time.monotonic(),
                )
            )
        try:
            n = int_param(query, "n", 10, 0, 100_000)
            start = int_param(query, "start", 0, 0, 10**12)
            drop_after = int_param(query, "drop_after", 0, 0, 100_000)
            drops = int_param(query, "drops", 1, 0, 1000)
            retry_text = query.get("retry")
            retry = None if retry_text is None else int_param(query, "retry", 0, 0, 10**9)
            delay = float_param(query, "delay", 0.0, MAX_DELAY)
            hold = float_param(query, "hold", 0.0, MAX_HOLD)
            ping = float_param(query, "ping", 15.0, 3600.0)
            sep = SEPARATORS[query.get("sep", "crlf")]
        except (ParamError, KeyError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        key = query.get("key") or str(request.url)
        first = start + 1
        last_id = request.headers.get("last-event-id", "")
        if last_id.strip().isdigit():
            first = max(first, int(last_id) + 1)
        drop_now = False
        if drop_after and first + drop_after <= start + n:
            with state.lock:
                done = state.drops_done.get(key, 0)
                if done < drops:
                    state.drops_done[key] = done + 1
                    drop_now = True
        event = query.get("event") or None

        async def events() -> AsyncIterator[ServerSentEvent]:
            for number, seq in enumerate(range(first, start + n + 1)):
                if number and await _pause(closing, delay):
                    return
                if drop_now and number == drop_after:
                    raise DropConnection(f"dropped after {drop_after} events")
                data = json.dumps({"seq": seq, "text": UNICODE_TEXT}, ensure_ascii=False)
                yield ServerSentEvent(
                    data,
                    id=str(seq),
                    event=event,
                    retry=retry if number == 0 else None,
                    sep=sep,
                )
            if flag_param(query, "done"):
                yield ServerSentEvent("[DONE]", sep=sep)
            await _pause(closing, hold)

        return EventSourceResponse(events(), ping=ping, sep=sep)

    app = Starlette(routes=[Route("/stream", stream)])
    app.state.sse = state
    return app


class _HideExpectedDrops(logging.Filter):
    """Drop uvicorn's error record for a deliberate :class:`DropConnection`."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DropConnection)


class _Server(uvicorn.Server):
    """uvicorn's server, telling the starting thread when it is ready to accept."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self._ready.set()


class UvicornServer:
    """``with UvicornServer() as srv: srv.url("/stream?n=5")`` -- uvicorn in a thread.

    The socket is bound to 127.0.0.1:0 before uvicorn starts, so the port is known at
    once; the thread is a daemon and is joined (bounded) on exit.
    """

    def __init__(self, app: Any | None = None, *, graceful_timeout: int = 2) -> None:
        self.app = app if app is not None else create_app()
        self.graceful_timeout = graceful_timeout
        self.port = 0
        self._sock: socket.socket | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._filter = _HideExpectedDrops()

    @property
    def state(self) -> AppState | None:
        """The :class:`AppState` of an app made by :func:`create_app`."""
        state = getattr(self.app.state, "sse", None) if hasattr(self.app, "state") else None
        return state if isinstance(state, AppState) else None

    def url(self, path: str = "/") -> str:
        """Absolute URL of ``path``."""
        return f"http://127.0.0.1:{self.port}" + (path if path.startswith("/") else "/" + path)

    def __enter__(self) -> UvicornServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=self.graceful_timeout,
        )
        ready = threading.Event()
        self._server = _Server(config, ready)
        logging.getLogger("uvicorn.error").addFilter(self._filter)
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.run(sockets=[sock]), name="uvicorn-test-server", daemon=True
        )
        self._thread.start()
        if not ready.wait(10.0):
            self.__exit__(None, None, None)
            raise RuntimeError("uvicorn did not start within 10 s")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = self.state
        if state is not None:
            state.close_streams()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.graceful_timeout + 10.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        logging.getLogger("uvicorn.error").removeFilter(self._filter)
