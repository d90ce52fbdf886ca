"""The scrapy-redis spider the cluster tests run in every worker (``scrapy runspider``).

A plain ``RedisSpider``: the tests push the streams to its start-URL key as JSON
(``{"url": ..., "meta": {"sse": true}}``) while the workers run; each entry becomes a
subscription of the cluster, with one ``SSEEventItem`` per event.
"""

from __future__ import annotations

from scrapy_redis.spiders import RedisSpider


class ClusterRedisSpider(RedisSpider):
    name = "cluster_redis_events"
