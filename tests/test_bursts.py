"""A stream's output runs in bursts (``SSE_RELEASE_IDLE_CHAIN``): scrapy-sse's callbacks
end their output once the stream is idle, the stream rests with no chain, no task and
no timer, and its next event hands the same response to the scraper again, through a
new spider-middleware chain. Nothing lost, reordered or ended early, on any reactor."""

from __future__ import annotations

import asyncio

import pytest
from scrapy import Request

from scrapy_sse.policy import SERVER_CLOSED
from scrapy_sse.stream import SSEStream

from .crawl import run_crawl
from .servers.sse_server import SSEServer

PROBE = {"SPIDER_MIDDLEWARES": {"tests.crawl_main.ChainProbeMiddleware": 500}}


def new_stream() -> SSEStream:
    return SSEStream(Request("http://example.com/s"), max_event_size=1 << 20)


def test_a_burst_ends_resting_after_the_idle_time_and_the_next_event_wakes_it() -> None:
    async def main() -> tuple[list[str], list[str], list[str]]:
        stream = new_stream()
        stream.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n")
        first = [event.id async for event in stream.burst(0.02)]
        assert stream.resting and stream.is_open
        woken: list[str] = []
        stream.when_ready(lambda: woken.append("now"))
        assert woken == []  # nothing queued: it waits, holding only that function
        stream.feed(b"id: 3\ndata: c\n\n")
        assert woken == ["now"]
        second = [event.id async for event in stream.burst(0.02)]
        stream.finish(SERVER_CLOSED)
        stream.when_ready(lambda: woken.append("ended"))  # already ready: at once
        third = [event.id async for event in stream.burst(0.02)]
        assert not stream.resting
        return first, second, third + woken

    assert asyncio.run(asyncio.wait_for(main(), 5)) == (
        ["1", "2"],
        ["3"],
        ["now", "ended"],
    )


def test_a_trickle_faster_than_the_idle_time_stays_in_one_burst() -> None:
    async def main() -> tuple[list[str], bool]:
        stream = new_stream()

        async def trickle() -> None:
            for i in range(1, 11):
                await asyncio.sleep(0.01)
                stream.feed(b"id: %d\ndata: x\n\n" % i)

        feeder = asyncio.ensure_future(trickle())
        ids = []
        async for event in stream.burst(0.05):
            ids.append(event.id)
        await feeder
        return ids, stream.resting

    # All ten in one burst, which rests only once the trickle has stopped for 0.05 s.
    ids, resting = asyncio.run(asyncio.wait_for(main(), 5))
    assert ids == [str(i) for i in range(1, 11)]
    assert resting


def test_batches_rest_too_and_lose_nothing_across_bursts() -> None:
    async def main() -> list[list[str]]:
        stream = new_stream()
        stream.feed(b"".join(b"id: %d\ndata: x\n\n" % i for i in range(1, 6)))
        first = [[e.id for e in batch] async for batch in stream.batches(2, 0.001, 0.02)]
        assert stream.resting
        stream.feed(b"id: 6\ndata: x\n\n")
        stream.finish(SERVER_CLOSED)
        second = [[e.id for e in batch] async for batch in stream.batches(2, 0.001, 0.02)]
        assert not stream.resting
        return first + second

    assert asyncio.run(asyncio.wait_for(main(), 5)) == [["1", "2"], ["3", "4"], ["5"], ["6"]]


# --- real crawls -------------------------------------------------------------------

# Four events 0.3 s apart, then the stream stays open 0.5 s and the server closes it:
# with a 0.05 s idle time, a burst per event, and one more that sees the end.
GAPS = "/stream?n=4&delay=0.3&hold=0.5&ascii=1"


