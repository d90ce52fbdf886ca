"""Real crawls against the fault-injecting server on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path

import pytest

from .crawl import run_crawl
from .reference_parser import reference_parse
from .servers.garbage import GARBAGE_BYTES
from .servers.sse_server import SSEServer

TEXT = "é€😀"


def expected_ids(start: int, n: int) -> list[str]:
    return [str(i) for i in range(start + 1, start + n + 1)]


def test_events_reach_pipeline_in_order_while_connection_is_open(sse_server: SSEServer) -> None:
    # The server keeps the connection open for 30 s after the last event: the crawl can
    # only finish (by item count) if every item reached the pipeline before that.
    url = sse_server.url("/stream?n=300&chunk=5&hold=30&seed=3&event=tick")
    result = run_crawl("PerEvent", args={"url": url}, settings={"CLOSESPIDER_ITEMCOUNT": 300})
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == expected_ids(0, 300)
    assert all(item["stream_open"] for item in result.items)
    first = result.items[0]
    assert first["event"] == "tick"
    assert first["status"] == 200
    assert json.loads(first["data"]) == {"seq": 1, "text": TEXT}
    assert result.stat("finish_reason") == "closespider_itemcount"
    assert result.stat("sse/streams_opened") == 1
    assert result.stat("sse/ends/spider_closed") == 1


@pytest.mark.parametrize("endings", ["", "&crlf=1", "&cr=1", "&bom=1&crlf=1"])
def test_one_byte_chunks_and_every_line_ending(sse_server: SSEServer, endings: str) -> None:
    url = sse_server.url(f"/stream?n=40&chunk=1&multiline=1{endings}")
    result = run_crawl("PerEvent", args={"url": url})
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == expected_ids(0, 40)
    assert [json.loads(i["data"]) for i in result.items] == [
        {"seq": i, "text": TEXT} for i in range(1, 41)
    ]
    assert result.stat("sse/ends/server_closed") == 1


def test_no_callback_yields_event_items(sse_server: SSEServer) -> None:
    url = sse_server.url("/stream?n=5&event=price&retry=2500")
    result = run_crawl("Items", args={"url": url})
    assert result.returncode == 0, result.log
    assert [item["_type"] for item in result.items] == ["SSEEventItem"] * 5
    item = result.items[0]
    assert item["url"] == url
    assert (item["event"], item["id"]) == ("price", "1")
    assert item["json"] == {"seq": 1, "text": TEXT}
    assert json.loads(item["data"]) == item["json"]
    assert item["received_at"] > 1.7e9


def test_parse_response_style_and_stream_closed_when_callback_returns(
    sse_server: SSEServer,
) -> None:
    url = sse_server.url("/stream?n=50&hold=30")
    result = run_crawl("ResponseStyle", args={"url": url, "limit": "10"}, timeout=25)
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == expected_ids(0, 10)
    assert result.items[0]["type"] == "SSEResponse"
    assert result.stat("sse/ends/callback_done") == 1
    assert result.stat("finish_reason") == "finished"


def test_callback_exception_is_logged_counted_sent_to_errback_and_stream_goes_on(
    sse_server: SSEServer,
) -> None:
    url = sse_server.url("/stream?n=12")
    result = run_crawl("FailingCallback", args={"url": url})
    assert result.returncode == 0, result.log
    ok = [item["id"] for item in result.items if "error" not in item]
    errors = [item for item in result.items if "error" in item]
    assert ok == [str(i) for i in range(1, 13) if i % 3]
    assert [(e["error"], e["event_id"]) for e in errors] == [
        ("ValueError", str(i)) for i in (3, 6, 9, 12)
    ]
    assert result.stat("sse/callback_errors") == 4
    assert "Spider callback failed on SSE event" in result.log
    assert "bad event 3" in result.log


def test_post_stream_ends_at_done(sse_server: SSEServer) -> None:
    result = run_crawl("Chat", args={"url": sse_server.url("/v1/chat/completions"), "n": "7"})
    assert result.returncode == 0, result.log
    assert len(result.items) == 7
    assert all(item["data"] != "[DONE]" for item in result.items)
    assert result.stat("sse/ends/completed") == 1
    request = sse_server.requests_for("/v1/chat/completions")[-1]
    assert request.method == "POST"
    assert json.loads(request.body)["n"] == 7
    assert request.headers["authorization"] == "Bearer k"
    assert request.headers["accept"] == "text/event-stream"
    assert request.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    ("path", "status", "ctype", "body"),
    [
        (
            "/status?code=401&body=%7B%22error%22%3A%22bad+key%22%7D&ctype=application/json",
            401,
            "application/json",
            '{"error":"bad key"}',
        ),
        ("/status?code=500&body=boom&ctype=text/plain", 500, "text/plain", "boom"),
        ("/ctype?type=text/html&body=%3Chtml%3E", 200, "text/html", "<html>"),
    ],
)
def test_wrong_status_or_content_type_reaches_errback_with_body(
    sse_server: SSEServer, path: str, status: int, ctype: str, body: str
) -> None:
    result = run_crawl("PerEvent", args={"url": sse_server.url(path)})
    assert result.returncode == 0, result.log
    [item] = result.items
    assert item["error"] == "SSEResponseError"
    assert (item["status"], item["content_type"].split(";")[0], item["body"]) == (
        status,
        ctype,
        body,
    )
    assert f"HTTP {status}" in item["message"]
    # Scrapy's meaning of its stats: the failed connection is a download error, and
    # a wrong content type is counted as such, not as an HTTP 200 error.
    assert result.stat("downloader/exception_type_count/scrapy_sse.errors.SSEResponseError") == 1
    assert result.stat("response_received_count") == 0
    assert result.stat("sse/streams_opened") == 0
    error_stat = "sse/errors/bad_content_type" if status == 200 else f"sse/errors/http_{status}"
    assert {k: v for k, v in result.stats.items() if k.startswith("sse/errors/")} == {error_stat: 1}


def test_a_refused_connection_is_no_response(sse_server: SSEServer) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_crawl("PerEvent", args={"url": f"http://127.0.0.1:{port}/prices"})
    assert result.returncode == 0, result.log
    assert [item["error"] for item in result.items] == ["DownloadConnectionRefusedError"]
    assert result.stat("response_received_count") == 0
    assert not any(k.startswith("downloader/response_") for k in result.stats)
    assert result.stat("downloader/exception_count") == 1
    assert result.stat("sse/ends/network_error") == 1
    assert "Crawled (0)" not in result.log


def test_an_item_error_traceback_shows_the_pipeline_not_scrapy_sse(
    sse_server: SSEServer,
) -> None:
    pipelines = {"tests.crawl_main.FailOnEvenPipeline": 50, "tests.crawl_main.RecordPipeline": 100}
    for flow in ("/stream?n=4&delay=0.05", "/stream?n=2000&chunk=0"):  # quiet, then a burst
        result = run_crawl(
            "PerEvent", args={"url": sse_server.url(flow)}, settings={"ITEM_PIPELINES": pipelines}
        )
        assert result.returncode == 0, result.log
        n = 4 if "n=4" in flow else 2000
        assert [item["id"] for item in result.items] == [str(i) for i in range(1, n + 1, 2)]
        assert result.stat("log_count/ERROR") == n // 2
        assert 'File "' in result.log  # (tracebacks are logged)
        assert "crawl_main.py" in result.log
        assert "scrapy_sse" not in "".join(
            line for line in result.log.splitlines() if line.lstrip().startswith('File "')
        )


def test_no_content_ends_quietly(sse_server: SSEServer) -> None:
    result = run_crawl("PerEvent", args={"url": sse_server.url("/nocontent")})
    assert result.returncode == 0, result.log
    assert result.items == []
    assert result.stat("sse/ends/no_content") == 1
    assert "ERROR" not in result.log


def test_redirect_is_followed(sse_server: SSEServer) -> None:
    url = sse_server.url("/redirect?to=/stream%3Fn%3D3&code=307")
    result = run_crawl("PerEvent", args={"url": url})
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == ["1", "2", "3"]
    assert result.items[0]["url"].endswith("/stream?n=3")


def test_malformed_input_gives_exactly_the_spec_events(sse_server: SSEServer) -> None:
    result = run_crawl("PerEvent", args={"url": sse_server.url("/garbage?chunk=3&seed=5")})
    assert result.returncode == 0, result.log
    expected = reference_parse(GARBAGE_BYTES)
    assert len(expected) == 6
    assert [(i["event"], i["data"], i["id"]) for i in result.items] == [
        (e.event, e.data, e.id) for e in expected
    ]
    assert result.stat("sse/incomplete_events_dropped") == 1


def test_event_over_max_size_fails_stream_with_clear_error(sse_server: SSEServer) -> None:
    url = sse_server.url("/stream?n=3&hold=1") + "|" + sse_server.url("/huge?size=300000")
    result = run_crawl("PerEvent", args={"url": url}, settings={"SSE_MAX_EVENT_SIZE": 100_000})
    assert result.returncode == 0, result.log
    errors = [item for item in result.items if "error" in item]
    assert [e["error"] for e in errors] == ["SSEEventTooLarge"]
    assert "SSE_MAX_EVENT_SIZE=100000" in errors[0]["message"]
    assert result.stat("sse/ends/event_too_large") == 1
    assert len([item for item in result.items if "error" not in item]) == 3
    assert "Raise SSE_MAX_EVENT_SIZE" in result.log


def test_gzip_stream_is_decoded_incrementally(sse_server: SSEServer) -> None:
    result = run_crawl("PerEvent", args={"url": sse_server.url("/gzip?n=25&chunk=4")})
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == expected_ids(0, 25)


def test_closing_spider_closes_live_streams_at_once(sse_server: SSEServer) -> None:
    urls = "|".join(sse_server.url(f"/stream?n=5&hold=60&key=shut{i}") for i in range(3))
    result = run_crawl(
        "PerEvent", args={"url": urls}, settings={"CLOSESPIDER_TIMEOUT": 2}, timeout=30
    )
    assert result.returncode == 0, result.log
    assert result.stat("finish_reason") == "closespider_timeout"
    assert result.stat("sse/ends/spider_closed") == 3
    assert len(result.items) == 15
    started, signalled, finished = result.close_times()
    assert started <= signalled <= finished
    assert finished - started <= 1.0, f"closing the spider took {finished - started:.3f} s"


@pytest.mark.parametrize("reactorless", [False, True], ids=["twisted", "aiohttp"])
def test_closing_spider_drops_streams_still_waiting_for_their_server(
    sse_server: SSEServer, reactorless: bool
) -> None:
    # One live stream; one whose server sends no response head for 60 s; one whose
    # 500 error body never ends: all within DOWNLOAD_TIMEOUT, and the close must wait
    # for none of them.
    urls = "|".join(
        sse_server.url(path)
        for path in (
            "/stream?n=5&hold=60",
            "/stall?hold=60",
            f"/status?code=500&body=boom&hold=60&key=closebody{reactorless}",
        )
    )
    result = run_crawl(
        "PerEvent",
        args={"url": urls},
        settings={"CLOSESPIDER_TIMEOUT": 2, "DOWNLOAD_TIMEOUT": 120},
        reactorless=reactorless,
        timeout=40,
    )
    assert result.returncode == 0, result.log
    assert result.stat("finish_reason") == "closespider_timeout"
    assert result.stat("sse/ends/spider_closed") == 1
    assert result.stat("sse/ends/closing") == 2
    assert len(result.items) == 5
    started, signalled, finished = result.close_times()
    assert started <= signalled <= finished
    assert finished - started <= 1.0, f"closing the spider took {finished - started:.3f} s"


def test_slow_pipeline_pauses_the_socket_instead_of_buffering(sse_server: SSEServer) -> None:
    # 100,000 small events sent as fast as possible; the pipeline takes 2 ms per item.
    url = sse_server.url("/stream?n=100000&ascii=1&hold=30&key=slow")
    result = run_crawl(
        "PerEvent",
        args={"url": url},
        settings={"TEST_PIPELINE_DELAY": 0.002, "CLOSESPIDER_TIMEOUT": 3, "SSE_QUEUE_SIZE": 200},
        timeout=40,
    )
    assert result.returncode == 0, result.log
    delivered = len(result.items)
    parsed = result.stat("sse/events")
    assert 100 < delivered < 5000
    # Parsed but undelivered events: at most the queue plus one read's worth.
    assert parsed - delivered <= 200 + 3000
    assert result.stat("sse/backpressure_pauses") >= 1


def test_jobdir_disk_queue_round_trips_stream_requests(sse_server: SSEServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = sse_server.url("/stream?n=4") + "|" + sse_server.url("/stream?n=2&start=10")
    result = run_crawl("PerEvent", args={"url": url}, settings={"JOBDIR": str(tmp_path / "job")})
    assert result.returncode == 0, result.log
    assert result.stat("scheduler/enqueued/disk") == 2
    assert sorted(int(item["id"]) for item in result.items) == [1, 2, 3, 4, 11, 12]


def test_max_streams_queues_extra_streams(sse_server: SSEServer) -> None:
    urls = "|".join(sse_server.url(f"/stream?n=2&hold=0.5&key=cap{i}") for i in range(3))
    result = run_crawl("PerEvent", args={"url": urls}, settings={"SSE_MAX_STREAMS": 1})
    assert result.returncode == 0, result.log
    assert len(result.items) == 6
    arrivals = sorted(
        r.time for r in sse_server.requests if r.query.get("key", "").startswith("cap")
    )
    assert len(arrivals) == 3
    # Each stream opens only after the previous one (held 0.5 s) has ended.
    assert all(b - a >= 0.45 for a, b in itertools.pairwise(arrivals))


def test_plain_requests_use_the_fallback_handler(sse_server: SSEServer) -> None:
    result = run_crawl(
        "Plain",
        args={"url": sse_server.url("/stream?n=2"), "page": sse_server.url("/ctype?body=hello")},
    )
    assert result.returncode == 0, result.log
    kinds = sorted(item["kind"] for item in result.items)
    assert kinds == ["event", "event", "page"]
    page = next(item for item in result.items if item["kind"] == "page")
    assert (page["status"], page["len"]) == (200, 5)


def test_reactorless_mode_streams_through_aiohttp(sse_server: SSEServer) -> None:
    url = sse_server.url("/stream?n=60&chunk=7&hold=30&key=noreactor")
    result = run_crawl(
        "PerEvent", args={"url": url}, reactorless=True, settings={"CLOSESPIDER_ITEMCOUNT": 60}
    )
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == expected_ids(0, 60)
    # Importing the Twisted reactor raises in this mode: only the aiohttp transport can work.
    assert "'TWISTED_REACTOR_ENABLED': False" in result.log
    assert result.stat("sse/ends/spider_closed") == 1


def test_cookies_and_default_headers_are_sent(sse_server: SSEServer) -> None:
    url = sse_server.url("/stream?n=2&key=cookies")
    result = run_crawl(
        "PerEvent",
        args={"url": url, "cookie": "s3cr3t"},
        settings={"DEFAULT_REQUEST_HEADERS": {"X-Team": "prices"}, "USER_AGENT": "ua-test"},
    )
    assert result.returncode == 0, result.log
    assert len(result.items) == 2
    [request] = sse_server.requests_for_key("cookies")
    assert request.headers["cookie"] == "session=s3cr3t"
    assert request.headers["x-team"] == "prices"
    assert request.headers["user-agent"] == "ua-test"


def test_download_maxsize_and_timeout_do_not_cut_a_stream(sse_server: SSEServer) -> None:
    # 60 events of ~1 KiB over ~3 s: past DOWNLOAD_MAXSIZE and past DOWNLOAD_TIMEOUT.
    url = sse_server.url("/stream?n=60&size=1000&delay=0.05&key=limits")
    result = run_crawl(
        "PerEvent",
        args={"url": url},
        settings={"DOWNLOAD_MAXSIZE": 10_000, "DOWNLOAD_WARNSIZE": 5_000, "DOWNLOAD_TIMEOUT": 1},
        timeout=40,
    )
    assert result.returncode == 0, result.log
    assert [item["id"] for item in result.items] == expected_ids(0, 60)
    assert result.stat("sse/ends/server_closed") == 1


def test_download_timeout_bounds_connect_and_headers() -> None:
    # A server that accepts connections and never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/stream"
        result = run_crawl(
            "PerEvent", args={"url": url}, settings={"DOWNLOAD_TIMEOUT": 1}, timeout=30
        )
    assert result.returncode == 0, result.log
    [item] = result.items
    assert item["error"] == "DownloadTimeoutError"
    assert "DOWNLOAD_TIMEOUT bounds connect and headers only" in item["message"]


def test_failed_callbacks_become_dead_letters(sse_server: SSEServer, tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    url = sse_server.url("/stream?n=6&key=deadletters")
    result = run_crawl(
        "FailingCallback",
        args={"url": url},
        settings={"SSE_DEAD_LETTERS": True, "SSE_DEAD_LETTER_PATH": str(path)},
    )
    assert result.returncode == 0, result.log
    letters = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(d["kind"], d["event"]["id"], d["error_type"]) for d in letters] == [
        ("callback_error", "3", "ValueError"),
        ("callback_error", "6", "ValueError"),
    ]
    assert json.loads(letters[0]["event"]["data"])["seq"] == 3
    assert letters[0]["url"].startswith(sse_server.url("/stream"))
    assert result.stat("sse/dead_letters/callback_error") == 2
    assert len([item for item in result.items if "error" not in item]) == 4


@pytest.mark.parametrize(
    ("settings", "ordered"),
    [
        ({}, True),
        ({"SSE_CONCURRENT_ITEMS": 1}, True),
        ({"SSE_ORDERED_ITEMS": False, "SSE_CONCURRENT_ITEMS": 8}, False),
    ],
)
def test_items_of_a_stream_reach_async_pipelines_in_order(
    sse_server: SSEServer, settings: dict[str, object], ordered: bool
) -> None:
    # An async pipeline with random delays: by default (16 items in flight behind an
    # in-order gate) and one at a time, the items of one stream still arrive in order;
    # with Scrapy's worker pool they overtake.
    url = sse_server.url(f"/stream?n=300&chunk=0&key=order{len(settings)}")
    result = run_crawl("PerEvent", args={"url": url}, settings={"TEST_JITTER": True, **settings})
    assert result.returncode == 0, result.log
    ids = [int(item["id"]) for item in result.items]
    assert sorted(ids) == list(range(1, 301))
    assert (ids == sorted(ids)) is ordered


@pytest.mark.parametrize("delay", ["0", "0.002"])
def test_pages_a_stream_leads_to_keep_scrapys_item_concurrency(
    sse_server: SSEServer, delay: str
) -> None:
    # Only a stream's own items pass its in-order gate: the items of pages its callback
    # asks for go through the pipelines side by side, as Scrapy's CONCURRENT_ITEMS says
    # (with a quiet stream and with one whose events queue up).
    url = sse_server.url(f"/stream?n=30&delay={delay}&key=follow{delay}")
    page_url = sse_server.url("/ctype?type=text/html&body=page")
    result = run_crawl(
        "PageFollower",
        args={"url": url, "page_url": page_url},
        settings={"TEST_CONCURRENCY_PROBE": True},
    )
    assert result.returncode == 0, result.log
    stream_ids = [int(item["id"]) for item in result.items if item["kind"] == "stream"]
    assert stream_ids == list(range(1, 31))
    assert len([item for item in result.items if item["kind"] == "page"]) == 6 * 20
    assert result.stat("test/page_items_at_once") > 1


def test_streams_are_never_served_from_the_http_cache(
    sse_server: SSEServer, tmp_path: Path
) -> None:
    url = sse_server.url("/stream?n=3&key=cache")
    settings = {"HTTPCACHE_ENABLED": True, "HTTPCACHE_DIR": str(tmp_path / "cache")}
    for _ in range(2):
        result = run_crawl("PerEvent", args={"url": url}, settings=settings, workdir=tmp_path)
        assert result.returncode == 0, result.log
        assert [item["id"] for item in result.items] == ["1", "2", "3"]
    assert len(sse_server.requests_for_key("cache")) == 2
    assert result.stat("httpcache/hit") == 0


def test_comments_reach_response_readers_who_ask_for_them(sse_server: SSEServer) -> None:
    url = sse_server.url("/stream?n=4&comment_every=2&key=comments")
    result = run_crawl("Comments", args={"url": url}, settings={"SSE_COMMENTS": True})
    assert result.returncode == 0, result.log
    assert [(i["kind"], i["text"] or i["id"]) for i in result.items] == [
        ("SSEEvent", "1"),
        ("SSEEvent", "2"),
        ("SSEComment", "heartbeat"),
        ("SSEEvent", "3"),
        ("SSEEvent", "4"),
        ("SSEComment", "heartbeat"),
    ]
    assert result.stat("sse/comments") == 2


@pytest.mark.parametrize("reactorless", [False, True], ids=["twisted", "aiohttp"])
def test_error_body_kept_open_is_read_until_the_timeout_then_dropped(
    sse_server: SSEServer, reactorless: bool
) -> None:
    # A 500 whose short body never ends: the error still carries what arrived, and the
    # crawl does not wait for the server to let go (it holds the socket for 30 s).
    url = sse_server.url(f"/status?code=500&body=boom&hold=30&key=heldbody{reactorless}")
    result = run_crawl(
        "PerEvent",
        args={"url": url},
        settings={"DOWNLOAD_TIMEOUT": 1},
        reactorless=reactorless,
        timeout=25,
    )
    assert result.returncode == 0, result.log
    [item] = result.items
    assert (item["error"], item["status"], item["body"]) == ("SSEResponseError", 500, "boom")
