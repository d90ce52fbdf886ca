"""The stream queue without a network: delivery accounting and resend detection."""

from __future__ import annotations

import asyncio

from scrapy import Request

from scrapy_sse.stream import SERVER_CLOSED, SSEStream


def drain(stream: SSEStream) -> list[tuple[str, str]]:
    async def collect() -> list[tuple[str, str]]:
        return [(event.data, event.id) async for event in stream]

    return asyncio.run(collect())


def resumed_stream() -> SSEStream:
    # A reconnect after the events with ids 4 and 5 were delivered.
    return SSEStream(
        Request("https://example.com/s"),
        max_event_size=1000,
        last_event_id="5",
        skip_ids=["4", "5"],
    )


def test_resent_events_are_skipped_but_new_ones_without_id_are_not() -> None:
    stream = resumed_stream()
    stream.feed(b"id: 4\ndata: old4\n\nid: 5\ndata: old5\n\ndata: new1\n\ndata: new2\n\n")
    stream.finish(SERVER_CLOSED)
    assert drain(stream) == [("new1", "5"), ("new2", "5")]
    assert stream.duplicates_skipped == 2
    assert stream.last_delivered_id == "5"


def test_new_events_without_any_id_after_resume_are_all_delivered() -> None:
    stream = resumed_stream()
    stream.feed(b"data: a\n\ndata: b\n\n")
    stream.finish(SERVER_CLOSED)
    assert drain(stream) == [("a", "5"), ("b", "5")]
    assert stream.duplicates_skipped == 0
