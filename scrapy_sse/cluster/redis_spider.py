"""Streams pushed to a scrapy-redis spider's start-URL key become cluster subscriptions.

scrapy-redis (``RedisSpider``, ``RedisCrawlSpider``) pops start URLs from a Redis key
only when the spider is idle, and a spider holding streams never is; and a popped
entry lives only in the worker that popped it. In a cluster, scrapy-sse takes the
stream entries out of what the spider pops (its own ``fetch_data``, so lists, sets and
sorted sets work as configured) and declares each as a stream of the cluster with the
data pushed: every worker can build its request, it is held and taken over like any
stream, and it is read while the spider is busy (each lease tick pops). Other entries
are left to scrapy-redis, which schedules them as before.

An entry is a stream when it is JSON with ``"meta": {"sse": true}``: ``url``, and
optionally ``method``, ``headers`` (an object), ``body`` (a string), ``meta``,
``callback`` (the name of a spider method; none: an item per event) and
``batch_size``. Remove one with ``scrapy sse-cluster NAME --complete KEY``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Request

__all__ = ["divert", "is_redis_spider", "subscription_request"]


def is_redis_spider(spider: Any) -> bool:
    """Whether ``spider`` reads start URLs the scrapy-redis way (set up by then)."""
    return all(hasattr(spider, name) for name in ("redis_key", "fetch_data", "next_requests"))


def subscription_request(spider: Any, data: bytes | str) -> Request | None:
    """The stream request an entry of the start-URL key stands for; ``None`` when the
    entry is not a stream (scrapy-redis makes its request)."""
    from ..http import SSERequest

    if isinstance(data, bytes):
        data = data.decode(getattr(spider, "redis_encoding", None) or "utf-8")
    if not data.lstrip().startswith("{"):
        return None
    try:
        entry = json.loads(data)
    except ValueError:
        return None
    meta = entry.get("meta") if isinstance(entry, dict) else None
    if not isinstance(meta, dict) or not meta.get("sse") or not entry.get("url"):
        return None
    callback = entry.get("callback")
    body = entry.get("body")
    return SSERequest(
        str(entry["url"]),
        method=str(entry.get("method") or "GET").upper(),
        headers=entry.get("headers") or None,
        body=body.encode("utf-8") if isinstance(body, str) else None,
        meta={k: v for k, v in meta.items() if k != "sse"},
        callback=getattr(spider, callback) if callback else None,
        batch_size=entry.get("batch_size"),
    )


def divert(spider: Any, subscribe: Callable[[str, Request], None]) -> None:
    """Wrap ``spider.fetch_data``: entries that are streams go to ``subscribe``
    (with their data, as text), the rest to scrapy-redis as before."""
    fetch = spider.fetch_data

    def fetch_data(redis_key: str, batch_size: int) -> list[Any]:
        others = []
        for data in fetch(redis_key, batch_size):
            request = subscription_request(spider, data)
            if request is None:
                others.append(data)
            else:
                text = data.decode("utf-8") if isinstance(data, bytes) else str(data)
                subscribe(text, request)
        return others

    spider.fetch_data = fetch_data
