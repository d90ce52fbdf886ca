"""Request handlers of the fault-injecting SSE server, one coroutine per scenario path.

Each handler gets a :class:`Context` and writes a whole response through its
:class:`~servers.http_io.Responder`.  State that must survive a reconnect (drops
already done, error responses already served) lives in a :class:`ScenarioState`
keyed by the ``key`` query parameter, or by the request target when there is no key,
so a client reconnecting to the same URL continues the same logical scenario.
Every loop below is bounded by a count and every wait by a capped duration.
"""

from __future__ import annotations

import asyncio
import json
import random
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .garbage import GARBAGE_BYTES
from .http_io import RecordedRequest, Responder
from .sse_plan import (
    ParamError,
    Piece,
    StreamPlan,
    drop_points,
    flag_param,
    float_param,
    int_param,
    plan_from_query,
)

#: Time caps (seconds) for the scenario knobs; larger values are clamped.
MAX_DELAY = 10.0
MAX_CHUNK_DELAY = 1.0
MAX_HOLD = 60.0
MAX_HUGE = 256 * 1024 * 1024
EVENT_STREAM = "text/event-stream"
SSE_HEADERS = [("Content-Type", EVENT_STREAM), ("Cache-Control", "no-cache")]


@dataclass
class ScenarioState:
    """What a scenario remembers across connections (see module docstring)."""

    key: str
    connections: int = 0
    drop_points: tuple[int, ...] | None = None
    fired: list[int] = field(default_factory=list)
    errors_served: int = 0
    auth_failures: int = 0

    def next_drop(self, lo: int, hi: int) -> int | None:
        """The first drop point not yet fired within ``[lo, hi)``."""
        for point in self.drop_points or ():
            if lo <= point < hi and point not in self.fired:
                return point
        return None


@dataclass
class Context:
    """Everything a handler needs for one request."""

    request: RecordedRequest
    responder: Responder
    reader: asyncio.StreamReader
    states: dict[str, ScenarioState]

    @property
    def query(self) -> dict[str, str]:
        """The request's query parameters."""
        return self.request.query

    def state(self) -> ScenarioState:
        """This scenario's state, created on first use."""
        key = self.query.get("key") or self.request.target
        if key not in self.states:
            self.states[key] = ScenarioState(key)
        return self.states[key]


Handler = Callable[[Context], Awaitable[None]]


