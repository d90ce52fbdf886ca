"""Child-process side of :func:`tests.crawl.run_crawl` (reads its config on stdin)."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

from scrapy import signals
from scrapy.crawler import AsyncCrawlerProcess, CrawlerProcess
from scrapy.utils.misc import load_object

from scrapy_sse.pipelines.base import item_fields
from scrapy_sse.secrets import DEFAULT_SECRET_PARAMS

#: The credential parameter names of test crawls: the default ones but ``key``, which
#: the test servers use for a scenario's state (``/stream?...&key=batch1``).
TEST_SECRET_PARAMS = [name for name in DEFAULT_SECRET_PARAMS if name != "key"]


async def pause(seconds: float) -> None:
    """Sleep on any reactor (``asyncio.sleep`` needs the asyncio one)."""
    from scrapy.utils.defer import maybe_deferred_to_future
    from twisted.internet import reactor, task

    await maybe_deferred_to_future(task.deferLater(reactor, seconds, lambda: None))


class SlowFirstItemsPipeline:
    """Holds items 1 and 2 for 0.6 s each (an async pipeline slow now and then)."""

    async def process_item(self, item: Any) -> Any:
        if str(item.get("id")) in ("1", "2"):
            await pause(0.6)
        return item


class AwaitAfterLoopMiddleware:
    """A spider middleware that awaits after its output loop (a flush, say)."""

    async def process_spider_output(self, response: Any, result: Any) -> Any:
        async for value in result:
            yield value
        await pause(0.2)


class FailOnEvenPipeline:
    """Raises for items with an even ``id`` (an ordinary pipeline bug)."""

    def process_item(self, item: Any) -> Any:
        if int(item["id"]) % 2 == 0:
            raise ValueError(f"pipeline cannot take {item['id']}")
        return item


class HoldingPipeline:
    """A hand-written sink that says when items are durable with
    :func:`scrapy_sse.durable.hold`: items whose id is above ``TEST_DURABLE_UP_TO``
    are never released (as if its store had not confirmed them yet)."""

    def __init__(self, up_to: int) -> None:
        self.up_to = up_to
        self.unconfirmed: list[Any] = []

    @classmethod
    def from_crawler(cls, crawler: Any) -> HoldingPipeline:
        return cls(crawler.settings.getint("TEST_DURABLE_UP_TO"))

    def process_item(self, item: Any) -> Any:
        from scrapy_sse import durable

        held = durable.hold()
        assert held is not None, "an item from a stream has a delivery to hold"
        if int(item["id"]) <= self.up_to:
            held.release()
        else:
            self.unconfirmed.append(held)
        return item


class RecordPipeline:
    """Writes every item it receives, with the time it arrived, as one JSON line."""

    def __init__(self, path: str, delay: float) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._delay = delay

    @classmethod
    def from_crawler(cls, crawler: Any) -> RecordPipeline:
        settings = crawler.settings
        return cls(settings["TEST_ITEMS_PATH"], settings.getfloat("TEST_PIPELINE_DELAY"))

    def process_item(self, item: Any) -> Any:
        if self._delay:
            time.sleep(self._delay)  # a deliberately slow, blocking pipeline
        members = item if isinstance(item, list) else [item]
        for member in members:
            row = item_fields(member)
            row["_type"] = type(member).__name__
            row["_batch"] = len(members) if isinstance(item, list) else None
            row["_t"] = time.time()
            self._file.write(json.dumps(row, default=str) + "\n")
        self._file.flush()
        return item

    def close_spider(self) -> None:
        self._file.close()


class JitterPipeline:
    """An asynchronous pipeline whose items take random times (0-2 ms) to pass."""

    def __init__(self) -> None:
        self._random = random.Random(7)

    async def process_item(self, item: Any) -> Any:
        await asyncio.sleep(self._random.random() * 0.002)
        return item


class ConcurrencyProbePipeline:
    """An async pipeline that records, as a stat, how many page items were inside it at
    once (each takes 10 ms)."""

    def __init__(self, crawler: Any) -> None:
        self._stats = crawler.stats
        self._inside = 0

    @classmethod
    def from_crawler(cls, crawler: Any) -> ConcurrencyProbePipeline:
        return cls(crawler)

    async def process_item(self, item: Any) -> Any:
        if item.get("kind") == "page":
            self._inside += 1
            self._stats.max_value("test/page_items_at_once", self._inside)
            await asyncio.sleep(0.01)
            self._inside -= 1
        return item


class ChainProbeMiddleware:
    """A spider middleware that counts, as a stat, how many times its output chain was
    built for stream responses (``process_spider_output`` calls)."""

    def __init__(self, crawler: Any) -> None:
        self._stats = crawler.stats

    @classmethod
    def from_crawler(cls, crawler: Any) -> ChainProbeMiddleware:
        return cls(crawler)

    async def process_spider_output(self, response: Any, result: Any) -> Any:
        stream = getattr(response, "stream", None)
        if stream is not None:
            self._stats.inc_value("test/stream_chains_built")
        async for value in result:
            yield value
        if stream is not None:  # (code after the loop: once per burst)
            self._stats.inc_value("test/stream_chains_finished")


class FailAfterReleaseMiddleware:
    """A spider middleware whose code after its output loop raises once a stream's
    burst ends with the stream resting (a middleware bug scrapy-sse must survive)."""

    async def process_spider_output(self, response: Any, result: Any) -> Any:
        async for value in result:
            yield value
        if response.stream.resting:
            raise RuntimeError("post-loop failure")


class CloseClock(logging.Handler):
    """Reads ``time.monotonic()`` when the engine logs "Closing spider" (the start of
    ``ExecutionEngine.close_spider_async``, which has no signal) and "Spider closed" (its
    end, after every ``spider_closed`` handler), and when ``spider_closed`` is sent."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.times: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        message = str(record.msg)
        if message.startswith("Closing spider ("):
            self.times.setdefault("close_started", now)
        elif message.startswith("Spider closed ("):
            self.times.setdefault("close_finished", now)

    def spider_closed(self) -> None:
        self.times.setdefault("spider_closed_signal", time.monotonic())


