"""Stream slots and the close: no slot is lost or handed twice, whatever the order in
which a wait is given up, a slot is released and the spider starts closing (a lost
slot would stop a crawl with ``SSE_MAX_STREAMS`` from ever opening another stream)."""

from __future__ import annotations

import asyncio

import pytest

from scrapy_sse.errors import SSEStreamError
from scrapy_sse.policy import CLOSING
from scrapy_sse.registry import StreamRegistry


async def _opens(registry: StreamRegistry, slot: str) -> bool:
    try:
        await asyncio.wait_for(registry.acquire(slot), 0.5)
    except asyncio.TimeoutError:
        return False
    return True


@pytest.mark.parametrize("order", ["cancel, then release", "release, then cancel"])
def test_a_wait_given_up_never_keeps_the_slot(order: str) -> None:
    async def scenario() -> None:
        registry = StreamRegistry(max_streams=1)
        await registry.acquire("a")
        waiting = asyncio.ensure_future(registry.acquire("a"))
        await asyncio.sleep(0)
        if order == "cancel, then release":
            waiting.cancel()
            registry.release("a")
        else:
            registry.release("a")
            waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await _opens(registry, "b")

    asyncio.run(scenario())


def test_slots_handed_over_as_the_spider_closes_are_given_back() -> None:
    async def scenario() -> None:
        registry = StreamRegistry(max_streams=1, max_per_slot=1)
        await registry.acquire("a")
        handed = asyncio.ensure_future(registry.acquire("a"))
        queued = asyncio.ensure_future(registry.acquire("a"))
        await asyncio.sleep(0)
        registry.release("a")  # hands the crawl-wide slot to ``handed``...
        registry.close_all("spider_closed")  # ...in the turn the close begins
        for task in (handed, queued):
            with pytest.raises(SSEStreamError):
                await task
        assert registry._total.held == 0
        assert all(gate.held == 0 for gate in registry._per_download_slot.values())

    asyncio.run(scenario())


def test_opening_steps_are_cancelled_by_the_close_or_refused_after_it() -> None:
    async def scenario() -> None:
        registry = StreamRegistry()
        started: list[str] = []

        async def connect(name: str) -> str:
            started.append(name)
            await asyncio.sleep(30)  # a server that does not answer
            return name

        opening = asyncio.ensure_future(registry.opening(connect("slow")))
        await asyncio.sleep(0.01)
        registry.close_all("spider_closed")
        with pytest.raises(SSEStreamError) as cancelled:
            await opening
        assert cancelled.value.reason == CLOSING
        with pytest.raises(SSEStreamError) as refused:
            await registry.opening(connect("late"))
        assert refused.value.reason == CLOSING
        assert started == ["slow"]

    asyncio.run(scenario())
