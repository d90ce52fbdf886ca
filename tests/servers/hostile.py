"""A hostile HTTP server for fuzzing the HTTP and SSE layers together.

Each connection gets a response chosen and mutated by the seed in its path
(``/fuzz/<seed>``): random bytes; a valid event-stream head with garbage, a broken
chunked encoding, a never-ending header list or line, a gzip bomb, ``retry:`` extremes,
a redirect to itself, an event cut mid-UTF-8, a valid stream mutated by flipped,
dropped or doubled bytes... The same seed always gives the same bytes, so a failing
seed is a regression test. Loopback only; every response is bounded in size and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import threading
import zlib
from typing import Any

MAX_RESPONSE = 2 * 1024 * 1024
KINDS = (
    "random_bytes",
    "garbage_body",
    "bad_chunks",
    "many_headers",
    "long_header",
    "gzip_bomb",
    "retry_extremes",
    "self_redirect",
    "cut_utf8",
    "mutated_stream",
    "slow_head",
    "no_status",
)


@functools.cache
def _bomb() -> bytes:
    """200 MiB of one event's data, gzip-compressed (about 200 KB), made once."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"0" * (1024 * 1024)
    parts = [packer.compress(b"data: ")]
    parts += [packer.compress(block) for _ in range(200)]
    return b"".join([*parts, packer.flush()])


def _stream_body(rng: random.Random, events: int = 20) -> bytes:
    parts = []
    for i in range(events):
        data = "".join(rng.choice('abcé€😀{}":, ') for _ in range(rng.randint(0, 40)))
        parts.append(f"id: {i}\nevent: e{rng.randint(0, 3)}\ndata: {data}\n\n")
    return "".join(parts).encode("utf-8")


def _chunked(body: bytes, rng: random.Random) -> bytes:
    out = b""
    while body:
        size = rng.randint(1, 64)
        out += f"{size:x}\r\n".encode() + body[:size] + b"\r\n"
        body = body[size:]
    return out + b"0\r\n\r\n"


def response(seed: int) -> tuple[bytes, float]:
    """The bytes to send for ``seed``, and seconds to wait before each half."""
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    chunked_head = head + b"Transfer-Encoding: chunked\r\n\r\n"
    close_head = head + b"Connection: close\r\n\r\n"
    delay = 0.0
    if kind == "random_bytes":
        data = rng.randbytes(rng.randint(0, 4096))
    elif kind == "garbage_body":
        data = close_head + rng.randbytes(rng.randint(1, 64 * 1024))
    elif kind == "bad_chunks":
        body = _chunked(_stream_body(rng), rng)
        cut = rng.randint(0, len(body))
        junk = rng.choice(
            [b"zz\r\n", b"-5\r\n", b"ffffffffffffffff\r\nxx", b"\r\n\r\n", b"1;" * 50]
        )
        data = chunked_head + body[:cut] + junk + body[cut:]
    elif kind == "many_headers":
        count = rng.choice([150, 1000, 5000])
        same = rng.random() < 0.5  # (one name repeated, or a name each)
        lines = (b"X-H: v\r\n" if same else b"X-H%d: v\r\n" % i for i in range(count))
        data = head + b"".join(lines) + b"\r\n"
        data += _stream_body(rng)
    elif kind == "long_header":
        data = head + b"X-Long: " + b"a" * rng.choice([70_000, 200_000]) + b"\r\n\r\n"
    elif kind == "gzip_bomb":
        data = head + b"Content-Encoding: gzip\r\nConnection: close\r\n\r\n" + _bomb()
    elif kind == "retry_extremes":
        retry = rng.choice(["0", "-1", "99999999999999999999", "1e9", ""])
        data = close_head + f"retry: {retry}\nid: 1\ndata: x\n\n".encode()
    elif kind == "self_redirect":
        data = b"HTTP/1.1 302 Found\r\nLocation: /fuzz/%d\r\nContent-Length: 0\r\n\r\n" % seed
    elif kind == "cut_utf8":
        data = close_head + "data: é€😀".encode()[: rng.randint(7, 14)]
    elif kind == "mutated_stream":
        body = bytearray(chunked_head + _chunked(_stream_body(rng), rng))
        for _ in range(rng.randint(1, 12)):
            at = rng.randrange(len(body))
            action = rng.randint(0, 2)
            if action == 0:
                body[at] = rng.randrange(256)
            elif action == 1:
                del body[at]
            else:
                body.insert(at, body[at])
        data = bytes(body)
    elif kind == "slow_head":
        data, delay = head, rng.uniform(0.5, 4)
    else:  # no_status
        data = b"Content-Type: text/event-stream\r\n\r\ndata: x\n\n"
    return data[:MAX_RESPONSE], delay


class HostileServer:
    """``with HostileServer() as server: server.url(seed)``, on 127.0.0.1."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Any = None
        self.port = 0
        self.connections = 0

    def url(self, seed: int) -> str:
        return f"http://127.0.0.1:{self.port}/fuzz/{seed}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            target = head.split(b" ", 2)[1].decode("latin-1")
            seed = int(target.rsplit("/", 1)[-1] or 0)
            data, delay = response(seed)
            half = len(data) // 2
            writer.write(data[:half])
            await writer.drain()
            await asyncio.sleep(delay)
            writer.write(data[half:])
            await writer.drain()
        except (OSError, ValueError, IndexError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def __enter__(self) -> HostileServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        )
        self._server = future.result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
