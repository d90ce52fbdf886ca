"""How many streams a worker of a cluster should hold, and what to do about it.

Pure (standard library only, no I/O): each worker calls :func:`plan` on every lease
tick with what it read from the cluster's Redis, and gets back how many free streams to
try to take and which of its own to hand over. Every worker computing the same shares
from the same view is what spreads the streams without a coordinator; leases (taken
with ``SET NX``) settle the races between them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Plan", "plan", "share"]


def share(streams: int, weights: Mapping[str, float], worker: str) -> int:
    """How many of ``streams`` the worker ``worker`` should hold, with the live workers'
    ``weights``: its weighted share rounded up, so that the shares of all workers cover
    every stream (each holds at most one more than an even split when weights are equal).
    """
    total = sum(w for w in weights.values() if w > 0)
    mine = weights.get(worker, 0.0)
    if streams <= 0 or total <= 0 or mine <= 0:
        return 0
    return min(streams, math.ceil(streams * mine / total))


@dataclass(frozen=True)
class Plan:
    """What a worker does on one tick: take up to ``take`` free streams, hand over
    ``hand_over`` (stream keys) at their stored cursors."""

    take: int
    hand_over: tuple[str, ...]


def plan(
    *,
    worker: str,
    weights: Mapping[str, float],
    streams: int,
    held: Sequence[str],
    free: int,
) -> Plan:
    """The tick's plan for ``worker``.

    ``streams``: the cluster's streams that are not done; ``held``: the keys this worker
    holds and is not already handing over, oldest first (the newest go first: the
    least warm state); ``free``: streams no worker holds that this worker can open.
    """
    target = share(streams, weights, worker)
    if len(held) > target:
        return Plan(0, tuple(held[target:]))
    return Plan(min(free, target - len(held)), ())
