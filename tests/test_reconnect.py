"""Reconnection through real crawls: drops, backoff, stale streams, auth, JOBDIR."""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import pytest

from .crawl import CrawlResult, run_crawl
from .servers.sse_server import SSEServer
from .servers.starlette_app import UvicornServer

FAST = {"SSE_RETRY_DELAY": 0.01, "SSE_BACKOFF_MAX": 0.05}


def reconnecting(spider: str, url: str, *, timeout: float = 30, **settings: object) -> CrawlResult:
    """A crawl with reconnection on and short delays (``FAST``), plus ``settings``."""
    return run_crawl(
        spider,
        args={"url": url, "reconnect": "1"},
        settings={**FAST, **settings},
        timeout=timeout,
    )


def ids(result: object) -> list[int]:
    return [int(item["id"]) for item in result.items if "id" in item]  # type: ignore[attr-defined]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# 50,000 events through 200 reconnects take 90-110 s on a slow 2-core VM: more than
# the suite's default 120 s timeout allows once other tests share the machine.
@pytest.mark.timeout(300)
def test_random_drops_lose_nothing_and_duplicate_nothing(sse_server: SSEServer) -> None:
    # 200 drops at random byte offsets (mid-event and mid-UTF-8 included) over 50,000
    # events; each reconnect resumes from the last event delivered to the spider.
    url = sse_server.url("/stream?n=50000&drops=200&seed=11&key=drops200&chunk=0")
    result = reconnecting(
        "PerEvent", url, CLOSESPIDER_ITEMCOUNT=50000, LOG_LEVEL="WARNING", timeout=240
    )
    assert result.returncode == 0, result.log[-3000:]
    assert ids(result) == list(range(1, 50001))
    reconnects = sum(v for k, v in result.stats.items() if k.startswith("sse/reconnects/"))
    assert reconnects >= 200
    requests = sse_server.requests_for_key("drops200")
    # The last reconnect may be decided as the spider closes, and never sent.
    assert reconnects <= len(requests) <= reconnects + 1
    # Each reconnect asked for exactly what followed the last delivered event.
    resumed = [int(r.headers["last-event-id"]) for r in requests[1:]]
    assert resumed == sorted(resumed)


def test_backoff_grows_with_jitter_caps_and_resets(sse_server: SSEServer) -> None:
    # Eight instant 500s, then a stream that delivers 2 events and closes, then the
    # server keeps closing with nothing new: the gaps must grow, cap, reset after the
    # healthy connection, then grow again.
    key = "backoff"
    url = sse_server.url(f"/status?code=500&times=8&n=2&key={key}")
    result = run_crawl(
        "PerEvent",
        args={"url": url, "reconnect": "1"},
        settings={"SSE_RETRY_DELAY": 0.1, "SSE_BACKOFF_MAX": 0.8, "CLOSESPIDER_TIMEOUT": 6},
        timeout=30,
    )
    assert result.returncode == 0, result.log
    assert ids(result) == [1, 2]
    times = [r.time for r in sse_server.requests_for_key(key)]
    assert len(times) >= 12
    g = gaps(times)
    slack = 0.08
    assert g[0] >= 0.1 - 0.01
    # The n-th consecutive failure waits within [base, min(cap, base * 2**(n-1))].
    for n, gap in enumerate(g[:8], start=1):
        assert 0.1 - 0.01 <= gap <= min(0.8, 0.1 * 2 ** (n - 1)) + slack, (n, g)
    capped = g[4:8]
    assert statistics.pstdev(capped) > 0.005, f"no jitter in {capped}"
    # g[8]: the wait after the healthy connection (2 events) is the base delay again.
    assert g[8] <= 0.1 + slack, g
    assert result.stat("sse/reconnects/http_error") == 8
    assert result.stat("sse/reconnects/server_closed") >= 3


def test_silent_stream_is_reconnected_after_read_timeout(sse_server: SSEServer) -> None:
    url = sse_server.url("/silent?after=3&hold=30&key=silent")
    result = reconnecting(
        "PerEvent", url, SSE_READ_TIMEOUT=0.5, CLOSESPIDER_TIMEOUT=2.5, timeout=30
    )
    assert result.returncode == 0, result.log
    assert result.stat("sse/reconnects/read_timeout") >= 2
    assert ids(result)[:3] == [1, 2, 3]
    assert "SSE_READ_TIMEOUT" in result.log
    requests = sse_server.requests_for_key("silent")
    assert requests[1].headers["last-event-id"] == "3"


