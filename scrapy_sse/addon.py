"""``SSEAddon``: the one line a user adds to ``ADDONS``.

It installs the stream handler for http and https, the spider middleware and the
extension, and fills in ``SSE_*`` defaults. A handler the user had configured for
http/https is kept as the fallback for requests that are not streams.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.extensions.feedexport import FeedExporter
from scrapy.utils.misc import load_object

from .downloadermw import SSEDownloaderMiddleware
from .extension import SSEExtension
from .feedexport import SSEFeedExporter
from .handler import SSEDownloadHandler
from .logformatter import SSELogFormatter
from .logstats import SSELogStats
from .prometheus import SSEPrometheus
from .provenance import PRIORITY, ProvenancePipeline
from .settings import DEFAULTS
from .spidermw import SSESpiderMiddleware

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

HANDLER_PATH = "scrapy_sse.handler.SSEDownloadHandler"
DEFAULT_LOG_FORMATTER = "scrapy.logformatter.LogFormatter"


def _is_sse_handler(handler: object) -> bool:
    """Without importing a path: a user's handler may need optional dependencies."""
    if isinstance(handler, str):
        return handler == HANDLER_PATH
    return isinstance(handler, type) and issubclass(handler, SSEDownloadHandler)


class SSEAddon:
    def update_settings(self, settings: BaseSettings) -> None:
        for name, value in DEFAULTS.items():
            settings.setdefault(name, value, priority="addon")
        handlers = settings.getdict("DOWNLOAD_HANDLERS")
        fallbacks = dict(settings.getdict("SSE_FALLBACK_HANDLERS"))
        for scheme in ("http", "https"):
            current = handlers.get(scheme)
            if current and not _is_sse_handler(current):
                fallbacks.setdefault(scheme, current)
        if fallbacks:
            settings.set("SSE_FALLBACK_HANDLERS", fallbacks, priority="addon")
        for scheme in ("http", "https"):
            settings["DOWNLOAD_HANDLERS"][scheme] = HANDLER_PATH
        # Nearest the engine: the reconnect requests it adds bypass DepthMiddleware
        # (a reconnect is not a level deeper) and the off-site filter.
        settings.set_in_component_priority_dict("SPIDER_MIDDLEWARES", SSESpiderMiddleware, 25)
        # Nearest the downloader: it sees a stream's connection errors before
        # RetryMiddleware and turns them into an ended stream.
        settings.set_in_component_priority_dict(
            "DOWNLOADER_MIDDLEWARES", SSEDownloaderMiddleware, 950
        )
        settings.set_in_component_priority_dict("EXTENSIONS", SSEExtension, 500)
        # (setdefault: a user who turned one of these off keeps it off.)
        settings.setdefault_in_component_priority_dict("EXTENSIONS", SSELogStats, 500)
        settings.setdefault_in_component_priority_dict("EXTENSIONS", SSEPrometheus, 500)
        # Feed exports that write a batch (SSEBatch) one line per event, in the place of
        # Scrapy's FeedExporter, unless a user turned that off (by class or path) or
        # set ours already.
        extensions = settings.get_component_priority_dict_with_base("EXTENSIONS")
        priority = next(
            (value for key, value in extensions.items() if load_object(key) is FeedExporter),
            None,
        )
        if priority is not None and not any(
            load_object(key) is SSEFeedExporter for key in extensions
        ):
            settings.set_in_component_priority_dict("EXTENSIONS", SSEFeedExporter, priority)
            settings.set_in_component_priority_dict("EXTENSIONS", FeedExporter, None)
        if settings.get("SSE_CLUSTER_URL"):
            from .cluster.spidermw import ClusterSpiderMiddleware

            # (Further from the engine than SSESpiderMiddleware: it sees the spider's
            # start requests, never the reconnects that one adds.)
            settings.set_in_component_priority_dict(
                "SPIDER_MIDDLEWARES", ClusterSpiderMiddleware, 30
            )
        # (It disables itself where items are processed in the context of their event.)
        settings.set_in_component_priority_dict("ITEM_PIPELINES", ProvenancePipeline, PRIORITY)
        if settings.get("LOG_FORMATTER") == DEFAULT_LOG_FORMATTER:
            settings.set("LOG_FORMATTER", SSELogFormatter, priority="addon")
