"""Spiders used by the crawl tests, configured by spider arguments (``-a``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import scrapy
import scrapy.exceptions
from twisted.python.failure import Failure

from scrapy_sse import SSEBatch, SSEEvent, SSERequest, SSEResponse, SSEResponseError


def _error_row(failure: Failure) -> dict[str, Any]:
    exc = failure.value
    row: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, SSEResponseError):
        row.update(
            status=exc.status,
            content_type=exc.content_type,
            body=exc.body.decode("utf-8", "replace"),
        )
    event = getattr(failure, "event", None)
    if event is not None:
        row["event_id"] = event.id
    return row


class _Base(scrapy.Spider):
    """``-a reconnect=1`` turns reconnection on (off by default here, so that a test
    of a stream's end sees that end rather than a reconnect)."""

    url: str
    method = "GET"
    body = ""
    reconnect = "0"

    def request(self, **kwargs: Any) -> SSERequest:
        proxy = getattr(self, "proxy", None)
        return SSERequest(
            self.url,
            method=self.method,
            body=self.body or None,
            errback=self.on_error,
            meta={"proxy": proxy} if proxy else None,
            headers={"Authorization": f"Bearer {self.auth}"}
            if getattr(self, "auth", None)
            else None,
            cookies={"session": self.cookie} if getattr(self, "cookie", None) else None,
            reconnect=self.reconnect == "1",
            stream_key=getattr(self, "stream_key", None),
            last_event_id=getattr(self, "last_event_id", ""),
            **kwargs,
        )

    def on_error(self, failure: Failure) -> dict[str, Any]:
        return _error_row(failure)


class PerEvent(_Base):
    """``callback=`` style: one call per event."""

    name = "per_event"

    async def start(self) -> AsyncIterator[Any]:
        for url in self.url.split("|"):
            self.url = url
            yield self.request(callback=self.parse_event)

    def parse_event(self, event: SSEEvent) -> Any:
        yield {
            "url": event.url,
            "event": event.event,
            "id": event.id,
            "data": event.data,
            "retry": event.retry,
            "status": event.status,
            "stream_open": event.response.stream.is_open,
        }


class Items(_Base):
    """No callback, no ``parse``: SSEEventItem per event."""

    name = "items"

    async def start(self) -> AsyncIterator[Any]:
        yield SSERequest(self.url, reconnect=False)


class ResponseStyle(scrapy.Spider):
    """``parse(response)`` reading ``response.events``; stops after ``limit`` events."""

    name = "response_style"
    url: str
    limit = "0"

    async def start(self) -> AsyncIterator[Any]:
        yield SSERequest(self.url, reconnect=False)

    async def parse(self, response: SSEResponse) -> AsyncIterator[Any]:
        count = 0
        async for event in response.events:
            yield {"id": event.id, "data": event.data, "type": type(response).__name__}
            count += 1
            if int(self.limit) and count >= int(self.limit):
                break


class FailingCallback(_Base):
    """Raises on every third event; the stream must go on."""

    name = "failing_callback"

    async def start(self) -> AsyncIterator[Any]:
        yield self.request(callback=self.parse_event)

    def parse_event(self, event: SSEEvent) -> dict[str, Any]:
        seq = json.loads(event.data)["seq"]
        if seq % 3 == 0:
            raise ValueError(f"bad event {seq}")
        return {"id": event.id}


class Chat(_Base):
    """OpenAI-style POST stream ending with ``[DONE]``."""

    name = "chat"
    method = "POST"

    async def start(self) -> AsyncIterator[Any]:
        yield SSERequest(
            self.url,
            method="POST",
            body=json.dumps({"model": "m", "stream": True, "n": int(getattr(self, "n", 5))}),
            headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
            callback=self.parse_event,
            errback=self.on_error,
            reconnect=self.reconnect == "1",
        )

    def parse_event(self, event: SSEEvent) -> dict[str, Any]:
        chunk = event.json()
        return {"content": chunk["choices"][0]["delta"].get("content"), "data": event.data}


class Plain(scrapy.Spider):
    """A normal (non-stream) request next to a stream: the fallback handler serves it."""

    name = "plain"
    url: str
    page: str

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(self.page, callback=self.parse_page)
        yield SSERequest(self.url, callback=self.parse_event, reconnect=False)

    def parse_page(self, response: scrapy.http.Response) -> dict[str, Any]:
        return {"kind": "page", "status": response.status, "len": len(response.body)}

    def parse_event(self, event: SSEEvent) -> dict[str, Any]:
        return {"kind": "event", "id": event.id}


class Auth(PerEvent):
    """Starts with ``-a token=``; no way to refresh it."""

    name = "auth"
    token = "old"

    def request(self, **kwargs: Any) -> SSERequest:
        request = super().request(**kwargs)
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


class AuthRefresh(Auth):
    """Renews its token through the reconnect hook (``-a new_token=``)."""

    name = "auth_refresh"
    new_token = "new"

    async def sse_refresh_auth(self, request: SSERequest, response_or_failure: Any) -> Any:
        self.crawler.stats.inc_value("test/refresh_calls")
        return {"headers": {"Authorization": f"Bearer {self.new_token}"}}


class Restarter(PerEvent):
    """Calls ``stream.restart()`` after event 5, once."""

    name = "restarter"

    def parse_event(self, event: SSEEvent) -> Any:
        yield from super().parse_event(event)
        if event.id == "5" and not getattr(self, "_restarted", False):
            self._restarted = True
            event.response.stream.restart()


class Batches(_Base):
    """Batch delivery: ``-a size=N -a interval=S``; a callback per batch, or none."""

    name = "batches"
    size = "50"
    interval = "0.05"
    callback = "1"

    async def start(self) -> AsyncIterator[Any]:
        yield self.request(
            callback=self.parse_batch if self.callback == "1" else None,
            batch_size=int(self.size),
            batch_interval=float(self.interval),
        )

    def parse_batch(self, batch: SSEBatch) -> Any:
        yield {"ids": [event.id for event in batch], "url": batch.url, "size": len(batch)}


class Comments(scrapy.Spider):
    """``parse(response)`` that also sees comments (``SSE_COMMENTS``)."""

    name = "comments"
    url: str

    async def start(self) -> AsyncIterator[Any]:
        yield SSERequest(self.url, reconnect=False)

    async def parse(self, response: SSEResponse) -> AsyncIterator[Any]:
        async for event in response.events:
            yield {
                "kind": type(event).__name__,
                "text": getattr(event, "text", None),
                "id": getattr(event, "id", None),
            }


class FormStream(_Base):
    """A plain ``scrapy.Request`` marked ``meta={"sse": True}``."""

    name = "form_stream"

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(
            self.url,
            meta={"sse": True},
            dont_filter=True,
            callback=self.parse_event,
            errback=self.on_error,
        )

    def parse_event(self, event: SSEEvent) -> dict[str, Any]:
        return {"id": event.id}


class Closer(PerEvent):
    """Raises CloseSpider at event 3."""

    name = "closer"

    def parse_event(self, event: SSEEvent) -> Any:
        if event.id == "3":
            raise scrapy.exceptions.CloseSpider("enough")
        yield from super().parse_event(event)


class PageFollower(_Base):
    """A stream whose every fifth event leads to a page (``-a page_url``) of 20 items:
    the usual "notification feed, then fetch what it points at" crawl."""

    name = "page_follower"
    page_url: str

    async def start(self) -> AsyncIterator[Any]:
        yield self.request(callback=self.parse_event)

    def parse_event(self, event: SSEEvent) -> Any:
        yield {"kind": "stream", "id": event.id}
        if int(event.id) % 5 == 0:
            yield scrapy.Request(
                f"{self.page_url}&n={event.id}", callback=self.parse_page, dont_filter=True
            )

    def parse_page(self, response: scrapy.http.Response) -> Any:
        for n in range(20):
            yield {"kind": "page", "id": f"{response.url}#{n}"}


class Completions(scrapy.Spider):
    """LLM completions (``meta["sse_llm"]``) against the demo server at ``-a url``:
    ``-a requests=`` a JSON list of ``{"path", "body", "headers", "llm", "meta"}``.
    ``-a callback=1`` receives each completion in a callback (which adds the request's
    ``tag``); otherwise the completion is the item (tagged by a pipeline-side field:
    its ``url``). The errback yields nothing (it counts ``test/errbacks``), so the items
    are exactly the completions."""

    name = "completions"
    callback = "0"

    async def start(self) -> AsyncIterator[Any]:
        for tag, spec in enumerate(json.loads(self.requests)):
            headers = {"Content-Type": "application/json", **spec.get("headers", {})}
            use_callback = self.callback == "1"
            yield SSERequest(
                self.url + spec["path"],
                method="POST",
                body=json.dumps(spec["body"]),
                headers=headers,
                meta={"sse_llm": spec.get("llm", "auto"), **spec.get("meta", {})},
                callback=self.on_completion if use_callback else None,
                cb_kwargs={"tag": tag} if use_callback else None,
                errback=self.on_error,
            )

    def on_completion(self, completion: Any, tag: int) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(completion), "tag": tag}

    def on_error(self, failure: Failure) -> None:
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value("test/errbacks")


