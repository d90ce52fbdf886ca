"""A stream's spider-middleware chain is built per burst of output and released while
the stream is idle (``SSE_RELEASE_IDLE_CHAIN``): nothing lost, reordered or ended early.

The unit tests drive ``released_chains`` on a bare asyncio loop with a stand-in for
Scrapy's chain builder; the crawl tests run real streams through Scrapy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from scrapy_sse.idle_chain import is_released, released_chains

from .crawl import run_crawl
from .servers.sse_server import SSEServer

PROBE = {"SPIDER_MIDDLEWARES": {"tests.crawl_main.ChainProbeMiddleware": 500}}


class Chains:
    """Stands in for Scrapy's chain builder: one async generator per build, which
    records what it passed on, whether it ended released, and errors it saw."""

    def __init__(self) -> None:
        self.built = 0
        self.alive = 0
        self.ends: list[str] = []
        self.errors: list[str] = []

    async def build(self, response: Any, burst: AsyncIterator[Any]) -> AsyncIterator[Any]:
        self.built += 1
        return self._chain(response, burst)

    async def _chain(self, response: Any, burst: AsyncIterator[Any]) -> AsyncIterator[Any]:
        self.alive += 1
        try:
            async for value in burst:
                yield value
        except ValueError as exc:
            self.errors.append(str(exc))
            yield "recovered"
        finally:
            self.alive -= 1
            self.ends.append("released" if is_released(response) else "done")


class Response:
    """Any object the weak set of released responses can hold."""


def collect(chains: Chains, output: AsyncIterator[Any], idle: float) -> list[Any]:
    async def run() -> list[Any]:
        return [item async for item in released_chains(chains.build, Response(), output, idle)]

    return asyncio.run(asyncio.wait_for(run(), 10))


async def gaps(values: list[Any], pause: float) -> AsyncIterator[Any]:
    for value in values:
        await asyncio.sleep(pause)
        yield value


def test_a_callback_that_keeps_producing_keeps_one_chain() -> None:
    chains = Chains()
    assert collect(chains, gaps(list(range(50)), 0), idle=1.0) == list(range(50))
    assert chains.built == 1
    assert chains.ends == ["done"]


def test_each_idle_gap_releases_the_chain_and_the_next_output_gets_a_new_one() -> None:
    chains = Chains()
    assert collect(chains, gaps(["a", "b", "c"], 0.05), idle=0.01) == ["a", "b", "c"]
    # One chain before each output (each came after an idle gap), and a last one that
    # sees the callback end: the middlewares run their end-of-output code once.
    assert chains.built == 4
    assert chains.ends == ["released", "released", "released", "done"]
    assert chains.alive == 0


def test_an_error_raised_after_an_idle_gap_reaches_the_chain() -> None:
    async def failing() -> AsyncIterator[Any]:
        yield 1
        await asyncio.sleep(0.05)
        raise ValueError("late failure")

    chains = Chains()
    assert collect(chains, failing(), idle=0.01) == [1, "recovered"]
    assert chains.errors == ["late failure"]


def test_a_bare_yield_does_not_count_as_idle() -> None:
    async def spinning() -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        for i in range(3):
            busy_until = loop.time() + 0.05  # five times the idle time, never waiting
            while loop.time() < busy_until:  # noqa: ASYNC110 - a busy callback, on purpose
                await asyncio.sleep(0)
            yield i

    chains = Chains()
    assert collect(chains, spinning(), idle=0.01) == [0, 1, 2]
    assert chains.built == 1


def test_a_chain_failing_after_a_release_ends_the_waiting_callback() -> None:
    # A middleware's code after its output loop raises once the burst was released:
    # the output ends with that error, and the callback's ``finally`` runs at once.
    finalised = []

    async def callback() -> AsyncIterator[Any]:
        try:
            yield "first"
            await asyncio.sleep(60)
            yield "never"
        finally:
            finalised.append(True)

    async def build(response: Any, burst: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async def chain() -> AsyncIterator[Any]:
            async for value in burst:
                yield value
            if is_released(response):
                raise RuntimeError("post-loop failure")

        return chain()

    async def run() -> list[Any]:
        got: list[Any] = []
        with pytest.raises(RuntimeError, match="post-loop failure"):
            async for item in released_chains(build, Response(), callback(), 0.01):
                got.append(item)
        return got

    assert asyncio.run(asyncio.wait_for(run(), 10)) == ["first"]
    assert finalised == [True]


@pytest.mark.parametrize(
    ("idle", "chains_alive"),
    [
        pytest.param(0.01, 0, id="waiting-outside-any-chain"),
        pytest.param(30, 1, id="waiting-inside-its-chain"),
    ],
)
def test_cancelling_the_consumer_cancels_the_waiting_callback(
    idle: float, chains_alive: int
) -> None:
    async def run() -> list[Any]:
        cancelled = asyncio.Event()
        chains = Chains()
        got: list[Any] = []

        async def waits() -> AsyncIterator[Any]:
            yield "first"
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            yield "never"

        async def consume() -> None:
            async for item in released_chains(chains.build, Response(), waits(), idle):
                got.append(item)

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.1)  # released by now with the short idle, not the long
        assert chains.alive == chains_alive
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cancelled.is_set()
        assert chains.alive == 0
        return got

    assert asyncio.run(asyncio.wait_for(run(), 10)) == ["first"]


# --- real crawls -------------------------------------------------------------------


def test_a_stream_with_idle_gaps_gets_a_chain_per_burst_and_ends_once(
    sse_server: SSEServer,
) -> None:
    url = sse_server.url("/stream?n=4&delay=0.3&ascii=1")
    result = run_crawl(
        "PerEvent", args={"url": url}, settings={**PROBE, "SSE_RELEASE_IDLE_CHAIN": 0.05}
    )
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == ["1", "2", "3", "4"]
    assert result.stat("test/stream_chains_built") >= 4
    # The stream ended with the server's close, once: not at the first released chain.
    assert result.stat("sse/ends/server_closed") == 1
    assert result.stat("sse/ends/callback_done") == 0


def test_with_release_off_a_stream_keeps_one_chain(sse_server: SSEServer) -> None:
    url = sse_server.url("/stream?n=4&delay=0.3&ascii=1")
    result = run_crawl(
        "PerEvent", args={"url": url}, settings={**PROBE, "SSE_RELEASE_IDLE_CHAIN": 0}
    )
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == ["1", "2", "3", "4"]
    assert result.stat("test/stream_chains_built") == 1


def test_a_drop_while_the_chain_is_released_still_reconnects_and_resumes(
    sse_server: SSEServer,
) -> None:
    # The connection is cut in the middle of the stream, during an idle gap: the end
    # must reach the spider middleware (which reconnects) through a chain of its own.
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


def test_while_events_are_queued_the_output_is_taken_without_an_idle_watch() -> None:
    # (``ready``: the stream has events queued, so the callback is not idle; the gaps
    # here stand for a slow callback, which keeps its chain.)
    chains = Chains()

    async def run() -> list[Any]:
        output = gaps(["a", "b"], 0.05)
        chain = released_chains(chains.build, Response(), output, 0.01, lambda _: True)
        return [item async for item in chain]

    assert asyncio.run(asyncio.wait_for(run(), 10)) == ["a", "b"]
    assert chains.built == 1


def test_without_the_asyncio_reactor_a_stream_keeps_one_chain(sse_server: SSEServer) -> None:
    url = sse_server.url("/stream?n=4&delay=0.3&ascii=1")
    result = run_crawl(
        "PerEvent",
        args={"url": url},
        settings={
            **PROBE,
            "SSE_RELEASE_IDLE_CHAIN": 0.05,
            "TWISTED_REACTOR": "twisted.internet.epollreactor.EPollReactor",
        },
    )
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == ["1", "2", "3", "4"]
    assert result.stat("test/stream_chains_built") == 1


def test_a_middleware_failing_after_a_release_still_ends_the_stream(
    sse_server: SSEServer,
) -> None:
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
