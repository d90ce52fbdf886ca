"""What a reconnect may and may not do: skip only events already delivered (same id
and content), never re-send a POST that cannot resume, give up on what cannot work."""

from __future__ import annotations

import json
from pathlib import Path

from .crawl import CrawlResult, run_crawl
from .servers.sse_server import SSEServer

FAST = {"SSE_RETRY_DELAY": 0.01, "SSE_BACKOFF_MAX": 0.05}


def post_stream(url: str, **settings: object) -> CrawlResult:
    """A reconnecting POST stream crawl (an LLM completion, say)."""
    return run_crawl(
        "PerEvent",
        args={"url": url, "reconnect": "1", "method": "POST", "body": "{}"},
        settings={**FAST, **settings},
        timeout=30,
    )


def warnings_about(log: str, text: str) -> int:
    return sum(1 for line in log.splitlines() if " WARNING: " in line and text in line)


def test_ids_numbered_per_connection_deliver_every_event(sse_server: SSEServer) -> None:
    url = sse_server.url("/reused?n=10&conns=3&mode=per_connection&key=perconn")
    result = run_crawl("PerEvent", args={"url": url, "reconnect": "1"}, settings=FAST)
    assert result.returncode == 0, result.log
    got = [(json.loads(i["data"])["conn"], json.loads(i["data"])["seq"]) for i in result.items]
    assert got == [(c, s) for c in (1, 2, 3) for s in range(1, 11)]
    assert result.stat("sse/duplicates_skipped") == 0
    assert result.stat("sse/ids_reused") == 2  # the first event of connections 2, 3
    assert warnings_about(result.log, "reuses event ids for new events") == 1


def test_nchan_style_id_restart_delivers_every_event(sse_server: SSEServer) -> None:
    url = sse_server.url("/reused?n=5&conns=2&mode=restart&key=nchan")
    result = run_crawl("PerEvent", args={"url": url, "reconnect": "1"}, settings=FAST)
    assert result.returncode == 0, result.log
    assert [i["id"] for i in result.items] == [f"1700000000:{s}" for s in range(1, 6)] * 2
    assert len({i["data"] for i in result.items}) == 10


def test_a_server_replaying_from_the_start_delivers_each_event_once(
    sse_server: SSEServer,
) -> None:
    url = sse_server.url("/reused?n=10&conns=3&mode=replay&key=replay")
    result = run_crawl("PerEvent", args={"url": url, "reconnect": "1"}, settings=FAST)
    assert result.returncode == 0, result.log
    assert [i["id"] for i in result.items] == [str(s) for s in range(1, 11)]
    assert result.stat("sse/duplicates_skipped") == 20
    assert warnings_about(result.log, "resends events already delivered") == 1


def test_a_post_stream_without_ids_that_ends_cleanly_is_not_sent_again(
    sse_server: SSEServer,
) -> None:
    url = sse_server.url("/v1/messages?n=3&key=anthropic")
    result = post_stream(url)
    assert result.returncode == 0, result.log
    assert [i["event"] for i in result.items] == [
        "message_start",
        *["content_block_delta"] * 3,
        "message_stop",
    ]
    state = sse_server.state("anthropic")
    assert state is not None and state.connections == 1
    assert not any(k.startswith("sse/reconnects/") for k in result.stats)


def test_a_post_stream_without_ids_that_drops_gives_up_instead_of_starting_again(
    sse_server: SSEServer,
) -> None:
    url = sse_server.url("/v1/messages?n=3&drop=1&key=postdrop")
    result = post_stream(url)
    assert result.returncode == 0, result.log
    state = sse_server.state("postdrop")
    assert state is not None and state.connections == 1
    assert result.stat("sse/give_up/not_resendable") == 1
    assert result.items[-1]["error"] == "SSEStreamError"


def test_a_post_stream_is_sent_again_when_the_user_opts_in(sse_server: SSEServer) -> None:
    url = sse_server.url("/v1/messages?n=1&key=optin")
    result = post_stream(url, SSE_RESEND_POST=True, CLOSESPIDER_ITEMCOUNT=9)
    assert result.returncode == 0, result.log
    state = sse_server.state("optin")
    assert state is not None and state.connections >= 3


