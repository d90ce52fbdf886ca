"""What an open stream keeps alive: a crawl may hold ten thousand of them for hours.

These guard the per-stream savings measured with ``benchmarks/streams_load.py many``
(issue 5: at most 32 KiB resident per open stream). They check structure (what is
shared, what is created only when needed) and allocation counts from ``tracemalloc``,
which are deterministic; nothing here is timed.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

from scrapy import Request
from scrapy.http import Headers

from scrapy_sse.handler import shared_frozenset, stream_response
from scrapy_sse.http import SSERequest, SSEResponse
from scrapy_sse.policy import SERVER_CLOSED
from scrapy_sse.registry import StreamRegistry
from scrapy_sse.stream import SSEStream


def idle_stream(request: Request | None = None, **kwargs: Any) -> SSEStream:
    return SSEStream(
        request or Request("https://example.com/s"),
        max_event_size=1000,
        done_data=shared_frozenset(("[DONE]",)),
        **kwargs,
    )


def test_stream_objects_have_no_instance_dict() -> None:
    request = SSERequest("https://example.com/s", batch_size=5)
    assert not hasattr(idle_stream(), "__dict__")
    assert not hasattr(request, "__dict__")
    assert not hasattr(SSEResponse("https://example.com/s", request=request), "__dict__")


def test_an_idle_stream_costs_under_one_kilobyte() -> None:
    # Stream and parser together; before the queue, the id window and the sets were
    # made on demand this was about 2.8 KB.
    request = Request("https://example.com/s")
    shared_frozenset(("[DONE]",))  # the shared set exists before the measurement
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        streams = [idle_stream(request) for _ in range(200)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    size = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(streams) == 200
    assert size / 200 < 1024


def test_idle_streams_share_their_empty_parts() -> None:
    a, b = idle_stream(), idle_stream()
    assert a._queue is b._queue  # the empty placeholder, until an event arrives
    assert a._skip is b._skip
    assert a._done is b._done
    assert a._recent is None


def test_first_event_makes_the_queue_and_events_still_arrive_in_order() -> None:
    stream = idle_stream()

    async def consume() -> list[str]:
        async def feed() -> None:
            await asyncio.sleep(0)
            stream.feed(b"id: 1\ndata: a\n\n")
            await asyncio.sleep(0)
            stream.feed(b"id: 2\ndata: b\n\n")
            stream.finish(SERVER_CLOSED)

        task = asyncio.ensure_future(feed())
        events = [event.data async for event in stream]
        await task
        return events

    assert asyncio.run(consume()) == ["a", "b"]
    assert [event_id for event_id, _ in stream.recent] == ["1", "2"]


def test_a_waiting_stream_awaits_a_bare_future_in_asyncio() -> None:
    stream = idle_stream()

    async def wait_once() -> Any:
        iterator = aiter(stream)
        pending = asyncio.ensure_future(anext(iterator))
        await asyncio.sleep(0)
        waiter = stream._waiter
        stream.feed(b"data: x\n\n")
        event = await pending
        await iterator.aclose()  # type: ignore[attr-defined]
        return waiter, event

    waiter, event = asyncio.run(wait_once())
    assert isinstance(waiter, asyncio.Future)
    assert event.data == "x"


def test_a_cancelled_wait_does_not_break_the_producer() -> None:
    stream = idle_stream()

    async def cancel_then_feed() -> None:
        task = asyncio.ensure_future(anext(aiter(stream)))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        stream.feed(b"data: x\n\n")  # must not raise on the cancelled future
        stream.finish(SERVER_CLOSED)

    asyncio.run(cancel_then_feed())
    assert stream.events_received == 1


def test_registry_uses_no_closure_per_stream() -> None:
    registry = StreamRegistry()
    a, b = idle_stream(), idle_stream()
    registry.add(a, "slot")
    registry.add(b, "slot")
    assert a._on_end[0] is b._on_end[0]
    assert registry.streams == {a: "slot", b: "slot"}
    a.finish(SERVER_CLOSED)
    assert a not in registry.streams and b in registry.streams


def test_response_request_shares_the_request_headers() -> None:
    request = SSERequest("https://example.com/s", headers={"X-Token": "t"})
    stream = idle_stream(request)
    headers = Headers({"Content-Type": "text/event-stream"})
    response = stream_response(request, stream, url=request.url, status=200, headers=headers)
    assert response.headers is headers
    # A copy (the spider middleware sets its callback; the original keeps the user's).
    assert response.request is not request
    assert response.request.headers is request.headers
    assert response.request.headers[b"X-Token"] == b"t"
