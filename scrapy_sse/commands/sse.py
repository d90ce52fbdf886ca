"""``scrapy sse URL``: tail a stream in the terminal, inside a project or not.

It is a real crawl (the add-on, the project's settings and middlewares when run in a
project, reconnection with ``Last-Event-ID`` as in any crawl) whose one spider prints
each event: parsed (``event``, ``id``, then ``data``, pretty-printed when it is JSON),
``--json`` (one object per line, for ``jq``) or ``--raw`` (the event as it was sent).
On a terminal, a status line on stderr says how many events came, how fast, and how
many reconnects there were; Ctrl-C ends it cleanly.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import TYPE_CHECKING, Any, ClassVar, TextIO

import scrapy
from scrapy import signals
from scrapy.commands import ScrapyCommand
from scrapy.exceptions import CloseSpider, UsageError
from scrapy.utils.asyncio import create_looping_call

from .. import signals as sse_signals
from ..http import SSERequest

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator

    from scrapy.crawler import Crawler

    from ..events import SSEEvent

#: Seconds between refreshes of the status line.
STATUS_EVERY = 0.5


def pretty(event: SSEEvent) -> str:
    """An event for a person: its type and id, then its data (indented JSON if JSON)."""
    head = f"event: {event.event}" + (f"  id: {event.id}" if event.id else "")
    try:
        data = json.dumps(json.loads(event.data), indent=2, ensure_ascii=False)
    except ValueError:
        data = event.data
    return f"{head}\n{data}\n"


def as_json(event: SSEEvent) -> str:
    row: dict[str, Any] = {"event": event.event, "id": event.id, "data": event.data}
    with contextlib.suppress(ValueError):
        row["json"] = json.loads(event.data)
    if event.retry is not None:
        row["retry"] = event.retry
    return json.dumps(row, ensure_ascii=False)


def raw(event: SSEEvent) -> str:
    """The event in ``text/event-stream`` form (one field per line, a blank line)."""
    lines = [] if event.event == "message" else [f"event: {event.event}"]
    if event.id:
        lines.append(f"id: {event.id}")
    if event.retry is not None:
        lines.append(f"retry: {event.retry}")
    lines.extend(f"data: {line}" for line in event.data.split("\n"))
    return "\n".join(lines) + "\n"


FORMATS = {"pretty": pretty, "json": as_json, "raw": raw}


class TailSpider(scrapy.Spider):
    """The spider of ``scrapy sse``: one stream, each event printed."""

    name = "sse-tail"

    def __init__(self, *args: Any, tail: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tail = tail
        self.out: TextIO = tail.get("out") or sys.stdout
        self.format = FORMATS[tail["format"]]
        self.count = 0
        self.started = time.monotonic()
        self._status_at = 0.0
        self._status_shown = False
        self.opened = False
        self._refresh: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> TailSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.closed_status, signal=signals.spider_closed)
        crawler.signals.connect(spider.opened_stream, signal=sse_signals.stream_opened)
        crawler.signals.connect(spider.ended_stream, signal=sse_signals.stream_ended)
        crawler.signals.connect(spider.opened_secrets, signal=signals.spider_opened)
        if spider.tail["status"]:
            crawler.signals.connect(spider.start_status, signal=signals.spider_opened)
        return spider

    def opened_stream(self) -> None:
        self.opened = True

    def opened_secrets(self) -> None:
        from ..extension import sse_state

        self.tail["redact"] = sse_state(self.crawler).secrets.redact

    def ended_stream(self, reason: str, error: BaseException | None) -> None:
        if error is not None and reason not in ("completed", "closed", "spider_closed"):
            self.tail["failed"] = f"gave up ({reason}): {error}"

    def start_status(self) -> None:
        """Refresh the status line between events too (while reconnecting, say)."""
        self._refresh = create_looping_call(self._status)
        self._refresh.start(STATUS_EVERY, now=False)

    async def start(self) -> AsyncIterator[SSERequest]:
        tail = self.tail
        yield SSERequest(
            tail["url"],
            method=tail["method"],
            body=tail["body"],
            headers=tail["headers"],
            last_event_id=tail["last_event_id"],
            reconnect=tail["reconnect"],
            callback=self.show,
        )

    def show(self, event: SSEEvent) -> None:
        self.count += 1
        self._clear_status()
        self.out.write(self.format(event) + "\n")
        self.out.flush()
        self._status()
        limit = self.tail["max_events"]
        if limit and self.count >= limit:
            raise CloseSpider("max_events")

    def _status(self) -> None:
        """A live line on a terminal's stderr: events, rate, reconnects."""
        if not self.tail["status"]:
            return
        now = time.monotonic()
        if now - self._status_at < STATUS_EVERY:
            return
        self._status_at = now
        stats: dict[str, Any] = self.crawler.stats.get_stats() if self.crawler.stats else {}
        reconnects = sum(int(v) for k, v in stats.items() if k.startswith("sse/reconnects/"))
        elapsed = max(now - self.started, 1e-9)
        sys.stderr.write(
            f"\r\x1b[2K{self.count} events, {self.count / elapsed:.1f}/s, "
            f"{reconnects} reconnects, {elapsed:.0f} s"
        )
        sys.stderr.flush()
        self._status_shown = True

    def _clear_status(self) -> None:
        if self._status_shown:
            sys.stderr.write("\r\x1b[2K")
            self._status_shown = False

    def closed_status(self) -> None:
        if self._refresh is not None and self._refresh.running:
            self._refresh.stop()
        if not self.opened and "failed" not in self.tail:
            self.tail["failed"] = "the stream never opened (see the log above)"
        self._clear_status()
        self._status_at = 0.0
        if self.tail["status"]:
            self._status()
            sys.stderr.write("\n")
            sys.stderr.flush()