def test_a_post_stream_with_ids_resumes(sse_server: SSEServer) -> None:
    url = sse_server.url("/stream?n=6&delay=0.01&drop_at=60&key=postids")
    result = post_stream(url, CLOSESPIDER_ITEMCOUNT=6)
    assert result.returncode == 0, result.log
    assert [i["id"] for i in result.items] == ["1", "2", "3", "4", "5", "6"]
    assert sum(v for k, v in result.stats.items() if k.startswith("sse/reconnects/")) == 1


def test_a_redirect_without_location_gives_up_at_once(sse_server: SSEServer) -> None:
    url = sse_server.url("/status?code=302&body=moved&key=noloc")
    result = run_crawl("PerEvent", args={"url": url, "reconnect": "1"}, settings=FAST)
    assert result.returncode == 0, result.log
    assert [(i["error"], i["status"]) for i in result.items] == [("SSEResponseError", 302)]
    assert result.stat("sse/give_up/http_302") == 1
    assert len([r for r in sse_server.requests if r.query.get("key") == "noloc"]) == 1


def test_comments_never_reach_per_event_callbacks(sse_server: SSEServer) -> None:
    url = sse_server.url("/heartbeat?every=0.02&count=3")
    result = run_crawl("PerEvent", args={"url": url}, settings={"SSE_COMMENTS": True})
    assert result.returncode == 0, result.log
    assert result.items == []
    assert result.stat("sse/comments") == 3
    assert result.stat("sse/events") == 0
    assert result.stat("sse/callback_errors") == 0


def test_a_failed_connections_errback_never_nests_nor_leaks_into_a_resent_copy() -> None:
    # scrapy-sse routes a failed connection to its reconnect policy through the
    # request's errback; a middleware that sends a copy again (RetryMiddleware with
    # dont_retry=False, a proxy rotation) must hand on the user's own errback.
    from scrapy.utils.test import get_crawler

    from scrapy_sse import SSERequest
    from scrapy_sse.downloadermw import RoutedFailure, SSEDownloaderMiddleware, user_errback
    from scrapy_sse.spidermw import SSESpiderMiddleware

    crawler = get_crawler(settings_dict={"ADDONS": {"scrapy_sse.SSEAddon": 0}})
    SSESpiderMiddleware(crawler)  # (it provides the policy's errback)
    middleware = SSEDownloaderMiddleware(crawler)

    def own(failure: object) -> None:
        pass

    request = SSERequest("http://127.0.0.1:9/s", errback=own)
    middleware.process_exception(request, ConnectionRefusedError())
    assert isinstance(request.errback, RoutedFailure)
    assert user_errback(request.errback) is own
    middleware.process_exception(request, ConnectionRefusedError())  # fails again
    assert request.errback.args[1] is own  # not wrapped twice
    again = request.copy()  # as RetryMiddleware would send it
    middleware.process_request(again)
    assert again.errback is own


def test_a_stream_key_resumes_a_stream_whose_url_changed(
    sse_server: SSEServer, tmp_path: Path
) -> None:
    # A rotating token in the query string: the fingerprint changes, the key does not.
    def url(token: str) -> str:
        return sse_server.url(f"/stream?n=10&delay=0.01&hold=1&key=rotate&token={token}")

    settings = {"JOBDIR": str(tmp_path / "job")}
    first = run_crawl(
        "PerEvent",
        args={"url": url("a"), "stream_key": "prices"},
        settings={**settings, "CLOSESPIDER_ITEMCOUNT": 4},
    )
    assert first.returncode == 0, first.log
    second = run_crawl(
        "PerEvent", args={"url": url("b"), "stream_key": "prices"}, settings=settings
    )
    assert second.returncode == 0, second.log
    assert "Resuming SSE stream" in second.log
    got = [int(i["id"]) for i in first.items] + [int(i["id"]) for i in second.items]
    assert got == list(range(1, 11))