def test_heartbeats_keep_a_stream_alive(sse_server: SSEServer) -> None:
    url = sse_server.url("/heartbeat?every=0.1&count=15&key=beat")
    result = run_crawl(
        "PerEvent",
        args={"url": url},
        settings={"SSE_READ_TIMEOUT": 0.5},
        timeout=30,
    )
    assert result.returncode == 0, result.log
    assert result.stat("sse/reconnects/read_timeout") == 0
    assert result.stat("sse/ends/read_timeout") == 0
    assert result.stat("sse/comments") == 15
    assert result.stat("sse/ends/server_closed") == 1


def test_401_with_refresh_hook_recovers_with_new_token(sse_server: SSEServer) -> None:
    url = sse_server.url("/auth?token=tok-NEW-37&n=4&key=auth1")
    result = run_crawl(
        "AuthRefresh",
        args={"url": url, "token": "tok-OLD-91", "new_token": "tok-NEW-37", "reconnect": "1"},
        settings={**FAST, "CLOSESPIDER_ITEMCOUNT": 4},
        timeout=30,
    )
    assert result.returncode == 0, result.log
    assert ids(result) == [1, 2, 3, 4]
    seen = [r.headers.get("authorization") for r in sse_server.requests_for_key("auth1")]
    assert seen[:2] == ["Bearer tok-OLD-91", "Bearer tok-NEW-37"]
    assert result.stat("sse/reconnects/http_error") == 1
    assert result.stat("sse/auth_refreshed") == 1
    assert "tok-OLD-91" not in result.log  # no credentials logged
    assert "tok-NEW-37" not in result.log


def test_401_without_hook_gives_up_with_clear_error(sse_server: SSEServer) -> None:
    url = sse_server.url("/auth?token=fresh&n=4&key=auth2")
    result = run_crawl("Auth", args={"url": url, "reconnect": "1"}, settings=FAST, timeout=30)
    assert result.returncode == 0, result.log
    [error] = result.items
    assert (error["error"], error["status"]) == ("SSEResponseError", 401)
    assert result.stat("sse/give_up/http_401") == 1
    assert "Giving up on SSE stream" in result.log
    assert result.stat("finish_reason") == "finished"


def test_refreshed_token_refused_again_gives_up(sse_server: SSEServer) -> None:
    url = sse_server.url("/auth?token=never&n=4&key=auth3")
    result = run_crawl(
        "AuthRefresh", args={"url": url, "reconnect": "1"}, settings=FAST, timeout=30
    )
    assert result.returncode == 0, result.log
    assert result.stat("sse/give_up/http_401_after_refresh") == 1
    assert result.stat("test/refresh_calls") == 1


def test_429_waits_for_retry_after(sse_server: SSEServer) -> None:
    url = sse_server.url("/status?code=429&retry_after=1&times=1&n=2&key=r429")
    result = reconnecting("PerEvent", url, CLOSESPIDER_ITEMCOUNT=2, timeout=30)
    assert result.returncode == 0, result.log
    assert ids(result) == [1, 2]
    times = [r.time for r in sse_server.requests_for_key("r429")]
    assert times[1] - times[0] >= 0.95


def test_cross_origin_redirect_keeps_last_event_id_and_drops_credentials(
    sse_server: SSEServer,
) -> None:
    other = sse_server.url("/stream?n=3&start=5&key=xorigin").replace("127.0.0.1", "localhost")
    url = sse_server.url(f"/redirect?code=302&to={other.replace('&', '%26').replace('?', '%3F')}")
    result = run_crawl(
        "Auth",
        args={"url": url, "token": "secret"},
        settings={"SSE_MAX_RECONNECTS": 0},
        timeout=30,
    )
    assert result.returncode == 0, result.log
    assert ids(result) == [6, 7, 8]
    [target] = sse_server.requests_for_key("xorigin")
    assert "authorization" not in target.headers


def test_restart_from_callback_resumes_after_last_delivered(sse_server: SSEServer) -> None:
    url = sse_server.url("/stream?n=10&hold=30&key=restart&chunk=0")
    result = reconnecting("Restarter", url, CLOSESPIDER_ITEMCOUNT=10, timeout=30)
    assert result.returncode == 0, result.log
    assert ids(result) == list(range(1, 11))
    requests = sse_server.requests_for_key("restart")
    assert requests[1].headers["last-event-id"] == "5"
    assert result.stat("sse/reconnects/restart") == 1


