"""The spider of the sink crawl tests, run as ``scrapy runspider tests/sink_spiders.py``.

One spider (``runspider`` takes the file's spider), configured by spider arguments:

``url``         the SSE stream to read (``/stream`` of the test server: ``{"seq": i}``)
``kind``        item type: ``dict``, ``dataclass``, ``attrs``, ``scrapy``, or ``mixed``
                (the four in turn), to show the sinks take any item
``batch``       > 0: batch delivery without a callback (lists of ``SSEEventItem``)
``bad_every``   every n-th item carries ``seq`` as text, which :func:`validate_seq`
                rejects
``ready_after`` log ``SINK-READY`` after that many items, so a test knows when to act

When the spider closes it writes the crawl stats (the sinks' final flush included) as
JSON to the ``SINK_STATS_PATH`` setting. :class:`SinkCrawl` and :func:`run_sink_crawl`
run it in a child process (a real crawl: add-on, handler, pipelines, signals).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attrs
import scrapy
from itemadapter import ItemAdapter

from scrapy_sse import SSEEvent, SSERequest
from scrapy_sse.secrets import DEFAULT_SECRET_PARAMS

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("dict", "dataclass", "attrs", "scrapy")


@dataclass
class DataclassItem:
    seq: Any
    text: str
    event_id: str
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)


@attrs.define
class AttrsItem:
    seq: Any
    text: str
    event_id: str
    kind: str
    payload: dict[str, Any] = attrs.field(factory=dict)


class ScrapyItem(scrapy.Item):
    seq = scrapy.Field()
    text = scrapy.Field()
    event_id = scrapy.Field()
    kind = scrapy.Field()
    payload = scrapy.Field()


def make_item(item_type: str, **fields: Any) -> Any:
    if item_type == "dict":
        return dict(fields)
    if item_type == "dataclass":
        return DataclassItem(**fields)
    if item_type == "attrs":
        return AttrsItem(**fields)
    return ScrapyItem(**fields)


def validate_seq(item: Any) -> bool:
    """``SSE_VALIDATOR`` of the dead-letter crawl test: ``seq`` must be an int."""
    return isinstance(ItemAdapter(item).get("seq"), int)


class SinkSpider(scrapy.Spider):
    name = "sink"
    custom_settings = {
        "ADDONS": {"scrapy_sse.SSEAddon": 500},
        "LOG_LEVEL": "INFO",
        "TELNETCONSOLE_ENABLED": False,
    }

    def __init__(
        self,
        url: str,
        kind: str = "mixed",
        batch: str = "0",
        bad_every: str = "0",
        ready_after: str = "0",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.kind = kind
        self.batch = int(batch)
        self.bad_every = int(bad_every)
        self.ready_after = int(ready_after)
        self.count = 0

    async def start(self) -> AsyncIterator[Any]:
        if self.batch:
            yield SSERequest(self.url, batch_size=self.batch)  # no callback: item lists
        else:
            yield SSERequest(self.url, callback=self.parse_event)

    def parse_event(self, event: SSEEvent) -> Iterator[Any]:
        self.count += 1
        seq = event.json()["seq"]
        kind = KINDS[self.count % len(KINDS)] if self.kind == "mixed" else self.kind
        bad = self.bad_every and self.count % self.bad_every == 0
        yield make_item(
            kind,
            seq=f"bad-{seq}" if bad else seq,
            text=event.json().get("text", ""),
            event_id=event.id,
            kind=kind,
            payload={"seq": seq, "tags": ["a", "b"]},
        )
        if self.count == self.ready_after:
            self.logger.info("SINK-READY")

    def closed(self, reason: str) -> None:
        path = self.settings.get("SINK_STATS_PATH")
        if path and self.crawler.stats is not None:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(self.crawler.stats.get_stats(), f, default=str)


# -- the harness the tests use (runs this file with ``scrapy runspider``) -------------


class SinkCrawl:
    """A ``scrapy runspider`` child process; output goes to ``log_path``."""

    def __init__(
        self,
        workdir: Path,
        *,
        settings: dict[str, Any],
        args: dict[str, Any],
    ) -> None:
        self.workdir = workdir
        self.log_path = workdir / "crawl.log"
        self.stats_path = workdir / "stats.json"
        command = [sys.executable, "-m", "scrapy", "runspider", str(Path(__file__).resolve())]
        defaults = {
            "SINK_STATS_PATH": str(self.stats_path),
            # (The test servers name a scenario's state key=: not a credential here.)
            "SSE_SECRET_PARAMS": ",".join(p for p in DEFAULT_SECRET_PARAMS if p != "key"),
        }
        for name, value in {**defaults, **settings}.items():
            text = value if isinstance(value, str) else json.dumps(value)
            command += ["-s", f"{name}={text}"]
        for name, value in args.items():
            command += ["-a", f"{name}={value}"]
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, text: str, *, count: int = 1, timeout: float = 60) -> None:
        """Wait until the log holds ``text`` ``count`` times (or fail, with the log)."""
        wait_until(
            lambda: self.log.count(text) >= count or self.proc.poll() is not None,
            timeout,
            f"{text!r} x{count} in the log",
        )
        assert self.log.count(text) >= count, self.log

    def finish(self, timeout: float = 90) -> dict[str, Any]:
        """Wait for the crawl to end; return its stats (asserting a clean exit)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"the crawl did not end within {timeout} s\n{self.log}") from None
        assert self.proc.returncode == 0, self.log
        assert self.stats_path.exists(), self.log
        stats: dict[str, Any] = json.loads(self.stats_path.read_text(encoding="utf-8"))
        return stats

    def stop(self) -> None:
        """Ctrl-C: Scrapy's graceful stop, which closes the item pipelines."""
        self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def run_sink_crawl(
    workdir: Path, *, settings: dict[str, Any], args: dict[str, Any], timeout: float = 90
) -> tuple[dict[str, Any], str]:
    """A whole crawl: its stats and its log."""
    crawl = SinkCrawl(workdir, settings=settings, args=args)
    try:
        stats = crawl.finish(timeout)
    finally:
        crawl.kill()
    return stats, crawl.log


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
