"""How a stream's items are handed to Scrapy's item processing (``install_stream_output``):
in order, with tasks only during a burst, none left behind by a quiet stream."""

from __future__ import annotations

import asyncio
import gc
import random
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from scrapy_sse._scrapy_private import _Bursts, _windowed


def test_a_burst_is_processed_in_order_and_a_quiet_stream_keeps_no_task() -> None:
    async def main() -> None:
        processed: list[int] = []
        queued = [0]
        jitter = random.Random(3)

        bursts = _Bursts(4)
        overlapped = [0]

        async def process(output: int, response: Any) -> None:
            # As Scrapy's item processing does: pipelines take a while, then the
            # LogFormatter reports the outcome (item_done), then the signals take a while.
            await asyncio.sleep(jitter.random() * 0.001)
            processed.append(output)
            bursts.item_done()
            before = len(processed)
            await asyncio.sleep(jitter.random() * 0.001)
            overlapped[0] += len(processed) > before  # the next item ran meanwhile

        quiet = asyncio.Event()

        async def outputs() -> AsyncIterator[int]:
            for i in range(40):
                queued[0] = 39 - i  # events still waiting behind this one
                yield i
            quiet.set()
            await asyncio.Event().wait()  # the stream goes quiet for good

        runner = asyncio.create_task(
            _windowed(
                outputs(),
                16,
                process=process,
                response=None,
                backlog=lambda _: queued[0],
                bursts=bursts,
                on_error=lambda: None,
            )
        )
        await asyncio.wait_for(quiet.wait(), 5)
        await asyncio.sleep(0.01)
        assert processed == list(range(40))
        assert overlapped[0] > 0  # (item_done let the next item in before the signals)
        assert bursts.held == {}
        gc.collect()
        alive = {obj for obj in gc.get_objects() if isinstance(obj, asyncio.Task)}
        assert alive == {asyncio.current_task(), runner}  # finished item tasks let go
        assert bursts.active == 0
        runner.cancel()

    asyncio.run(main())


@pytest.mark.parametrize("queued", [0, 10], ids=["in-task", "burst"])
def test_a_failing_output_is_reported_once_and_what_came_before_is_processed(
    queued: int,
) -> None:
    async def main() -> None:
        processed: list[int] = []
        errors: list[str] = []

        async def process(output: int, response: Any) -> None:
            processed.append(output)

        async def outputs() -> AsyncIterator[int]:
            yield 1
            yield 2
            raise ValueError("callback failed")

        def on_error() -> None:
            errors.append(str(sys.exc_info()[1]))

        bursts = _Bursts(2)
        await _windowed(
            outputs(),
            4,
            process=process,
            response=None,
            backlog=lambda _: queued,
            bursts=bursts,
            on_error=on_error,
        )
        assert sorted(processed) == [1, 2]
        assert errors == ["callback failed"]
        assert bursts.active == 0

    asyncio.run(main())