def test_max_streams_per_slot_queues_streams(sse_server: SSEServer) -> None:
    urls = "|".join(sse_server.url(f"/stream?n=2&hold=0.5&key=slot{i}") for i in range(3))
    result = run_crawl("PerEvent", args={"url": urls}, settings={"SSE_MAX_STREAMS_PER_SLOT": 1})
    assert result.returncode == 0, result.log
    assert len(result.items) == 6
    arrivals = sorted(
        r.time for r in sse_server.requests if r.query.get("key", "").startswith("slot")
    )
    assert all(gap >= 0.45 for gap in gaps(arrivals))


def test_jobdir_stop_and_restart_resumes_without_gap_or_duplicate(
    sse_server: SSEServer, tmp_path: Path
) -> None:
    url = sse_server.url("/stream?n=100&hold=60&delay=0.005&key=jobdir")
    settings = {"JOBDIR": str(tmp_path / "job"), **FAST}
    first = run_crawl(
        "PerEvent",
        args={"url": url, "reconnect": "1"},
        settings={**settings, "CLOSESPIDER_ITEMCOUNT": 30},
        timeout=30,
    )
    assert first.returncode == 0, first.log
    checkpoint = (tmp_path / "job" / "sse_checkpoints.json").read_text()
    assert str(ids(first)[-1]) in checkpoint
    second = run_crawl(
        "PerEvent",
        args={"url": url, "reconnect": "1"},
        settings={**settings, "CLOSESPIDER_ITEMCOUNT": 100 - len(first.items)},
        timeout=30,
    )
    assert second.returncode == 0, second.log
    assert "Resuming SSE stream" in second.log
    assert ids(first) + ids(second) == list(range(1, 101))


def test_resume_against_sse_starlette() -> None:
    with UvicornServer() as server:
        url = server.url("/stream?n=40&drop_after=7&drops=4&key=star&ping=5")
        result = reconnecting("PerEvent", url, CLOSESPIDER_ITEMCOUNT=40, timeout=40)
        state = server.state
        assert state is not None
        seen = [r.headers.get("last-event-id") for r in state.requests]
    assert result.returncode == 0, result.log
    assert ids(result) == list(range(1, 41))
    assert seen[:5] == [None, "7", "14", "21", "28"]


def test_events_resent_after_reconnect_are_not_delivered_twice(sse_server: SSEServer) -> None:
    # The server replays the 3 events before the resume point on every reconnect.
    url = sse_server.url("/stream?n=300&drops=5&seed=4&resend=3&key=resend&chunk=0")
    result = reconnecting("PerEvent", url, CLOSESPIDER_ITEMCOUNT=300, timeout=60)
    assert result.returncode == 0, result.log
    assert ids(result) == list(range(1, 301))
    reconnects = result.stat("sse/reconnects/connection_lost")
    assert reconnects >= 5
    assert result.stat("sse/duplicates_skipped") == 3 * reconnects


def test_meta_marked_request_reconnects_with_the_stream_policy(sse_server: SSEServer) -> None:
    # A plain Request with meta={"sse": True}: RetryMiddleware must not retry the 503
    # at once; the stream policy waits for Retry-After and resumes.
    url = sse_server.url("/status?code=503&retry_after=1&times=1&n=2&key=formstream")
    result = run_crawl(
        "FormStream", args={"url": url}, settings={**FAST, "CLOSESPIDER_ITEMCOUNT": 2}
    )
    assert result.returncode == 0, result.log
    assert ids(result) == [1, 2]
    times = [r.time for r in sse_server.requests_for_key("formstream")]
    assert times[1] - times[0] >= 0.95
    assert result.stat("retry/count") == 0
    assert result.stat("sse/reconnects/http_error") == 1
    first = next(r for r in sse_server.requests if r.query.get("key") == "formstream")
    assert first.headers["accept"] == "text/event-stream"


def test_close_spider_from_a_callback_closes_the_spider(sse_server: SSEServer) -> None:
    url = sse_server.url("/stream?n=10&hold=30&key=closer")
    result = run_crawl("Closer", args={"url": url, "reconnect": "1"}, timeout=30)
    assert result.returncode == 0, result.log
    assert result.stat("finish_reason") == "enough"
    assert result.stat("sse/callback_errors") == 0
