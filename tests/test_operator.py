"""What an operator reads: failures in their own words, summarised when they repeat,
the recovery once, signals in order, the periodic SSE line, feed exports of batches
and a callback that fails on every event. Real servers, real crawls, captured logs."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

from .crawl import run_crawl
from .servers.sse_server import SSEServer

FAST = {"SSE_RETRY_DELAY": 0.01, "SSE_BACKOFF_MAX": 0.02, "LOG_LEVEL": "DEBUG"}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lines(log: str, pattern: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(pattern, line)]


def test_a_wrong_port_says_connection_refused_once_then_summaries() -> None:
    url = f"http://127.0.0.1:{closed_port()}/prices"
    result = run_crawl(
        "PerEvent", args={"url": url, "reconnect": "1"}, settings={**FAST, "SSE_MAX_RECONNECTS": 20}
    )
    assert result.returncode == 0, result.log[-3000:]
    first = lines(result.log, r"WARNING: SSE stream .* failed: Connection refused; reconnecting")
    again = lines(result.log, r"WARNING: SSE stream .* still failing after (\d+) attempts")
    assert len(first) == 1, result.log[-3000:]
    counts = [int(re.findall(r"after (\d+) attempts", line)[0]) for line in again]
    assert counts == [2, 4, 8, 16]  # 21 attempts, a line at each power of two
    assert lines(result.log, r"INFO: Reconnecting SSE stream") == []
    assert result.stat("sse/failures/connection_refused") == 21
    [give_up] = lines(result.log, r"ERROR: Giving up on SSE stream")
    assert "max_reconnects" in give_up and "Connection refused" in give_up


def test_a_server_that_never_answers_is_a_header_timeout(sse_server: SSEServer) -> None:
    result = run_crawl(
        "PerEvent",
        args={"url": sse_server.url("/stall?hold=10"), "reconnect": "1"},
        settings={**FAST, "DOWNLOAD_TIMEOUT": 0.3, "SSE_MAX_RECONNECTS": 1},
    )
    [first] = lines(result.log, r"WARNING: SSE stream .* failed: ")
    assert "took longer than 0.3 seconds" in first, first
    assert result.stat("sse/failures/header_timeout") == 2


def test_an_error_status_shows_its_body_and_the_recovery_is_logged_once_with_signals(
    sse_server: SSEServer,
) -> None:
    body = '{"error": {"message": "upstream feed unavailable"}}'
    url = sse_server.url(
        f"/status?code=500&times=3&key=recover&ctype=application/json&body={body}"
        "&n=5&done=1&comment_every=2"
    )
    result = run_crawl("Watched", args={"url": url, "reconnect": "1"}, settings=FAST)
    assert result.returncode == 0, result.log[-3000:]
    [first] = lines(result.log, r"WARNING: SSE stream .* failed: HTTP 500")
    assert "upstream feed unavailable" in first
    assert len(lines(result.log, r"still failing after 2 attempts")) == 1
    assert len(lines(result.log, r"INFO: SSE stream .* is open again after 3 failed attempt")) == 1
    assert len(result.items) == 5
    # (A comment handler is connected: comments are no events in the stats.)
    assert result.stat("sse/events") == 5 and result.stat("sse/comments") == 2
    seen = result.extra["signals"]
    kinds = [row["signal"] for row in seen]
    assert kinds[:4] == ["connection_failed"] * 3 + ["stream_opened"], kinds
    assert kinds[-1] == "stream_ended" and kinds.count("stream_ended") == 1
    assert set(kinds[4:-1]) == {"comment_received"}
    failures = seen[:3]
    assert [row["attempt"] for row in failures] == [1, 2, 3]
    assert all(
        row["reason"] == "http_500" and row["retrying"] and not row["has_response"]
        for row in failures
    )
    assert seen[3]["status"] == 200 and seen[3]["content_type"].startswith("text/event-stream")
    assert seen[4]["comment"] == "heartbeat"
    assert seen[-1]["reason"] == "completed" and seen[-1]["events"] == 5


def test_the_periodic_line_reports_what_the_stats_say(sse_server: SSEServer) -> None:
    urls = "|".join(sse_server.url(f"/stream?n=60&delay=0.02&done=1&key=p{i}") for i in range(3))
    result = run_crawl("PerEvent", args={"url": urls}, settings={"SSE_LOGSTATS_INTERVAL": 0.4})
    assert result.returncode == 0, result.log[-3000:]
    found = lines(result.log, r"INFO: SSE: \d+ open stream")
    assert len(found) >= 2, result.log[-3000:]
    busy = [line for line in found if "3 open stream(s)" in line]
    assert busy, found
    rates = [float(re.findall(r"([\d,.]+) events/s", line)[0].replace(",", "")) for line in busy]
    # Three streams at ~50 events/s each (the server paces them; the crawl keeps up).
    assert all(60 <= rate <= 200 for rate in rates), busy
    assert "oldest last event" in busy[0]
    # The events the lines counted add up to what the stats counted at the end.
    counted = sum(
        rate * 0.4
        for rate in (
            float(re.findall(r"([\d,.]+) events/s", line)[0].replace(",", "")) for line in found
        )
    )
    assert 0.6 * 180 <= counted <= 1.4 * 180, (counted, found)
    assert result.stat("sse/events") == 180
    streams = result.stat("sse/now/streams")
    assert streams and {"stream", "events", "last_event_age_s", "id_gaps", "paused_s"} <= set(
        streams[0]
    )


def test_batch_delivery_into_a_feed_export_writes_one_line_per_event(
    sse_server: SSEServer, tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    result = run_crawl(
        "Batches",
        args={"url": sse_server.url("/stream?n=250&done=1"), "callback": "0", "size": "100"},
        settings={"FEEDS": {str(out): {"format": "jsonlines"}}},
    )
    assert result.returncode == 0, result.log[-3000:]
    assert "No adapter found" not in result.log
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [int(row["id"]) for row in rows] == list(range(1, 251))
    assert rows[0]["json"]["seq"] == 1 and rows[0]["event"] == "message"


def test_a_callback_failing_on_every_event_logs_one_traceback_and_summaries(
    sse_server: SSEServer,
) -> None:
    result = run_crawl(
        "FailingCallback",
        args={"url": sse_server.url("/stream?n=300&done=1&ascii=1")},
        settings={"LOG_LEVEL": "INFO"},
    )
    assert result.returncode == 0, result.log[-3000:]
    # (Every third event fails: 100 failures.)
    assert result.stat("sse/callback_errors") == 100
    assert result.log.count("Traceback (most recent call last)") == 1
    again = lines(result.log, r"Spider callback failed again .* \((\d+) times")
    counts = [int(re.findall(r"\((\d+) times", line)[0]) for line in again]
    assert counts == [2, 4, 8, 16, 32, 64]
    # The stream went on: 200 events became items; the errback got each failure.
    assert sum("id" in item for item in result.items) == 200
    assert sum(item.get("error") == "ValueError" for item in result.items) == 100


def test_skipped_integer_ids_are_counted_but_not_timestamps_or_odd_ids(
    sse_server: SSEServer,
) -> None:
    # Resuming after id 2, the server sends 6, 7, 8: ids 3, 4 and 5 were skipped.
    result = run_crawl(
        "PerEvent",
        args={"url": sse_server.url("/stream?start=5&n=3&done=1"), "last_event_id": "2"},
    )
    assert [item["id"] for item in result.items] == ["6", "7", "8"]
    assert result.stat("sse/id_gaps") == 3
    from scrapy import Request

    from scrapy_sse.events import SSEEvent
    from scrapy_sse.stream import SSEStream

    def gaps(ids: list[str], resume: str = "") -> int:
        stream = SSEStream(Request("http://h/"), max_event_size=1000, last_event_id=resume)
        for event_id in ids:
            stream._count_delivered(SSEEvent("message", "x", event_id, None, None, True))
        return stream.id_gaps

    assert gaps(["1714564800050", "1714564800100", "1714564800150"]) == 0  # timestamps
    assert gaps(["1", "2", "²", "9"], resume="²") == 0  # (no crash; not integers)
    assert gaps(["1", "2", "5", "9" * 5000, "9", "10"]) == 2  # (a long id stops the count)


def test_prometheus_serves_the_streams_figures(sse_server: SSEServer) -> None:
    urls = "|".join(
        sse_server.url(f"/stream?n=40&delay=0.02&done=1&ascii=1&key=m{i}") for i in range(2)
    )
    result = run_crawl(
        "Metered",
        args={"url": urls, "at": "30"},
        settings={"SSE_PROMETHEUS_PORT": 0, "SSE_PROMETHEUS_INTERVAL": 0.1},
    )
    assert result.returncode == 0, result.log[-3000:]
    page = result.extra["metrics"]
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line and not line.startswith("#")
    }
    assert values["sse_open_streams"] == 2
    assert 40 <= values["sse_events_total"] <= 80  # (a snapshot of at most 0.1 s before)
    per_stream = {k: v for k, v in values.items() if k.startswith("sse_stream_events_total{")}
    assert len(per_stream) == 2 and all(v >= 20 for v in per_stream.values()), per_stream
    assert any(k.startswith("sse_stream_last_event_age_seconds{") for k in values)
    assert "Serving SSE metrics for Prometheus on http://127.0.0.1:" in result.log
