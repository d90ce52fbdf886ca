"""What a cluster is doing, read from its Redis keys (for ``scrapy sse-cluster``).

Plain functions on a synchronous ``redis`` client: :func:`snapshot` reads, :func:`render`
formats, so that the command stays a thin shell and the output can be tested.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .leases import cluster_keys

__all__ = ["complete", "render", "snapshot"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def snapshot(client: Any, cluster: str) -> dict[str, Any]:
    """Workers (live ones), streams (declared, with their holder and last report),
    and the completed streams of ``cluster``."""
    keys = cluster_keys(cluster)
    now_ms = time.time() * 1000
    live = {_text(w) for w in client.zrangebyscore(keys["workers"], now_ms, "+inf")}
    infos = {_text(k): json.loads(v) for k, v in client.hgetall(keys["info"]).items()}
    declared = {_text(k): json.loads(v) for k, v in client.hgetall(keys["streams"]).items()}
    status = {_text(k): json.loads(v) for k, v in client.hgetall(keys["status"]).items()}
    done = {_text(k) for k in client.smembers(keys["done"])}
    stream_keys = sorted(declared)
    holders = client.mget([keys["lease:"] + k for k in stream_keys]) if stream_keys else []
    streams = []
    for key, holder in zip(stream_keys, holders, strict=True):
        report = status.get(key, {})
        streams.append(
            {
                "key": key,
                "url": declared[key].get("url", ""),
                "holder": _text(holder) if holder else "",
                "done": key in done,
                "stored_id": report.get("stored_id", "") if holder else "",
                "events": report.get("events", 0) if holder else 0,
                "reported": report.get("at") if holder else None,
            }
        )
    workers = [{"worker": w, **infos.get(w, {})} for w in sorted(live)]
    return {"cluster": cluster, "workers": workers, "streams": streams}


def render(snap: dict[str, Any], now: float | None = None) -> str:
    """The snapshot as the terminal table ``scrapy sse-cluster`` prints."""
    now = time.time() if now is None else now
    streams = snap["streams"]
    done = sum(1 for s in streams if s["done"])
    held = sum(1 for s in streams if s["holder"] and not s["done"])
    waiting = len(streams) - done - held
    lines = [
        f"Cluster {snap['cluster']!r}: {len(snap['workers'])} live worker(s); "
        f"{len(streams)} stream(s): {held} held, {waiting} waiting, {done} completed",
        "",
        f"{'WORKER':<32} {'WEIGHT':>6} {'STREAMS':>7} {'UP':>8} {'SEEN':>8}",
    ]
    for w in snap["workers"]:
        up = now - float(w.get("started", now))
        seen = now - float(w.get("seen", now))
        lines.append(
            f"{w['worker']:<32} {w.get('weight', 1):>6g} {w.get('streams', 0):>7} "
            f"{up:>7.0f}s {seen:>7.1f}s"
        )
    lines += ["", f"{'STREAM':<14} {'HOLDER':<32} {'STORED ID':<16} {'EVENTS':>8} {'AGE':>7}  URL"]
    for s in streams:
        holder = "(completed)" if s["done"] else s["holder"] or "(waiting)"
        age = f"{now - s['reported']:.1f}s" if s["reported"] else "-"
        lines.append(
            f"{s['key'][:12]:<14} {holder:<32} {str(s['stored_id'])[:16]:<16} "
            f"{s['events']:>8} {age:>7}  {s['url']}"
        )
    return "\n".join(lines)


def complete(client: Any, cluster: str, key: str) -> bool:
    """Mark stream ``key`` (or the one key it is a prefix of) completed: its holder
    closes it at its next lease tick, and no worker opens it again. ``False`` when no
    declared stream matches."""
    keys = cluster_keys(cluster)
    matches = [k for k in map(_text, client.hkeys(keys["streams"])) if k.startswith(key)]
    if len(matches) != 1:
        return False
    client.sadd(keys["done"], matches[0])
    return True