@pytest.mark.parametrize(
    "reactor",
    [
        "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
        "twisted.internet.epollreactor.EPollReactor",
    ],
    ids=["asyncio", "epoll"],
)
def test_a_stream_with_idle_gaps_gets_a_chain_per_burst_and_ends_once(
    sse_server: SSEServer, reactor: str
) -> None:
    chains = 5
    result = run_crawl(
        "PerEvent",
        args={"url": sse_server.url(GAPS)},
        settings={**PROBE, "SSE_RELEASE_IDLE_CHAIN": 0.05, "TWISTED_REACTOR": reactor},
    )
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == ["1", "2", "3", "4"]
    # Each chain was built and finished as for an ordinary response.
    assert result.stat("test/stream_chains_built") == chains
    assert result.stat("test/stream_chains_finished") == chains
    # The crawl ended as soon as its stream did (no wait for the engine's heartbeat).
    assert result.stat("elapsed_time_seconds") < 3
    # The stream ended with the server's close, once: not at the first rest.
    assert result.stat("sse/ends/server_closed") == 1
    assert result.stat("sse/ends/callback_done") == 0
    # The spider stayed open while its only stream rested (nothing in progress).
    assert result.stat("finish_reason") == "finished"


@pytest.mark.parametrize(
    "url",
    ["/stream?n=6&delay=0.1&hold=0.5&ascii=1", "/stream?n=2&delay=0.1&done=1&ascii=1"],
    ids=["open", "done"],
)
def test_a_middleware_awaiting_after_its_loop_loses_and_breaks_nothing(
    sse_server: SSEServer, url: str
) -> None:
    # Events arrive while the middleware awaits after a burst: the next burst must
    # wait for this scrape to end, and take the events queued (and the end) meanwhile.
    result = run_crawl(
        "PerEvent",
        args={"url": sse_server.url(url)},
        settings={
            "SSE_RELEASE_IDLE_CHAIN": 0.05,
            "SPIDER_MIDDLEWARES": {"tests.crawl_main.AwaitAfterLoopMiddleware": 500},
        },
    )
    assert result.returncode == 0, result.log
    n = 6 if "n=6" in url else 2
    assert [item["id"] for item in result.items] == [str(i) for i in range(1, n + 1)]
    assert result.stat("log_count/ERROR") == 0, result.log
    assert result.stat("log_count/CRITICAL") == 0, result.log


@pytest.mark.parametrize(
    ("ordered", "reactor"),
    [
        (True, "twisted.internet.asyncioreactor.AsyncioSelectorReactor"),
        (False, "twisted.internet.asyncioreactor.AsyncioSelectorReactor"),
        (True, "twisted.internet.epollreactor.EPollReactor"),
    ],
    ids=["ordered", "unordered", "epoll"],
)
def test_a_slow_pipeline_never_overlaps_two_bursts(
    sse_server: SSEServer, ordered: bool, reactor: str
) -> None:
    result = run_crawl(
        "PerEvent",
        args={"url": sse_server.url("/stream?n=4&delay=0.3&hold=0.3&ascii=1")},
        settings={
            "SSE_RELEASE_IDLE_CHAIN": 0.05,
            "SSE_ORDERED_ITEMS": ordered,
            "TWISTED_REACTOR": reactor,
            "ITEM_PIPELINES": {
                "tests.crawl_main.SlowFirstItemsPipeline": 50,
                "tests.crawl_main.RecordPipeline": 100,
            },
        },
    )
    assert result.returncode == 0, result.log
    assert sorted(item["id"] for item in result.items) == ["1", "2", "3", "4"]
    if ordered and "asyncio" in reactor:  # (in order with the asyncio reactor only)
        assert [item["id"] for item in result.items] == ["1", "2", "3", "4"]
    assert result.stat("log_count/CRITICAL") == 0, result.log
    assert result.stat("log_count/ERROR") == 0, result.log


def test_heartbeats_do_not_wake_a_resting_stream(sse_server: SSEServer) -> None:
    # Comments are kept only for a spider's own parse(response): for a per-event
    # callback they would start a burst per heartbeat, for nothing.
    result = run_crawl(
        "PerEvent",
        args={"url": sse_server.url("/heartbeat?every=0.2&count=8")},
        settings={**PROBE, "SSE_RELEASE_IDLE_CHAIN": 0.05, "SSE_COMMENTS": True},
    )
    assert result.returncode == 0, result.log
    assert result.items == []
    assert result.stat("sse/comments") == 8
    # The first burst rests at once; the stream's end starts the last one.
    assert result.stat("test/stream_chains_built") == 2


