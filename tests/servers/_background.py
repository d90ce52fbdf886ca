"""Run an asyncio TCP server in a daemon thread, for blocking (Twisted, pytest) test code.

Test code that drives Scrapy or ``http.client`` blocks its own thread, so the servers
it talks to must live on another thread with their own event loop.  This module owns
that plumbing once, for :class:`~servers.sse_server.SSEServer` and
:class:`~servers.proxy.ConnectProxy`:

* the loop thread is a daemon (a test that forgets ``__exit__`` cannot hang the
  interpreter) and is joined with a timeout on stop;
* every accepted connection is tracked, so stop aborts all of them instead of waiting
  for endless SSE streams to finish;
* every connection runs under a wall-clock cap, so a scenario can never run unbounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

logger = logging.getLogger("tests.servers")

T = TypeVar("T")
ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]

#: Bound for the thread start/stop handshakes; they take milliseconds when healthy.
CONTROL_TIMEOUT = 10.0
#: StreamReader buffer limit: also the longest request head a server accepts.
READER_LIMIT = 64 * 1024


async def close_writer(writer: asyncio.StreamWriter, timeout: float = 1.0) -> None:
    """Close a stream, waiting a bounded time: a TLS peer may never answer close_notify."""
    with contextlib.suppress(Exception):
        writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout)
    except (Exception, asyncio.CancelledError):
        with contextlib.suppress(Exception):
            writer.transport.abort()


def set_nodelay(writer: asyncio.StreamWriter) -> None:
    """Disable Nagle so every small write leaves at once (chunk-split tests rely on it)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ThreadedTCPServer:
    """An ``asyncio.start_server`` listener on 127.0.0.1 living in its own daemon thread.

    ``handler(reader, writer, connection_id)`` serves one connection; the writer is
    closed for it afterwards, whatever happens.
    """

    def __init__(
        self,
        handler: ConnectionHandler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        name: str = "test-server",
        max_connection_seconds: float = 120.0,
    ) -> None:
        self._handler = handler
        self.host = host
        self._requested_port = port
        self.ssl_context = ssl_context
        self.name = name
        self.max_connection_seconds = max_connection_seconds
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._next_id = 0
        self._stopping = False
        self._lock = threading.Lock()

    # -- lifecycle (called from the test thread) ---------------------------------------
    def start(self) -> None:
        """Start the loop thread and the listener; raise if either fails."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(CONTROL_TIMEOUT):
            raise RuntimeError(f"{self.name}: event loop thread did not start")
        try:
            self.call(self._listen())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Abort every connection, stop the loop and join the thread (all bounded)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(Exception):
                self.call(self._shutdown())
            loop.call_soon_threadsafe(loop.stop)
        thread.join(CONTROL_TIMEOUT)
        if thread.is_alive():  # pragma: no cover - only if a handler blocks the loop
            logger.warning("%s: loop thread still alive after %ss", self.name, CONTROL_TIMEOUT)
        self._loop = None
        self._thread = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = CONTROL_TIMEOUT) -> T:
        """Run ``coro`` on the server loop and wait (bounded) for its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{self.name} is not running")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    @property
    def open_connections(self) -> int:
        """How many client connections are currently open."""
        with self._lock:
            return len(self._writers)

    def abort_connections(self) -> int:
        """Drop every open client connection now (server-side crash); return how many."""
        return self.call(self._abort_all())

    # -- loop side ----------------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connect,
            self.host,
            self._requested_port,
            ssl=self.ssl_context,
            ssl_handshake_timeout=10.0 if self.ssl_context is not None else None,
            limit=READER_LIMIT,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        with self._lock:
            self._next_id += 1
            conn_id = self._next_id
            self._writers[conn_id] = writer
        if task is not None:
            self._tasks.add(task)
        set_nodelay(writer)
        try:
            await asyncio.wait_for(
                self._handler(reader, writer, conn_id), self.max_connection_seconds
            )
        except (OSError, asyncio.IncompleteReadError, TimeoutError, asyncio.TimeoutError):
            # The peer went away, TLS failed or the wall-clock cap fired: all normal in fault
            # tests.  (asyncio.TimeoutError is distinct from TimeoutError before 3.11.)
            pass
        except asyncio.CancelledError:
            # Our own shutdown cancelled the handler.  End the task normally: asyncio's
            # StreamReaderProtocol calls task.exception() on it, which would raise and
            # log "Exception in callback" for a cancelled task.
            if not self._stopping:
                raise
        except Exception:
            logger.exception("%s: connection %d handler failed", self.name, conn_id)
        finally:
            with self._lock:
                self._writers.pop(conn_id, None)
            if task is not None:
                self._tasks.discard(task)
            await close_writer(writer)

    async def _abort_all(self) -> int:
        with self._lock:
            writers = list(self._writers.values())
        for writer in writers:
            writer.transport.abort()
        return len(writers)

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        await self._abort_all()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CONTROL_TIMEOUT / 2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
