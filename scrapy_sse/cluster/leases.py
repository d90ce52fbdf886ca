"""The cluster's shared state in Redis: stream leases with fencing tokens, live workers.

Every change that must be atomic is one server-side script (Redis runs a script with
nothing interleaved), on keys that share the hash tag ``{<cluster>}`` so that the
scripts also run on Redis Cluster. Keys, for a cluster named ``C``:

* ``sse:{C}:streams``: hash, stream key -> JSON (URL without its query, declared at;
  for a subscription pushed to a scrapy-redis start-URL key, the data pushed, from
  which every worker can build the request);
* ``sse:{C}:version``: counter, bumped whenever a stream is declared (workers read the
  hash again only then);
* ``sse:{C}:done``: set of the stream keys that completed (nobody reopens them);
* ``sse:{C}:lease:<key>``: the holder's worker id, with the lease's TTL;
* ``sse:{C}:fence:<key>``: the fencing token of the latest grant. A grant sets it to
  ``max(server time in µs, previous + 1)``: it rises with every new holder, and keeps
  rising even if Redis lost its data (as long as its clock does not go back);
* ``sse:{C}:workers``: sorted set, worker id -> when its heartbeat expires (ms);
* ``sse:{C}:info``: hash, worker id -> JSON (host, pid, weight, started, streams);
* ``sse:{C}:status``: hash, stream key -> JSON (holder, token, last event, at);
* ``sse:{C}:giveups``: hash, stream key -> how many times a worker gave up on it.

A lease alone does not make a paused worker harmless (it wakes up believing it still
holds its streams): the token does, because the store that commits a stream's cursor
refuses a batch whose token is older than the one a newer holder claimed there (see
:meth:`scrapy_sse.pipelines.base.BatchingPipeline.claim`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["LeaseStore", "cluster_keys"]

_ACQUIRE = """
local worker, ttl, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local got = {}
for i = 4, #ARGV do
  if #got >= want then break end
  local lease, fence = KEYS[(i - 4) * 2 + 2], KEYS[(i - 4) * 2 + 3]
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0
      and redis.call('SET', lease, worker, 'NX', 'PX', ttl) then
    local token = math.max(now, tonumber(redis.call('GET', fence) or '0') + 1)
    local text = string.format('%d', token)
    redis.call('SET', fence, text)
    got[#got + 1] = {ARGV[i], text}
  end
end
return got
"""

_DECLARE = """
local added = 0
for i = 1, #ARGV, 2 do
  added = added + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
if added > 0 then redis.call('INCR', KEYS[2]) end
return added
"""

_RENEW = """
local kept = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    kept[i] = 1
  else
    kept[i] = 0
  end
end
return kept
"""

_RELEASE = """
local released = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    released = released + 1
  end
end
return released
"""

_DONE = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""


def cluster_keys(cluster: str) -> dict[str, str]:
    """The fixed keys of ``cluster`` (and the prefixes of per-stream ones)."""
    base = f"sse:{{{cluster}}}:"
    return {
        name: base + name
        for name in (
            "streams",
            "version",
            "done",
            "lease:",
            "fence:",
            "workers",
            "info",
            "status",
            "giveups",
        )
    }


class LeaseStore:
    """One worker's view of the cluster's state (``redis.asyncio`` client)."""

    def __init__(self, client: Redis, cluster: str, worker: str, ttl: float) -> None:
        self.client = client
        self.cluster = cluster
        self.worker = worker
        self.ttl_ms = max(1, int(ttl * 1000))
        self.keys = cluster_keys(cluster)
        self._declare = client.register_script(_DECLARE)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._done = client.register_script(_DONE)

    @staticmethod
    def new_worker_id() -> str:
        """Host, pid and a random suffix: unique, and readable in ``scrapy sse-cluster``."""
        return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"

    def _lease(self, key: str) -> str:
        return self.keys["lease:"] + key

    def _fence(self, key: str) -> str:
        return self.keys["fence:"] + key

    async def declare(self, streams: dict[str, dict[str, Any]]) -> int:
        """Make ``streams`` (key -> what to show of it) streams of the cluster; a stream
        declared before keeps its first record. How many were new."""
        if not streams:
            return 0
        now = time.time()
        args: list[str] = []
        for key, info in streams.items():
            args += [key, json.dumps({**info, "declared": now})]
        added = await self._declare(keys=[self.keys["streams"], self.keys["version"]], args=args)
        return int(added)

    async def version(self) -> int:
        """Bumped whenever a stream is declared."""
        return int(await self.client.get(self.keys["version"]) or 0)

    async def stream_infos(self, known: set[str] | dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The records of the declared streams not in ``known``."""
        keys = [
            k for k in map(_text, await self.client.hkeys(self.keys["streams"])) if k not in known
        ]
        if not keys:
            return {}
        values = await self.client.hmget(self.keys["streams"], keys)
        return {k: json.loads(v) for k, v in zip(keys, values, strict=True) if v}

    async def _now_ms(self) -> int:
        """The Redis server's clock: the one clock every worker shares (machines'
        clocks differ, and liveness is compared across them)."""
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def heartbeat(self, weight: float, held: int, started: float) -> None:
        """Say this worker is alive for one more TTL, with its weight and load."""
        now_ms = await self._now_ms()
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "weight": weight,
            "started": started,
            "streams": held,
            "seen": now_ms / 1000,
        }
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.keys["workers"], {self.worker: now_ms + self.ttl_ms})
        pipe.hset(self.keys["info"], self.worker, json.dumps(info))
        await pipe.execute()

    async def live_workers(self) -> dict[str, float]:
        """Live worker id -> weight (forgetting workers whose heartbeat expired)."""
        now_ms = await self._now_ms()
        pipe = self.client.pipeline(transaction=False)
        pipe.zrangebyscore(self.keys["workers"], "-inf", now_ms)
        pipe.zrangebyscore(self.keys["workers"], now_ms, "+inf")
        gone, live = await pipe.execute()
        if gone:
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(self.keys["workers"], *gone)
            pipe.hdel(self.keys["info"], *gone)
            await pipe.execute()
        if not live:
            return {}
        infos = await self.client.hmget(self.keys["info"], live)
        weights: dict[str, float] = {}
        for worker, info in zip(live, infos, strict=True):
            name = worker.decode() if isinstance(worker, bytes) else str(worker)
            weights[name] = float(json.loads(info)["weight"]) if info else 1.0
        return weights

    async def open_streams(self) -> int:
        """Streams of the cluster that have not completed."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hlen(self.keys["streams"])
        pipe.scard(self.keys["done"])
        declared, done = await pipe.execute()
        return max(0, int(declared) - int(done))

    async def done_among(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` completed."""
        if not keys:
            return set()
        flags = await self.client.smismember(self.keys["done"], keys)
        return {key for key, flag in zip(keys, flags, strict=True) if flag}

    async def acquire(self, keys: list[str], want: int) -> dict[str, int]:
        """Take up to ``want`` of ``keys`` (in that order) that nobody holds and that
        did not complete: key -> its new fencing token."""
        if want <= 0 or not keys:
            return {}
        script_keys = [self.keys["done"]]
        for key in keys:
            script_keys += [self._lease(key), self._fence(key)]
        got = await self._acquire(keys=script_keys, args=[self.worker, self.ttl_ms, want, *keys])
        return {_text(key): int(token) for key, token in got}

    async def unheld(self, keys: list[str]) -> list[str]:
        """Which of ``keys`` nobody holds a lease on."""
        if not keys:
            return []
        holders = await self.client.mget([self._lease(key) for key in keys])
        return [key for key, holder in zip(keys, holders, strict=True) if holder is None]

    async def renew(self, keys: list[str]) -> list[str]:
        """Extend the leases on ``keys``; the keys whose lease this worker lost."""
        if not keys:
            return []
        kept = await self._renew(
            keys=[self._lease(k) for k in keys], args=[self.worker, self.ttl_ms]
        )
        return [key for key, ok in zip(keys, kept, strict=True) if not ok]

    async def release(self, keys: list[str]) -> int:
        """Give up the leases on ``keys`` that this worker still holds."""
        if not keys:
            return 0
        return int(await self._release(keys=[self._lease(k) for k in keys], args=[self.worker]))

    async def gave_up(self, key: str) -> int:
        """Count one more worker giving up on ``key``; how many have."""
        return int(await self.client.hincrby(self.keys["giveups"], key, 1))

    async def complete(self, key: str) -> bool:
        """The stream ``key`` completed: nobody reopens it; its lease is let go. Only
        its holder can say so (``False`` otherwise): a worker that lost the lease read
        an end that the new holder, resuming from the stored cursor, has yet to store."""
        done = await self._done(keys=[self.keys["done"], self._lease(key)], args=[key, self.worker])
        return bool(done)

    async def report(self, status: dict[str, dict[str, Any]]) -> None:
        """Publish the held streams' progress (for ``scrapy sse-cluster``)."""
        if status:
            await self.client.hset(
                self.keys["status"], mapping={k: json.dumps(v) for k, v in status.items()}
            )

    async def leave(self) -> None:
        """This worker stops: it is no longer counted among the live ones."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(self.keys["workers"], self.worker)
        pipe.hdel(self.keys["info"], self.worker)
        await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