def hide(path: str) -> None:
    """Make ``"module:Owner.name"`` look gone to scrapy-sse's start-up check, as in a
    Scrapy release that moved it, while Scrapy's own code keeps finding it (its
    instances through ``__getattr__``, its module through builtins)."""
    import builtins

    module_name, _, attributes = path.partition(":")
    *owner_path, name = attributes.split(".")
    owner: Any = importlib.import_module(module_name)
    for attribute in owner_path:
        owner = getattr(owner, attribute)
    if isinstance(owner, type):
        value = owner.__dict__[name]
        delattr(owner, name)
        fallback = owner.__dict__.get("__getattr__")

        def __getattr__(self: Any, attribute: str) -> Any:
            if attribute == name:
                return value.__get__(self, type(self))
            if fallback is not None:
                return fallback(self, attribute)
            raise AttributeError(attribute)

        owner.__getattr__ = __getattr__  # type: ignore[attr-defined]
    else:
        value = getattr(owner, name)
        delattr(owner, name)
        setattr(builtins, name, value)


def main() -> None:
    config = json.loads(sys.stdin.read())
    hidden = config["settings"].pop("TEST_HIDE", [])
    if hidden:
        from scrapy_sse._scrapy_private import FEATURES

        # Import first what imports them by name: hiding a name simulates one Scrapy
        # release, not an import error in another module of the same release.
        for feature in FEATURES:
            for path in feature.needs:
                importlib.import_module(path.partition(":")[0])
        import scrapy.core.downloader.handlers.http11  # noqa: F401
    for path in hidden:
        hide(path)
    spidercls = load_object(f"tests.spiders.{config['spider']}")
    settings = {
        "ADDONS": {"scrapy_sse.SSEAddon": 500},
        "ITEM_PIPELINES": {RecordPipeline: 100},
        **(
            {"ITEM_PIPELINES": {JitterPipeline: 50, RecordPipeline: 100}}
            if config["settings"].pop("TEST_JITTER", False)
            else {}
        ),
        **(
            {"ITEM_PIPELINES": {ConcurrencyProbePipeline: 50, RecordPipeline: 100}}
            if config["settings"].pop("TEST_CONCURRENCY_PROBE", False)
            else {}
        ),
        **(
            {"ITEM_PIPELINES": {RecordPipeline: 100, HoldingPipeline: 200}}
            if "TEST_DURABLE_UP_TO" in config["settings"]
            else {}
        ),
        "LOG_LEVEL": "INFO",
        "TELNETCONSOLE_ENABLED": False,
        # The test servers name a scenario's state ``key=``: not a credential here.
        "SSE_SECRET_PARAMS": TEST_SECRET_PARAMS,
        "TEST_ITEMS_PATH": config["items"],
        "TEST_EXTRA_PATH": config["extra"],
        **config["settings"],
    }
    if config["reactorless"]:
        settings["TWISTED_REACTOR_ENABLED"] = False
        process: CrawlerProcess | AsyncCrawlerProcess = AsyncCrawlerProcess(settings)
    else:
        process = CrawlerProcess(settings)
    crawler = process.create_crawler(spidercls)

    def dump_stats() -> None:
        stats = crawler.stats.get_stats() if crawler.stats else {}
        with open(config["stats"], "w", encoding="utf-8") as f:
            json.dump(stats, f, default=str)

    crawler.signals.connect(dump_stats, signal=signals.engine_stopped)
    clock = CloseClock()
    logging.getLogger("scrapy.core.engine").addHandler(clock)
    crawler.signals.connect(clock.spider_closed, signal=signals.spider_closed)
    process.crawl(crawler, **config["args"])
    process.start()
    if getattr(process, "bootstrap_failed", False):
        sys.exit("the crawl failed to start (see the log above)")
    extra_path = Path(config["extra"])
    extra = json.loads(extra_path.read_text(encoding="utf-8")) if extra_path.exists() else {}
    extra["monotonic"] = clock.times
    extra_path.write_text(json.dumps(extra), encoding="utf-8")


if __name__ == "__main__":
    main()
