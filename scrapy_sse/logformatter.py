"""A LogFormatter that does not build a "Scraped from" record nobody will see, and
that tells a stream's ordering gate when an item has left the pipelines.

Scrapy logs every scraped item at DEBUG. Its root logger passes everything and the
handler filters by ``LOG_LEVEL``, so with ``LOG_LEVEL = "INFO"`` a ``LogRecord`` is
still created (and thrown away) per item: measurable at stream rates. This formatter
returns ``None`` for scraped items (Scrapy then skips logging) unless some handler on
the scraper logger's path would emit DEBUG records. The add-on installs it only when
``LOG_FORMATTER`` is Scrapy's default.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import TYPE_CHECKING, Any

from scrapy.logformatter import LogFormatter, LogFormatterResult

from . import _scrapy_private
from .durable import CURRENT

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from twisted.python.failure import Failure
    from typing_extensions import Self

    from .durable import Ledger

_current = CURRENT.get

#: How long a "does anyone log DEBUG?" answer is reused (handlers rarely change).
_RECHECK_SECONDS = 1.0


def debug_is_emitted(logger: logging.Logger) -> bool:
    """Whether a DEBUG record from ``logger`` would reach any handler's output."""
    if not logger.isEnabledFor(logging.DEBUG):
        return False
    current: logging.Logger | None = logger
    while current is not None:
        if any(handler.level <= logging.DEBUG for handler in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False  # logging.lastResort only shows WARNING and above


def _nothing() -> None:
    pass


class SSELogFormatter(LogFormatter):
    """Scrapy calls its ``scraped``/``dropped``/``item_error`` in an item's task the
    moment the item pipelines are done with it: the point where the next item of the
    same stream may enter them (:attr:`item_done`, set by the extension; see
    :func:`scrapy_sse._scrapy_private.install_stream_output`)."""

    def __init__(self, scraper_logger: logging.Logger | None = None) -> None:
        super().__init__()
        self.item_done: Callable[[], None] = _nothing
        #: The crawl's ledger, where a scraped item settles its hold on its stream's
        #: resume point (set by the extension; dropped and failed items settle on
        #: their signals).
        self.ledger: Ledger | None = None
        #: The logger Scrapy's scraper logs items with; ``None``: unknown, always log.
        self._scraper_logger = scraper_logger
        self._checked_at = -_RECHECK_SECONDS
        self._debug = True

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        # (Built before the extensions: the check is made here, the ERROR line there.)
        if _scrapy_private.lacks(_scrapy_private.QUIET_ITEM_LOG):
            return cls()
        return cls(logging.getLogger(_scrapy_private.scraper_logger_name()))

    def scraped(  # type: ignore[override]
        self, item: Any, response: Response | Failure | None, spider: Spider
    ) -> LogFormatterResult | None:
        self.item_done()
        if self.ledger is not None:
            # (Ledger.item_done, inlined: this runs for every item.)
            slot = _current()
            if slot is not None:
                slot.pending -= 1
                if slot.pending <= 0:
                    slot.track.settle(slot, 0)
        now = monotonic()
        if self._scraper_logger is not None and now - self._checked_at >= _RECHECK_SECONDS:
            self._debug = debug_is_emitted(self._scraper_logger)
            self._checked_at = now
        if not self._debug:
            return None
        return super().scraped(item, response, spider)

    def dropped(
        self,
        item: Any,
        exception: BaseException,
        response: Response | Failure | None,
        spider: Spider,
    ) -> LogFormatterResult:
        self.item_done()
        return super().dropped(item, exception, response, spider)

    def item_error(
        self,
        item: Any,
        exception: BaseException,
        response: Response | Failure | None,
        spider: Spider,
    ) -> LogFormatterResult:
        self.item_done()
        return super().item_error(item, exception, response, spider)