async def hold_open(reader: asyncio.StreamReader, seconds: float) -> None:
    """Keep the connection open up to ``seconds``, returning early if the client leaves.

    Reading (rather than sleeping) is what notices the client's FIN, so abandoned
    connections are not held for the full time.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        try:
            data = await asyncio.wait_for(reader.read(65536), remaining)
        except (asyncio.TimeoutError, TimeoutError):
            return
        if not data:
            return


async def emit(
    responder: Responder, data: bytes, rng: random.Random, chunk: int, chunk_delay: float = 0.0
) -> None:
    """Write ``data`` as random writes of 1..``chunk`` bytes (``chunk=0``: one write)."""
    position = 0
    while position < len(data):
        size = len(data) - position if chunk <= 0 else rng.randint(1, chunk)
        await responder.write(data[position : position + size])
        position += size
        if chunk_delay:
            await asyncio.sleep(chunk_delay)


@dataclass(frozen=True)
class StreamOptions:
    """Per-connection delivery knobs of ``/stream`` (they do not change the bytes)."""

    chunk: int
    chunk_delay: float
    delay: float
    hold: float
    framing: str
    close: bool
    reset: bool
    seed: str

    @classmethod
    def from_query(cls, query: dict[str, str], *, hold_default: float = 0.0) -> StreamOptions:
        """Parse ``chunk, chunk_delay, delay, hold, framing, close, rst, seed``."""
        framing = query.get("framing", "chunked")
        if framing not in ("chunked", "close", "length"):
            raise ParamError("framing must be chunked, close or length")
        return cls(
            chunk=int_param(query, "chunk", 0, 0, 1 << 20),
            chunk_delay=float_param(query, "chunk_delay", 0.0, MAX_CHUNK_DELAY),
            delay=float_param(query, "delay", 0.0, MAX_DELAY),
            hold=float_param(query, "hold", hold_default, MAX_HOLD),
            framing=framing,
            close=flag_param(query, "close"),
            reset=flag_param(query, "rst"),
            seed=query.get("seed", "0"),
        )


async def _send_pieces(
    ctx: Context, plan: StreamPlan, pieces: Sequence[Piece], opts: StreamOptions, rng: random.Random
) -> bool:
    """Write pieces, cutting the connection at the first unfired drop point.

    Returns ``False`` when the connection was dropped.
    """
    state, responder = ctx.state(), ctx.responder
    sent_event = False
    for piece in pieces:
        if piece.kind in ("event", "done"):
            if sent_event and opts.delay:
                await asyncio.sleep(opts.delay)
            sent_event = True
        position = 0
        while position < len(piece.data):
            left = len(piece.data) - position
            size = left if opts.chunk <= 0 else min(left, rng.randint(1, opts.chunk))
            start = piece.offset + position
            point = state.next_drop(start, start + size)
            if point is not None:
                await responder.write(piece.data[position : position + point - start])
                state.fired.append(point)
                await responder.abort(reset=opts.reset)
                return False
            await responder.write(piece.data[position : position + size])
            position += size
            if opts.chunk_delay:
                await asyncio.sleep(opts.chunk_delay)
    point = state.next_drop(plan.total, plan.total + 1)
    if point is not None:  # a drop at the very end: all bytes, but no clean end
        state.fired.append(point)
        await responder.abort(reset=opts.reset)
        return False
    return True


async def serve_stream(
    ctx: Context, *, query: dict[str, str] | None = None, hold_default: float = 0.0
) -> None:
    """``/stream``: numbered JSON events, resumable, with optional drops (module doc)."""
    query = ctx.query if query is None else query
    plan = plan_from_query(query)
    opts = StreamOptions.from_query(query, hold_default=hold_default)
    state = ctx.state()
    if state.drop_points is None:
        state.drop_points = drop_points(query, plan)
    state.connections += 1
    rng = random.Random(f"chunks:{opts.seed}:{state.connections}")
    last_event_id = ctx.request.headers.get("last-event-id")
    index = plan.resume_index(last_event_id)
    if last_event_id is not None:
        # resend=K: a server that replays the K events up to and including the one
        # the client already has (clients must not deliver them twice).
        resend = int_param(query, "resend", 0, 0, 1000)
        while resend and index > len(plan.preamble):
            index -= 1
            if plan.pieces[index].kind == "event":
                resend -= 1
    pieces = plan.preamble + plan.pieces[index:]
    headers = [*SSE_HEADERS, ("X-Scenario-Connection", str(state.connections))]
    length = sum(len(p.data) for p in pieces)
    await ctx.responder.start(200, headers, framing=opts.framing, length=length, close=opts.close)
    if not await _send_pieces(ctx, plan, pieces, opts, rng):
        return
    if opts.hold:
        await hold_open(ctx.reader, opts.hold)
    await ctx.responder.end()


async def serve_status(ctx: Context) -> None:
    """``/status``: an error ``code`` for the first ``times`` requests, then ``/stream``."""
    query = ctx.query
    code = int_param(query, "code", 500, 100, 599)
    times_text = query.get("times")
    times = None if times_text is None else int_param(query, "times", 1, 0, 1_000_000)
    state = ctx.state()
    if times is not None and state.errors_served >= times:
        await serve_stream(ctx)
        return
    state.errors_served += 1
    headers: list[tuple[str, str]] = []
    if "retry_after" in query:
        headers.append(("Retry-After", query["retry_after"]))
    body = query.get("body", f"error {code}").encode("utf-8")
    ctype = query.get("ctype", "text/plain; charset=utf-8")
    hold = float_param(query, "hold", 0.0, MAX_HOLD)
    if hold:
        # A short error body, then the connection kept open without ending it (a
        # client must give up on the body after its timeout, and close).
        await ctx.responder.start(code, [*headers, ("Content-Type", ctype)])
        await ctx.responder.write(body)
        await hold_open(ctx.reader, hold)
        return
    await ctx.responder.simple(code, body, ctype, headers)


async def serve_ctype(ctx: Context) -> None:
    """``/ctype``: 200 with a wrong Content-Type and an SSE-looking body to ignore."""
    ctype = ctx.query.get("type", "text/html")
    default = "<html><body>not an event stream</body></html>\ndata: must-not-parse\n\n"
    body = ctx.query.get("body", default).encode("utf-8")
    await ctx.responder.simple(200, body, ctype)


async def serve_nocontent(ctx: Context) -> None:
    """``/nocontent``: 204, the server's way to tell an SSE client to stop."""
    await ctx.responder.simple(204)


