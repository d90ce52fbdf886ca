"""``SSERequest`` and ``SSEResponse``: how a spider asks for a stream and what it gets.

``SSERequest`` extends ``Request.attributes`` so that ``copy()``, ``replace()``,
``to_dict()``/``request_from_dict()`` and pickling keep its fields: retries,
redirects, JOBDIR disk queues and reconnects all rebuild requests that way.
Nothing live is ever put into ``meta``, for the same reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from scrapy import Request, Spider
from scrapy.http import Response

from .secrets import mask_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .events import SSEEvent
    from .stream import SSEStream

#: ``meta`` key that marks any request (a ``FormRequest``, say) as an event stream.
META_KEY = "sse"
#: ``meta`` key of the name a stream's resume point is kept under.
STREAM_KEY = "sse_stream_key"
#: ``meta`` key that makes a stream one LLM completion (``"auto"`` or a format name).
LLM_KEY = "sse_llm"
#: ``meta`` key of the ``time.time()`` an LLM completion's request was sent at.
SENT_AT_KEY = "sse_sent_at"


class SSERequest(Request):
    """A request for a ``text/event-stream`` response.

    ``callback`` is called once per event with an :class:`~scrapy_sse.SSEEvent`.
    Without a callback, a spider's own ``parse(response)`` gets the live
    :class:`SSEResponse`; a spider with no ``parse`` gets one
    :class:`~scrapy_sse.SSEEventItem` per event.

    ``last_event_id`` is sent as ``Last-Event-ID`` on the first connection.
    ``stream_key`` names the stream where its resume point is kept (``JOBDIR``
    checkpoints); by default it is the request's fingerprint, which changes with the
    URL: set it for a stream whose URL changes between runs (a rotating token in the
    query string). The same as ``meta["sse_stream_key"]``.
    ``reconnect=False`` means the stream is never reopened once it ends.
    ``batch_size=N`` switches to batch delivery: the callback gets an ``SSEBatch`` of up
    to N events, and no event waits more than ``batch_interval`` seconds for others
    (without a callback, each ``SSEBatch`` is yielded as one item, which the batching
    sinks store without unpacking).

    Unlike a page, a stream is a subscription: ``dont_filter`` defaults to ``True``, so
    a restarted ``JOBDIR`` crawl reopens it (from its checkpoint) instead of the
    duplicate filter dropping it. Scrapy's ``RetryMiddleware`` is switched off for it
    (``dont_retry``): reconnection has its own policy.
    """

    attributes: tuple[str, ...] = (
        *Request.attributes,
        "last_event_id",
        "reconnect",
        "batch_size",
        "batch_interval",
    )
    # Scrapy's Request is slotted; without slots here every stream request would
    # carry an instance dict for these four fields (two requests per open stream).
    __slots__ = ("batch_interval", "batch_size", "last_event_id", "reconnect")

    def __init__(
        self,
        url: str,
        *args: Any,
        last_event_id: str | None = None,
        reconnect: bool = True,
        batch_size: int | None = None,
        batch_interval: float = 0.05,
        stream_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dont_filter", True)
        super().__init__(url, *args, **kwargs)
        if stream_key is not None:
            self.meta[STREAM_KEY] = stream_key
        self.last_event_id = last_event_id
        self.reconnect = reconnect
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        apply_stream_defaults(self)
        if last_event_id:
            self.headers[b"Last-Event-ID"] = last_event_id.encode("utf-8")


def apply_stream_defaults(request: Request) -> None:
    """Headers and ``meta`` every stream request needs (explicit values win)."""
    headers = request.headers
    headers.setdefault(b"Accept", b"text/event-stream")
    headers.setdefault(b"Cache-Control", b"no-cache")
    # An explicit value wins over HttpCompressionMiddleware's setdefault: most
    # servers then stream uncompressed, which is what a live feed wants.
    headers.setdefault(b"Accept-Encoding", b"identity")
    # An open stream has an empty body at response time: caching it is wrong; and
    # reconnection has its own policy, RetryMiddleware must not retry on its own.
    request.meta.setdefault("dont_cache", True)
    request.meta.setdefault("dont_retry", True)


def read_by_parse(request: Request, spider: Any) -> bool:
    """Whether the spider's own ``parse(response)`` reads this stream: no callback,
    and a ``parse`` of the spider's own (else scrapy-sse's callbacks read it). Without
    a spider, whoever holds the stream reads it."""
    if spider is None:
        return True
    return request.callback is None and type(spider).parse is not Spider.parse


def is_sse_request(request: Request) -> bool:
    """Whether the handler must open ``request`` as an event stream."""
    return isinstance(request, SSERequest) or bool(request.meta.get(META_KEY))


class SSEResponse(Response):
    """The response of an open stream, returned as soon as headers arrive.

    ``body`` stays empty: events arrive through :attr:`events` (or the per-event
    callback). ``stream`` is listed in ``attributes`` so that ``replace()``, as used by
    downloader middlewares, keeps it.
    """

    attributes: tuple[str, ...] = (*Response.attributes, "stream", "safe_url")
    # (Response is slotted: no instance dict per open stream.)
    __slots__ = ("safe_url", "stream")

    def __init__(
        self,
        *args: Any,
        stream: SSEStream | None = None,
        safe_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.stream = stream
        #: The URL as items and errors store it: no user info, credential query values
        #: masked (``SSE_SECRET_PARAMS``; see :mod:`scrapy_sse.secrets`).
        self.safe_url = safe_url or mask_url(self.url)

    @property
    def events(self) -> AsyncIterator[SSEEvent]:
        """The events of the stream, in order, as they arrive."""
        if self.stream is None:
            raise AttributeError("This SSEResponse has no live stream")
        return aiter(self.stream)


def redact_url(url: str) -> str:
    """The URL as the logs show it: no user info, and ``?...`` for a query string."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    redacted = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return redacted + "?..." if parts.query else redacted
