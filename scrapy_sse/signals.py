"""Signals scrapy-sse sends, for spider code and extensions that watch streams.

Connect them like Scrapy's own (``crawler.signals.connect(handler, signal=...)``; a
handler takes the keyword arguments it names). A handler that raises is logged and
does not disturb the stream. ``stream_opened`` and ``comment_received`` are sent from
the middle of reading a connection: their handlers must be plain functions (not
``async``); the other two may be coroutines, which are awaited.

In a stream's life they come in this order: ``stream_opened`` once per connection that
opened; ``comment_received`` for each comment line (heartbeat) on it; then, when the
connection ends, ``connection_failed`` if it failed and is to be retried (or given up),
and ``stream_ended`` once the stream has ended for good (completed, closed, given up).
"""

from __future__ import annotations

#: A connection opened (a 200 ``text/event-stream`` response):
#: ``request``, ``response`` (the live ``SSEResponse``), ``status``, ``headers``.
stream_opened = object()

#: A connection failed (it never opened, or broke, or the server refused it):
#: ``request``, ``reason`` (a short kind: ``connection_refused``, ``dns``, ``tls``,
#: ``header_timeout``, ``http_500``, ``connection_lost``...), ``message`` (the cause in
#: the words of the OS or server), ``failure`` (the exception, or ``None``; for an HTTP
#: error an ``SSEResponseError`` with the ``status``, ``headers`` and ``body``),
#: ``response`` (the ``SSEResponse`` if the connection had opened, else ``None``),
#: ``attempt`` (failures of this kind since the stream last delivered events) and
#: ``retrying`` (whether a reconnect follows).
connection_failed = object()

#: A stream ended for good (no reconnect follows): ``request``, ``reason`` (the
#: decision's: ``completed``, ``closed``, ``not_resendable``, ``http_404``...;
#: ``spider_closed`` when the crawl ends first),
#: ``error`` (the error it gave up on, or ``None``) and ``events`` (events delivered on
#: its last connection).
stream_ended = object()

#: A comment line arrived (``: keep-alive``): ``comment`` (an ``SSEComment``, its
#: ``text``) and ``request``. Comments are only parsed while a handler is connected.
comment_received = object()