def test_with_release_off_a_stream_keeps_one_chain(sse_server: SSEServer) -> None:
    result = run_crawl(
        "PerEvent",
        args={"url": sse_server.url(GAPS)},
        settings={**PROBE, "SSE_RELEASE_IDLE_CHAIN": 0},
    )
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == ["1", "2", "3", "4"]
    assert result.stat("test/stream_chains_built") == 1
    assert result.stat("test/stream_chains_finished") == 1


def test_a_spiders_own_parse_keeps_one_chain(sse_server: SSEServer) -> None:
    result = run_crawl(
        "ResponseStyle",
        args={"url": sse_server.url(GAPS)},
        settings={**PROBE, "SSE_RELEASE_IDLE_CHAIN": 0.05},
    )
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == ["1", "2", "3", "4"]
    assert result.stat("sse/ends/server_closed") == 1
    assert result.stat("test/stream_chains_built") == 1


def test_a_drop_while_the_stream_rests_still_reconnects_and_resumes(
    sse_server: SSEServer,
) -> None:
    # The connection is cut in the middle of the stream, during an idle gap: the end
    # wakes the resting stream, and its last burst reconnects.
    url = sse_server.url("/stream?n=6&delay=0.2&ascii=1&drop_at=60&key=idle-drop")
    result = run_crawl(
        "PerEvent",
        args={"url": url, "reconnect": "1"},
        settings={
            **PROBE,
            "SSE_RELEASE_IDLE_CHAIN": 0.05,
            "SSE_RETRY_DELAY": 0.05,
            "CLOSESPIDER_ITEMCOUNT": 6,
        },
    )
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == ["1", "2", "3", "4", "5", "6"]
    assert sum(v for k, v in result.stats.items() if k.startswith("sse/reconnects/")) == 1


def test_a_middleware_failing_after_a_burst_ends_the_stream(sse_server: SSEServer) -> None:
    # The stream is held open for a minute after its events; the failure must end it
    # (closed and recorded by scrapy-sse's middleware), not leave it open unread.
    url = sse_server.url("/stream?n=2&hold=60&ascii=1")
    result = run_crawl(
        "PerEvent",
        args={"url": url},
        settings={
            "SPIDER_MIDDLEWARES": {"tests.crawl_main.FailAfterReleaseMiddleware": 500},
            "SSE_RELEASE_IDLE_CHAIN": 0.05,
        },
        timeout=30,
    )
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == ["1", "2"]
    assert result.stat("spider_exceptions/RuntimeError") == 1
    assert result.stat("sse/ends/callback_done") == 1
    assert result.stat("finish_reason") == "finished"


def test_a_stream_ending_while_resting_keeps_the_spider_open_until_its_last_burst() -> None:
    # It has left the registry, but its last burst (reconnect or errback) is still to
    # run: an idle check in between must not close the spider.
    from scrapy.exceptions import DontCloseSpider
    from scrapy.utils.test import get_crawler

    from scrapy_sse.extension import sse_state
    from scrapy_sse.http import SSEResponse

    async def main() -> None:
        crawler = get_crawler(settings_dict={"ADDONS": {"scrapy_sse.SSEAddon": 0}})
        state = sse_state(crawler)
        stream = new_stream()
        response = SSEResponse("http://example.com/s", stream=stream, request=stream.request)
        state.registry.add(stream, "example.com")
        stream.resting = True
        state._output_done(response)  # (as after a burst that ended resting)
        stream.finish(SERVER_CLOSED)
        assert not state.registry.streams
        with pytest.raises(DontCloseSpider):
            state._spider_idle()
        state.registry.closing = True  # (so that the burst, when it runs, stops there)
        await asyncio.sleep(0.05)
        state._spider_idle()  # its last burst ran: nothing keeps the spider open

    asyncio.run(asyncio.wait_for(main(), 5))