async def serve_redirect(ctx: Context) -> None:
    """``/redirect``: ``code`` (default 302) with ``Location: to`` exactly as given."""
    target = ctx.query.get("to")
    if not target:
        raise ParamError("to is required")
    code = int_param(ctx.query, "code", 302, 300, 399)
    body = f"redirecting to {target}".encode()
    await ctx.responder.simple(code, body, headers=[("Location", target)])


async def serve_auth(ctx: Context) -> None:
    """``/auth``: 401 + JSON unless ``Authorization: Bearer <token>``, then ``/stream``."""
    token = ctx.query.get("token", "test-token")
    if ctx.request.headers.get("authorization") == f"Bearer {token}":
        await serve_stream(ctx)
        return
    ctx.state().auth_failures += 1
    await ctx.responder.json(
        401,
        {"error": "unauthorized", "detail": "send Authorization: Bearer <token>"},
        [("WWW-Authenticate", 'Bearer realm="sse"')],
    )


async def serve_silent(ctx: Context) -> None:
    """``/silent``: ``after`` events, then silence for ``hold`` seconds (default/cap 60)."""
    query = {**ctx.query, "n": ctx.query.get("after", "0")}
    await serve_stream(ctx, query=query, hold_default=MAX_HOLD)


async def serve_stall(ctx: Context) -> None:
    """``/stall``: no response head for ``hold`` seconds (default/cap 60), then ``/stream``."""
    await asyncio.sleep(float_param(ctx.query, "hold", MAX_HOLD, MAX_HOLD))
    await serve_stream(ctx, query={k: v for k, v in ctx.query.items() if k != "hold"})


async def serve_heartbeat(ctx: Context) -> None:
    """``/heartbeat``: only ``: ping`` comments, every ``every`` s, ``count`` times."""
    every = float_param(ctx.query, "every", 1.0, MAX_DELAY)
    count = int_param(ctx.query, "count", 3, 0, 1000)
    eol = "\r\n" if flag_param(ctx.query, "crlf") else "\n"
    await ctx.responder.start(200, SSE_HEADERS)
    for _ in range(count):
        await asyncio.sleep(every)
        await ctx.responder.write(f": ping{eol}".encode())
    await ctx.responder.end()


async def serve_garbage(ctx: Context) -> None:
    """``/garbage``: :data:`servers.garbage.GARBAGE_BYTES`, optionally randomly split."""
    chunk = int_param(ctx.query, "chunk", 0, 0, 1 << 20)
    rng = random.Random(f"chunks:{ctx.query.get('seed', '0')}")
    await ctx.responder.start(200, SSE_HEADERS)
    await emit(ctx.responder, GARBAGE_BYTES, rng, chunk)
    await ctx.responder.end()


async def serve_huge(ctx: Context) -> None:
    """``/huge``: one event (``id: 1``) whose data value is ``size`` bytes of ``x``."""
    size = int_param(ctx.query, "size", 1024 * 1024, 0, MAX_HUGE)
    responder = ctx.responder
    await responder.start(200, SSE_HEADERS)
    await responder.write(b"id: 1\ndata: ")
    block = b"x" * 65536
    for start in range(0, size, len(block)):
        await responder.write(block[: min(len(block), size - start)])
    await responder.write(b"\n\n")
    await responder.end()


