"""``SSEPrometheus``: the crawl's stream figures for Prometheus to scrape.

With ``SSE_PROMETHEUS_PORT`` set (and ``pip install scrapy-sse[prometheus]``), an HTTP
endpoint on ``SSE_PROMETHEUS_HOST`` (127.0.0.1) serves, in the text exposition format:

* counters ``sse_events_total``, ``sse_bytes_total``, ``sse_reconnects_total``,
  ``sse_id_gaps_total`` (the crawl's, open streams included);
* gauges ``sse_open_streams``, ``sse_paused_streams``, ``sse_waiting_streams``;
* per open stream (label ``stream``, its key): ``sse_stream_events_total``,
  ``sse_stream_id_gaps_total``, ``sse_stream_paused_seconds_total`` and
  ``sse_stream_last_event_age_seconds``.

The endpoint runs in prometheus_client's own thread, which must not read the live
streams the reactor is changing: the figures are a snapshot taken in the reactor every
``SSE_PROMETHEUS_INTERVAL`` seconds (5), which the endpoint serves as it stands.
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from time import monotonic
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import create_looping_call

from .extension import sse_state
from .logstats import crawl_totals, stream_figures

if TYPE_CHECKING:
    from collections.abc import Iterator

    from scrapy.crawler import Crawler
    from typing_extensions import Self

    from .extension import SSEExtension

logger = logging.getLogger(__name__)


def _stop(server: Any) -> None:
    server.shutdown()
    server.server_close()


class SSEPrometheus:
    def __init__(self, crawler: Crawler, port: int, host: str, interval: float) -> None:
        self.crawler = crawler
        self.port = port
        self.host = host
        self.interval = interval
        self._families: list[Any] = []
        self._server: Any = None
        self._task: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        port = settings.get("SSE_PROMETHEUS_PORT")
        if port in (None, ""):
            raise NotConfigured
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            logger.error(
                "SSE_PROMETHEUS_PORT is set but prometheus_client is not installed: "
                "pip install scrapy-sse[prometheus]; no metrics are served"
            )
            raise NotConfigured from None
        extension = cls(
            crawler,
            int(port),
            settings.get("SSE_PROMETHEUS_HOST") or "127.0.0.1",
            settings.getfloat("SSE_PROMETHEUS_INTERVAL", 5.0),
        )
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    @cached_property
    def state(self) -> SSEExtension:
        return sse_state(self.crawler)

    def collect(self) -> Iterator[Any]:
        """What the endpoint serves (prometheus_client's collector protocol)."""
        yield from self._families

    def spider_opened(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        self.snapshot()
        self._server, _ = start_http_server(self.port, addr=self.host, registry=registry)
        logger.info(
            "Serving SSE metrics for Prometheus on http://%s:%d/metrics",
            self.host,
            self._server.server_port,
            extra={"spider": self.crawler.spider},
        )
        self._task = create_looping_call(self.snapshot)
        self._task.start(self.interval, now=False)

    def spider_closed(self) -> None:
        if self._task is not None and self._task.running:
            self._task.stop()
        if self._server is not None:
            # (shutdown() waits for the serving thread's next poll: not in the reactor.)
            server, self._server = self._server, None
            threading.Thread(target=_stop, args=(server,), daemon=True).start()

    @property
    def bound_port(self) -> int | None:
        """The port the endpoint listens on (``SSE_PROMETHEUS_PORT = 0`` picks one)."""
        return None if self._server is None else int(self._server.server_port)

    def snapshot(self) -> None:
        """Take the figures now, in the reactor's thread (see the module's doc)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        totals = crawl_totals(self.crawler, self.state)
        registry = self.state.registry
        streams = list(registry.streams)
        families: list[Any] = [
            CounterMetricFamily("sse_events", "Events received", value=totals["events"]),
            CounterMetricFamily("sse_bytes", "Bytes of event streams read", value=totals["bytes"]),
            CounterMetricFamily(
                "sse_reconnects", "Reconnects of streams", value=totals["reconnects"]
            ),
            CounterMetricFamily(
                "sse_id_gaps", "Integer event ids skipped between events", value=totals["id_gaps"]
            ),
            GaugeMetricFamily("sse_open_streams", "Streams open now", value=len(streams)),
            GaugeMetricFamily(
                "sse_paused_streams",
                "Streams whose socket is paused (the spider is behind)",
                value=sum(stream.is_paused for stream in streams),
            ),
            GaugeMetricFamily(
                "sse_waiting_streams", "Streams waiting for a place", value=registry.waiting()
            ),
        ]
        per_stream: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "events": CounterMetricFamily(
                "sse_stream_events", "Events received by a stream", labels=["stream"]
            ),
            "id_gaps": CounterMetricFamily(
                "sse_stream_id_gaps", "Integer event ids a stream skipped", labels=["stream"]
            ),
            "paused_s": CounterMetricFamily(
                "sse_stream_paused_seconds",
                "Seconds a stream's socket was paused",
                labels=["stream"],
            ),
            "last_event_age_s": GaugeMetricFamily(
                "sse_stream_last_event_age_seconds",
                "Seconds since a stream's last event",
                labels=["stream"],
            ),
        }
        for row in stream_figures(self.state, monotonic()):
            for name, family in per_stream.items():
                if row[name] is not None:
                    family.add_metric([row["stream"]], row[name])
        self._families = [*families, *per_stream.values()]
