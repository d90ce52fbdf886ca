"""The stream queue without a network: delivery accounting and resend detection."""

from __future__ import annotations

import asyncio

import pytest
from scrapy import Request

from scrapy_sse import SSEComment, SSEEvent
from scrapy_sse.policy import SERVER_CLOSED
from scrapy_sse.stream import SSEStream


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
        skip=[("4", None), ("5", None)],  # (as from a checkpoint: content unknown)
    )


def test_resent_events_are_skipped_but_new_ones_without_id_are_not() -> None:
    stream = resumed_stream()
    stream.feed(b"id: 4\ndata: old4\n\nid: 5\ndata: old5\n\ndata: new1\n\ndata: new2\n\n")
    stream.finish(SERVER_CLOSED)
    assert drain(stream) == [("new1", "5"), ("new2", "5")]
    assert stream.duplicates_skipped == 2
    assert stream.last_delivered_id == "5"


def test_a_reused_id_with_other_content_is_a_new_event() -> None:
    first = SSEStream(Request("https://example.com/s"), max_event_size=1000)
    first.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n")
    first.finish(SERVER_CLOSED)
    assert drain(first) == [("a", "1"), ("b", "2")]
    # The next connection skips what it already has, by id and content.
    second = SSEStream(
        Request("https://example.com/s"), max_event_size=1000, last_event_id="2", skip=first.recent
    )
    second.feed(b"id: 1\ndata: a\n\nid: 2\ndata: B\n\nid: 3\ndata: c\n\n")
    second.finish(SERVER_CLOSED)
    assert drain(second) == [("B", "2"), ("c", "3")]
    assert second.duplicates_skipped == 1


def test_new_events_without_any_id_after_resume_are_all_delivered() -> None:
    stream = resumed_stream()
    stream.feed(b"data: a\n\ndata: b\n\n")
    stream.finish(SERVER_CLOSED)
    assert drain(stream) == [("a", "5"), ("b", "5")]
    assert stream.duplicates_skipped == 0


@pytest.mark.parametrize("done", ["END", ["END", "STOP"]])
def test_a_request_can_name_its_own_end_of_stream_data(done: object) -> None:
    # An API whose last event is not "[DONE]": meta["sse_done_data"] overrides the
    # setting for that stream only; one string or several.
    from scrapy.utils.test import get_crawler

    from scrapy_sse.handler import new_stream
    from scrapy_sse.policy import COMPLETED
    from scrapy_sse.settings import SSESettings

    crawler = get_crawler()
    settings = SSESettings.from_settings(crawler.settings)
    request = Request("http://127.0.0.1/s", meta={"sse_done_data": done})
    stream = new_stream(crawler, settings, request)
    stream.feed(b"data: [DONE]\n\ndata: END\n\ndata: later\n\n")
    assert stream.end_reason == COMPLETED
    assert drain(stream) == [("[DONE]", "")]
    default = new_stream(crawler, settings, Request("http://127.0.0.1/s"))
    default.feed(b"data: END\n\ndata: [DONE]\n\n")
    assert default.end_reason == COMPLETED
    assert drain(default) == [("END", "")]


def test_per_request_limits_may_be_given_as_any_number_or_flag() -> None:
    # meta values come from user code and JSON job files: 1e6 or "1" must work as they
    # do in settings (the compiled parser accepts exact types only; this module also
    # runs against it in test_parser_compiled.py).
    from scrapy.utils.test import get_crawler

    from scrapy_sse.handler import new_stream
    from scrapy_sse.settings import SSESettings

    crawler = get_crawler()
    settings = SSESettings.from_settings(crawler.settings)
    meta = {"sse_max_event_size": 1e6, "sse_queue_size": "50", "sse_comments": 1}
    stream = new_stream(crawler, settings, Request("http://127.0.0.1/s", meta=meta))
    stream.feed(b": hi\n\ndata: ok\n\n")
    stream.finish(SERVER_CLOSED)

    async def collect() -> list[object]:
        return [item async for item in stream]

    assert asyncio.run(collect()) == [SSEComment("hi"), SSEEvent(data="ok")]
    # A flag from a job file reads as the setting would: "false" is false.
    quiet = new_stream(
        crawler, settings, Request("http://127.0.0.1/s", meta={"sse_comments": "false"})
    )
    quiet.feed(b": hi\n\ndata: ok\n\n")
    quiet.finish(SERVER_CLOSED)
    assert drain(quiet) == [("ok", "")]