async def serve_gzip(ctx: Context) -> None:
    """``/gzip``: the ``/stream`` bytes, gzip-compressed with a sync flush per piece.

    A sync flush makes every event decodable on arrival, which is what an SSE server
    behind a compressing proxy must do; drops are not supported here.
    """
    plan = plan_from_query(ctx.query)
    opts = StreamOptions.from_query(ctx.query)
    index = plan.resume_index(ctx.request.headers.get("last-event-id"))
    compressor = zlib.compressobj(wbits=31)
    rng = random.Random(f"chunks:{opts.seed}")
    await ctx.responder.start(200, [*SSE_HEADERS, ("Content-Encoding", "gzip")])
    sent_event = False
    for piece in plan.preamble + plan.pieces[index:]:
        if piece.kind in ("event", "done"):
            if sent_event and opts.delay:
                await asyncio.sleep(opts.delay)
            sent_event = True
        data = compressor.compress(piece.data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        await emit(ctx.responder, data, rng, opts.chunk)
    await ctx.responder.write(compressor.flush())
    await ctx.responder.end()


def chat_chunk(index: int, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    """One OpenAI-style ``chat.completion.chunk`` SSE event."""
    payload = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def serve_chat(ctx: Context) -> None:
    """``POST /v1/chat/completions``: ``n`` token chunks then ``data: [DONE]``.

    The first chunk carries ``x_echo`` (method, parsed JSON body, all request headers)
    so a test can check that the body and headers reached the server.
    """
    if ctx.request.method != "POST":
        await ctx.responder.json(405, {"error": "use POST"}, [("Allow", "POST")])
        return
    try:
        body = ctx.request.json()
    except ValueError:
        await ctx.responder.json(400, {"error": "body must be JSON"})
        return
    if not isinstance(body, dict):
        await ctx.responder.json(400, {"error": "body must be a JSON object"})
        return
    n = body.get("n", 20)
    if not isinstance(n, int) or not 0 <= n <= 10_000:
        await ctx.responder.json(400, {"error": "n must be an integer in [0, 10000]"})
        return
    delay = float_param(ctx.query, "delay", 0.0, MAX_DELAY)
    model = str(body.get("model", "test-model"))
    echo = {"method": ctx.request.method, "body": body, "headers": ctx.request.headers}
    await ctx.responder.start(200, SSE_HEADERS)
    for index in range(n):
        if index and delay:
            await asyncio.sleep(delay)
        delta: dict[str, Any] = {"content": f"tok{index} "}
        if index == 0:
            delta["role"] = "assistant"
        data = chat_chunk(index, model, delta, "stop" if index == n - 1 else None)
        if index == 0:
            payload = json.loads(data[len(b"data: ") :])
            payload["x_echo"] = echo
            data = f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()
        await ctx.responder.write(data)
    await ctx.responder.write(b"data: [DONE]\n\n")
    await ctx.responder.end()


async def serve_reused(ctx: Context) -> None:
    """``/reused``: ``n`` events per connection with ids ``1..n`` whatever Last-Event-ID
    says, then a clean close; after ``conns`` connections, 204. ``mode=per_connection``:
    each connection's events are new (their data names the connection), as a server
    that numbers ids per connection; ``mode=replay``: the same events every time, as a
    server that ignores Last-Event-ID and replays from the start; ``mode=restart``: ids
    ``<second>:<n>`` where the second of every connection is the same (nchan after a
    reload, whose new messages restart their counter)."""
    state = ctx.state()
    conns = int_param(ctx.query, "conns", 3, 1, 100)
    if state.connections >= conns:
        await ctx.responder.simple(204)
        return
    state.connections += 1
    n = int_param(ctx.query, "n", 10, 0, 10_000)
    mode = ctx.query.get("mode", "per_connection")
    await ctx.responder.start(200, SSE_HEADERS)
    for i in range(1, n + 1):
        event_id = f"1700000000:{i}" if mode == "restart" else str(i)
        data = {"seq": i} if mode == "replay" else {"conn": state.connections, "seq": i}
        await ctx.responder.write(f"id: {event_id}\ndata: {json.dumps(data)}\n\n".encode())
    await ctx.responder.end()


async def serve_messages(ctx: Context) -> None:
    """``POST /v1/messages``: an Anthropic-style stream of ``n`` text deltas, no ids,
    ending with ``message_stop`` and a clean close (no ``[DONE]``); ``drop=1``: the
    connection is cut after the deltas instead."""
    state = ctx.state()
    state.connections += 1
    n = int_param(ctx.query, "n", 3, 0, 1000)
    await ctx.responder.start(200, SSE_HEADERS)
    events = [("message_start", {"type": "message_start"})]
    events += [
        ("content_block_delta", {"type": "content_block_delta", "delta": {"text": f"t{i}"}})
        for i in range(n)
    ]
    drop = flag_param(ctx.query, "drop")
    if not drop:
        events.append(("message_stop", {"type": "message_stop"}))
    for name, data in events:
        await ctx.responder.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
    if drop:
        await ctx.responder.abort(reset=False)
        return
    await ctx.responder.end()


ROUTES: dict[str, Handler] = {
    "/stream": serve_stream,
    "/status": serve_status,
    "/ctype": serve_ctype,
    "/nocontent": serve_nocontent,
    "/redirect": serve_redirect,
    "/auth": serve_auth,
    "/silent": serve_silent,
    "/stall": serve_stall,
    "/heartbeat": serve_heartbeat,
    "/garbage": serve_garbage,
    "/huge": serve_huge,
    "/gzip": serve_gzip,
    "/v1/chat/completions": serve_chat,
    "/v1/messages": serve_messages,
    "/reused": serve_reused,
}
