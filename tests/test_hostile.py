"""A hostile or broken server cannot hurt the crawl: 1,200 connections to a server that
answers each with random or mutated HTTP and SSE bytes (a seed per connection: see
``tests/servers/hostile.py``) end, each with a reason; no crash, no hang, no memory
blow-up. Bounded: one crawl, a few seconds per connection at most."""

from __future__ import annotations

import time

import pytest

from .crawl import run_crawl
from .servers.hostile import KINDS, HostileServer, response

SEEDS = range(1200)


@pytest.mark.timeout(300)
def test_a_hostile_server_cannot_hurt_the_crawl() -> None:
    with HostileServer() as server:
        started = time.monotonic()
        result = run_crawl(
            "PerEvent",
            args={"url": "|".join(server.url(seed) for seed in SEEDS)},
            settings={
                "CONCURRENT_REQUESTS": 100,
                "CONCURRENT_REQUESTS_PER_DOMAIN": 100,
                "DOWNLOAD_TIMEOUT": 2,
                "SSE_READ_TIMEOUT": 3,
                "LOG_LEVEL": "INFO",
                "MEMUSAGE_ENABLED": True,
            },
            timeout=280,
        )
        took = time.monotonic() - started
    assert result.returncode == 0, result.log[-3000:]
    for bad in ("Unhandled error", "CRITICAL", "Spider error processing"):
        assert bad not in result.log, result.log[result.log.index(bad) - 2000 :][:4000]
    ends = sum(v for k, v in result.stats.items() if k.startswith("sse/ends/"))
    gave_up = sum(v for k, v in result.stats.items() if k.startswith("sse/give_up/"))
    # Every connection ended somehow, each stream once: opened ones with an end reason,
    # the rest (never opened: garbage heads, redirect loops) given up or refused.
    assert ends + result.stat("downloader/exception_count") >= len(SEEDS) * 0.9, result.stats
    assert gave_up >= 1 and result.stat("sse/give_up/decompression_bomb") >= 1
    assert result.stat("sse/errors/bad_headers") >= 1
    assert result.stat("memusage/max") < 600 * 1024 * 1024
    assert took < 240


def test_the_hostile_bytes_are_the_same_for_a_seed() -> None:
    assert response(7) == response(7)
    assert {seed % len(KINDS) for seed in SEEDS} == set(range(len(KINDS)))
