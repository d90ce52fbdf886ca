"""The loopback SSE server for the end-to-end benchmarks: a separate process, stdlib
asyncio, raw HTTP/1.1.

Why raw asyncio and not sse-starlette/uvicorn: the server must never be the bottleneck,
or every client would measure the same server speed. The response is built once
(one HTTP chunk per event, as Python SSE servers frame it, or close-delimited) and, by
default, written in 256 KiB slices ("bulk"), so the server spends almost no CPU per
event and the client's process is what is measured. ``--writes event`` instead writes
each event separately, as uvicorn does (one ``transport.write`` per event; slower, and
then clients see smaller reads).

Every connection gets the same stream: N events of the corpus, then the terminating
chunk and a close. ``--done`` ends it with ``data: [DONE]`` (a stream that completes,
for the cluster benchmark), and a ``Last-Event-ID: K`` header resumes after the K-th
event (the corpora number their events 1..N). Run as
``python -m benchmarks.server --corpus openai --events N``; it prints ``READY <port>``
and serves until killed, stdin closes, or ``--lifetime`` seconds pass (so a forgotten
server stops by itself).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Literal

from .corpora import Corpus, build_events

__all__ = ["Framing", "encode_body", "response_head"]

Framing = Literal["chunked", "close"]
_SLICE = 256 * 1024


def response_head(framing: Framing) -> bytes:
    lines = [
        "HTTP/1.1 200 OK",
        "Content-Type: text/event-stream; charset=utf-8",
        "Cache-Control: no-cache",
        "X-Accel-Buffering: no",
        "Connection: close",
    ]
    if framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def encode_body(corpus: Corpus, framing: Framing) -> list[bytes]:
    """The body as the pieces a per-event server writes (one per block)."""
    if framing == "close":
        return list(corpus.blocks)
    pieces = [b"%x\r\n%b\r\n" % (len(block), block) for block in corpus.blocks]
    pieces.append(b"0\r\n\r\n")
    return pieces


class _Server:
    def __init__(self, head: bytes, pieces: list[bytes], writes: str) -> None:
        self.head = head
        self.pieces = pieces
        self.body = b"".join(pieces)
        #: Where each piece starts in the body (a resume starts there).
        self.offsets = [0]
        for piece in pieces:
            self.offsets.append(self.offsets[-1] + len(piece))
        self.writes = writes
        self.served = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(self.head)
            skip = _resume_after(head)
            if self.writes == "bulk":
                body = memoryview(self.body)[self.offsets[min(skip, len(self.pieces) - 1)] :]
                for start in range(0, len(body), _SLICE):
                    writer.write(body[start : start + _SLICE])
                    await writer.drain()
            else:
                for piece in self.pieces[min(skip, len(self.pieces) - 1) :]:
                    writer.write(piece)
                    if writer.transport.get_write_buffer_size() > _SLICE:
                        await writer.drain()
            await writer.drain()
            self.served += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to serve
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _resume_after(head: bytes) -> int:
    """How many events a request's ``Last-Event-ID`` says it has (0: none)."""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"last-event-id" and value.strip().isdigit():
            return int(value.strip())
    return 0


async def _serve(args: argparse.Namespace) -> None:
    corpus = build_events(args.corpus, args.events)
    pieces = encode_body(corpus, args.framing)
    if args.done:
        done = b"data: [DONE]\n\n"
        done_piece = done if args.framing == "close" else b"%x\r\n%b\r\n" % (len(done), done)
        pieces.insert(len(corpus.blocks), done_piece)
    server_state = _Server(response_head(args.framing), pieces, args.writes)
    server = await asyncio.start_server(server_state.handle, "127.0.0.1", args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    stdin = sys.stdin.fileno()

    def on_stdin() -> None:
        # The orchestrator closes our stdin to stop us (or dies, which does the same).
        if not os.read(stdin, 4096):
            loop.remove_reader(stdin)
            stop.set()

    with contextlib.suppress(OSError):  # stdin is not a pipe: rely on --lifetime
        loop.add_reader(stdin, on_stdin)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.lifetime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="openai")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--framing", choices=("chunked", "close"), default="chunked")
    parser.add_argument("--writes", choices=("bulk", "event"), default="bulk")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=900.0)
    parser.add_argument("--done", action="store_true", help="end with data: [DONE]")
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
