"""Dead letters: what could not be processed, kept aside so the stream never stops.

An event whose callback raised, an item that failed validation, an item a pipeline
dropped: on a live feed none of these may stop the crawl, and none should vanish
into a log line either. ``DeadLetters`` (one per crawler) writes each as one JSON
object::

    {"time": "2025-01-02T03:04:05.678+00:00", "kind": "invalid_item",
     "spider": "prices", "url": "https://api.example.com/stream?...",
     "event": {"event": "price", "id": "42", "data": "..."} | null,
     "item": {...} | null, "error_type": "ValidationError", "error_message": "..."}

to the JSON-lines file ``SSE_DEAD_LETTER_PATH``, or, when ``SSE_DEAD_LETTER_PIPELINE``
names a :class:`~scrapy_sse.pipelines.base.BatchingPipeline` subclass, as rows through
its own instance of that sink, configured by the sink's
:meth:`~scrapy_sse.pipelines.base.BatchingPipeline.dead_letter_settings` (by default
the table ``sse_dead_letters``), then ``SSE_DEAD_LETTER_SETTINGS``.

Stream URLs are recorded as in the logs: without user info, and with ``?...`` for the
query string, where API keys travel. Recording never raises: it runs on error paths
of a live stream.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from itemadapter import is_item
from scrapy import signals
from scrapy.http import Response
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from scrapy.utils.misc import load_object

from .events import SSEEvent
from .extension import sse_state
from .http import redact_url
from .pipelines.base import BatchingPipeline, item_fields, json_default

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

logger = logging.getLogger(__name__)

#: Kinds recorded by this module; callers may use others (``callback_error``, ...).
INVALID_ITEM = "invalid_item"
ITEM_DROPPED = "item_dropped"
ITEM_ERROR = "item_error"


def item_as_data(item: Any) -> Any:
    """*item* as JSON-ready data: fields of any item type; a batch as a list."""
    if isinstance(item, list):
        return [item_as_data(member) for member in item]
    if is_item(item) or isinstance(item, SSEEvent):
        return item_fields(item)
    return repr(item)


class DeadLetters:
    """The dead-letter store of one crawl (module doc). Get it with :meth:`for_crawler`."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        settings = crawler.settings
        self.path = Path(settings.get("SSE_DEAD_LETTER_PATH") or "sse_dead_letters.jsonl")
        self.record_dropped = settings.getbool("SSE_DEAD_LETTER_ITEM_DROPPED", True)
        self.pipeline: BatchingPipeline | None = None
        if settings.get("SSE_DEAD_LETTER_PIPELINE"):
            self.pipeline = self._build_pipeline(crawler)
        self._file: IO[str] | None = None
        self._installed = False
        self._pipeline_state = "new"  # -> opening -> open | failed -> closed
        self._opening: Deferred[None] | None = None
        crawler.signals.connect(self._spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)

    @classmethod
    def for_crawler(cls, crawler: Crawler) -> DeadLetters:
        """The crawl's store (held by its scrapy-sse state), created on first use."""
        from .extension import sse_state

        return sse_state(crawler).dead_letters

    def record_item_failures(self) -> DeadLetters:
        """Also record items that a pipeline dropped (``DropItem``) or failed on.

        Idempotent. Items dropped with another ``DropItem`` than validation's are
        recorded as ``item_dropped`` unless ``SSE_DEAD_LETTER_ITEM_DROPPED`` is False.
        """
        if not self._installed:
            self._installed = True
            self.crawler.signals.connect(self._item_dropped, signal=signals.item_dropped)
            self.crawler.signals.connect(self._item_error, signal=signals.item_error)
        return self

    def record(
        self,
        kind: str,
        *,
        item: Any = None,
        event: Any = None,
        url: str | None = None,
        error: BaseException | str,
        spider: Any = None,
    ) -> None:
        """Keep one dead letter; never raises (it runs on error paths of a live stream)."""
        try:
            row = self._row(kind, item=item, event=event, url=url, error=error, spider=spider)
            if self.crawler.stats is not None:
                self.crawler.stats.inc_value(f"sse/dead_letters/{kind}")
            if self.pipeline is not None and self._pipeline_state in {"new", "opening", "open"}:
                self._start_pipeline()
                self.pipeline.buffer_rows([row])
            else:
                self._write_line(row)
        except Exception:
            logger.exception("Could not record a dead letter of kind %r", kind)

    # -- rows ------------------------------------------------------------------------

    def _row(
        self,
        kind: str,
        *,
        item: Any,
        event: Any,
        url: str | None,
        error: BaseException | str,
        spider: Any,
    ) -> dict[str, Any]:
        if spider is None:
            spider = self.crawler.spider
        if url is None and event is not None:
            url = getattr(event, "url", None)

        return {
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "kind": kind,
            "spider": getattr(spider, "name", None),
            "url": redact_url(url) if url else None,
            "event": (
                None
                if event is None
                else {
                    "event": getattr(event, "event", None),
                    "id": getattr(event, "id", None),
                    "data": getattr(event, "data", None),
                }
            ),
            "item": None if item is None else item_as_data(item),
            "error_type": type(error).__name__ if isinstance(error, BaseException) else None,
            # (An error's words may quote a request: the crawl's credentials masked.)
            "error_message": sse_state(self.crawler).secrets.redact(str(error)),
        }

    def _write_line(self, row: dict[str, Any]) -> None:
        # One short append per dead letter, on the reactor thread: dead letters are
        # the exception, and a write that returns before the next event is processed
        # keeps their order and survives a crash right after.
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._file.write(json.dumps(row, ensure_ascii=False, default=json_default) + "\n")
        self._file.flush()

    # -- signal handlers -----------------------------------------------------------------

    def _item_dropped(self, item: Any, response: Any, exception: BaseException) -> None:
        kind = getattr(exception, "sse_dead_letter_kind", ITEM_DROPPED)
        if kind is None or (kind == ITEM_DROPPED and not self.record_dropped):
            return  # None: the raiser recorded it already
        error: BaseException = getattr(exception, "sse_error", None) or exception
        self.record(kind, item=item, url=_stream_url(response), error=error)

    def _item_error(self, item: Any, response: Any, failure: Failure) -> None:
        error = failure.value if failure.value is not None else repr(failure)
        self.record(ITEM_ERROR, item=item, url=_stream_url(response), error=error)

    async def _spider_opened(self) -> None:
        if self.pipeline is not None:
            self._start_pipeline()
            if self._opening is not None:
                await maybe_deferred_to_future(self._opening)

    async def _spider_closed(self) -> None:
        if self.pipeline is not None and self._pipeline_state != "new":
            if self._opening is not None:
                await maybe_deferred_to_future(self._opening)
            self._pipeline_state = "closed"  # later records go to the file
            await self.pipeline.close_spider()
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- the optional sink ---------------------------------------------------------------

    def _build_pipeline(self, crawler: Crawler) -> BatchingPipeline:
        settings = crawler.settings
        cls = load_object(settings["SSE_DEAD_LETTER_PIPELINE"])
        if not (isinstance(cls, type) and issubclass(cls, BatchingPipeline)):
            raise TypeError(
                f"SSE_DEAD_LETTER_PIPELINE must name a BatchingPipeline subclass, not {cls!r}"
            )
        overrides = {
            **cls.dead_letter_settings(),
            **settings.getdict("SSE_DEAD_LETTER_SETTINGS"),
        }
        return cls.with_settings(crawler, overrides)

    def _start_pipeline(self) -> None:
        if self._pipeline_state == "new":
            self._pipeline_state = "opening"
            self._opening = deferred_from_coro(self._open_pipeline())

    async def _open_pipeline(self) -> None:
        assert self.pipeline is not None
        try:
            await self.pipeline.open_spider()
        except Exception:
            self._pipeline_state = "failed"
            logger.exception(
                "The dead-letter sink %s could not be opened; dead letters go to %s, and "
                "those it had buffered to its spill folder",
                self.pipeline.name,
                self.path,
            )
        else:
            if self._pipeline_state == "opening":
                self._pipeline_state = "open"


def _stream_url(response: Any) -> str | None:
    return response.url if isinstance(response, Response) else None