class Watched(PerEvent):
    """``PerEvent`` whose spider connects scrapy-sse's signals and writes what they
    carried, in order, to the crawl's extra file (``signals``)."""

    name = "watched"

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> Watched:
        from scrapy_sse import signals

        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.seen: list[dict[str, Any]] = []
        for name in ("stream_opened", "comment_received", "connection_failed", "stream_ended"):
            recorder = spider._recorder(name)
            crawler.signals.connect(recorder, signal=getattr(signals, name), weak=False)
        crawler.signals.connect(spider._dump, signal=scrapy.signals.spider_closed)
        return spider  # type: ignore[no-any-return]

    def _recorder(self, name: str) -> Any:
        def record(**kwargs: Any) -> None:
            row: dict[str, Any] = {"signal": name, "url": kwargs["request"].url}
            for key in ("status", "reason", "message", "attempt", "retrying", "events"):
                if key in kwargs:
                    row[key] = kwargs[key]
            if "comment" in kwargs:
                row["comment"] = kwargs["comment"].text
            if "headers" in kwargs:
                row["content_type"] = kwargs["headers"].get(b"Content-Type", b"").decode()
            if name == "connection_failed":
                row["has_response"] = kwargs["response"] is not None
                row["failure"] = type(kwargs["failure"]).__name__
            self.seen.append(row)

        return record

    def _dump(self) -> None:
        path = self.settings.get("TEST_EXTRA_PATH")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"signals": self.seen}, f)


class Metered(PerEvent):
    """``PerEvent`` that reads its own Prometheus endpoint at event ``-a at=N`` (the
    bound port from the extension) and writes the page to the extra file."""

    name = "metered"
    at = "20"

    def parse_event(self, event: SSEEvent) -> Any:
        yield from super().parse_event(event)
        if json.loads(event.data)["seq"] == int(self.at):
            import urllib.request

            from scrapy_sse.prometheus import SSEPrometheus

            [extension] = [
                e for e in self.crawler.extensions.middlewares if isinstance(e, SSEPrometheus)
            ]
            url = f"http://127.0.0.1:{extension.bound_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                page = response.read().decode()
            with open(self.settings.get("TEST_EXTRA_PATH"), "w", encoding="utf-8") as f:
                json.dump({"metrics": page}, f)