#: What a tail needs whatever the project says (a project's robots.txt rule or download
#: delay would hold the stream back; its log and periodic lines would mix with events):
#: set at the command line's priority unless given with ``-s`` there.
TAIL_SETTINGS: dict[str, Any] = {
    "LOG_LEVEL": "WARNING",
    "SSE_LOGSTATS_INTERVAL": 0,
    "TELNETCONSOLE_ENABLED": False,
    "ROBOTSTXT_OBEY": False,
    "DOWNLOAD_DELAY": 0,
}


class Command(ScrapyCommand):
    requires_project = False
    default_settings: ClassVar[dict[str, Any]] = {}

    def syntax(self) -> str:
        return "[options] URL"

    def short_desc(self) -> str:
        return "Tail a Server-Sent Events stream in the terminal"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument(
            "-H",
            "--header",
            action="append",
            default=[],
            metavar="'NAME: VALUE'",
            help="a request header (repeatable)",
        )
        parser.add_argument(
            "-X", "--method", default=None, help="request method (GET; POST with -d)"
        )
        parser.add_argument("-d", "--data", default=None, help="request body")
        parser.add_argument("--last-event-id", default="", help="resume after this event id")
        shape = parser.add_mutually_exclusive_group()
        shape.add_argument("--json", action="store_true", help="one JSON object per event and line")
        shape.add_argument("--raw", action="store_true", help="each event as it was sent")
        parser.add_argument("--max-events", type=int, default=0, help="stop after N events")
        parser.add_argument("--max-time", type=float, default=0, help="stop after S seconds")
        parser.add_argument("--no-reconnect", action="store_true", help="end with the connection")
        parser.add_argument("--no-status", action="store_true", help="no status line on stderr")

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        assert self.settings is not None
        from ..addon import SSEAddon

        self.settings.set_in_component_priority_dict("ADDONS", SSEAddon, 500)
        given = {pair.split("=", 1)[0] for pair in getattr(opts, "set", None) or ()}
        for name, value in TAIL_SETTINGS.items():
            if name not in given and not (name == "LOG_LEVEL" and opts.loglevel):
                self.settings.set(name, value, priority="cmdline")
        if opts.max_time:
            self.settings.set("CLOSESPIDER_TIMEOUT", opts.max_time, priority="cmdline")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1:
            raise UsageError("give one URL")
        headers: dict[str, str] = {}
        for header in opts.header:
            name, sep, value = header.partition(":")
            if not sep or not name.strip():
                raise UsageError(f"a header is 'Name: value', not {header!r}")
            headers[name.strip()] = value.strip()
        tail = {
            "url": args[0],
            "method": opts.method or ("POST" if opts.data is not None else "GET"),
            "body": opts.data,
            "headers": headers,
            "last_event_id": opts.last_event_id,
            "reconnect": not opts.no_reconnect,
            "format": "json" if opts.json else "raw" if opts.raw else "pretty",
            "max_events": opts.max_events,
            "status": not opts.no_status and sys.stderr.isatty(),
            "redact": str,  # (the crawl's redaction, once it runs)
        }
        assert self.crawler_process is not None
        self.crawler_process.crawl(TailSpider, tail=tail)
        self.crawler_process.start()
        if self.crawler_process.bootstrap_failed or tail.get("failed"):
            # (It never opened, or gave up: a script piping events must be told.)
            if tail.get("failed"):
                print(f"scrapy sse: {tail['redact'](tail['failed'])}", file=sys.stderr)
            self.exitcode = 1
