"""Prove the test servers do what their scenarios promise, with non-Scrapy clients.

If a scrapy-sse test fails, it must be the client's fault, not the server's: these
tests pin the wire behaviour (exact drop offsets, resume points, framing, gzip,
proxying, TLS) with a raw-socket client and a reference SSE parser.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import zlib
from collections.abc import Iterator

import pytest

from .garbage import GARBAGE_EVENTS, GARBAGE_RETRY
from .http_client import fetch
from .proxy import ConnectProxy, basic_credentials
from .sse_plan import drop_points, plan_from_query
from .sse_reference import parse_all
from .sse_server import SSEServer
from .tls import TemporaryTLS, TLSFiles


@pytest.fixture(scope="module")
def srv() -> Iterator[SSEServer]:
    with SSEServer() as server:
        yield server


@pytest.fixture(scope="module")
def tls_files() -> Iterator[TLSFiles]:
    with TemporaryTLS() as files:
        yield files


def seqs(chunks: list[bytes]) -> list[int]:
    """The ``seq`` of every JSON event in a body (``[DONE]`` skipped)."""
    events, _ = parse_all(chunks)
    return [json.loads(e.data)["seq"] for e in events if e.data != "[DONE]"]


def test_stream_bytes_match_plan_and_chunking(srv: SSEServer) -> None:
    query = "n=5&start=10&chunk=3&crlf=1&event=tick&retry=1000&done=1&bom=1&comment_every=2"
    response = fetch(srv.url(f"/stream?{query}&key=basic"))
    plan = plan_from_query(dict(p.split("=") for p in query.split("&")))
    assert response.status == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.complete
    assert response.body == plan.body
    assert all(1 <= len(c) <= 3 for c in response.chunks)
    events, parser = parse_all(response.chunks)
    assert [e.type for e in events] == ["tick"] * 5 + ["message"]
    assert [json.loads(e.data) for e in events[:-1]] == [
        {"seq": seq, "text": "é€😀"} for seq in range(11, 16)
    ]
    assert events[-1].data == "[DONE]"
    assert parser.retry == 1000
    assert parser.comments.count(" heartbeat") == 2


def test_multiline_cr_size(srv: SSEServer) -> None:
    response = fetch(srv.url("/stream?n=3&cr=1&multiline=1&size=300&key=ml"))
    assert b"\n" not in response.body
    events, _ = parse_all(response.chunks)
    assert len(events) == 3
    for event in events:
        assert "\n" in event.data  # several data: lines, re-joined with LF
        assert 290 <= len(event.data.encode()) <= 300
        assert json.loads(event.data)["seq"] in (1, 2, 3)


def test_last_event_id_resume(srv: SSEServer) -> None:
    response = fetch(srv.url("/stream?n=6&key=resume"), headers={"Last-Event-ID": "3"})
    assert seqs(response.chunks) == [4, 5, 6]
    assert srv.requests_for("/stream")[-1].headers["last-event-id"] == "3"


def test_drops_at_exact_offsets_then_resume(srv: SSEServer) -> None:
    query = {"n": "8", "chunk": "5", "key": "drop-exact"}
    plan = plan_from_query(query)
    euro = plan.event_piece(2).data.index(b"\xe2\x82\xac")
    cut_in_char = plan.event_piece(2).offset + euro + 1  # inside the euro sign
    cut_mid_event = plan.event_piece(5).offset + 7
    cuts = [cut_in_char, cut_mid_event, plan.total]
    url = srv.url("/stream?n=8&chunk=5&key=drop-exact&drop_at=" + ",".join(map(str, cuts)))
    last_id: str | None = None
    received: list[int] = []
    start = 0
    for cut in [*cuts, None]:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        response = fetch(url, headers=headers)
        if cut is None:
            assert response.complete and response.body == b""
            break
        assert not response.complete
        assert response.body == plan.body[start:cut]
        events, parser = parse_all(response.chunks)
        received += [json.loads(e.data)["seq"] for e in events]
        last_id = parser.last_event_id
        start = plan.event_piece(int(last_id) + 1).offset if int(last_id) < 8 else plan.total
    assert received == list(range(1, 9))
    state = srv.state("drop-exact")
    assert state is not None and state.fired == cuts


def test_random_drops_are_reproducible_and_resumable(srv: SSEServer) -> None:
    query = {"n": "30", "drops": "4", "seed": "7", "chunk": "9", "key": "drop-random"}
    url = srv.url("/stream?" + "&".join(f"{k}={v}" for k, v in query.items()))
    expected = drop_points(query, plan_from_query(query))
    assert len(expected) == 4
    last_id, received = "", []
    for _ in range(len(expected) + 1):
        response = fetch(url, headers={"Last-Event-ID": last_id} if last_id else {})
        events, parser = parse_all(response.chunks)
        received += [json.loads(e.data)["seq"] for e in events]
        last_id = parser.last_event_id or last_id
        if response.complete:
            break
    assert received == list(range(1, 31))
    state = srv.state("drop-random")
    assert state is not None and sorted(state.fired) == list(expected)


def test_status_then_stream(srv: SSEServer) -> None:
    url = srv.url("/status?code=503&times=2&retry_after=1&body=busy&key=st&n=2")
    first, second, third = (fetch(url) for _ in range(3))
    assert (first.status, second.status, third.status) == (503, 503, 200)
    assert first.headers["retry-after"] == "1" and first.body == b"busy"
    assert seqs(third.chunks) == [1, 2]


def test_auth_redirect_nocontent_ctype(srv: SSEServer) -> None:
    denied = fetch(srv.url("/auth?token=T&n=2"))
    assert denied.status == 401 and json.loads(denied.body)["error"] == "unauthorized"
    allowed = fetch(srv.url("/auth?token=T&n=2"), headers={"Authorization": "Bearer T"})
    assert seqs(allowed.chunks) == [1, 2]
    redirect = fetch(srv.url("/redirect?to=/stream%3Fn%3D1&code=307"))
    assert (redirect.status, redirect.headers["location"]) == (307, "/stream?n=1")
    absolute = fetch(srv.url("/redirect?to=" + srv.url("/stream")))
    assert absolute.headers["location"] == srv.url("/stream")
    assert fetch(srv.url("/nocontent")).status == 204
    wrong = fetch(srv.url("/ctype?type=text/html"))
    assert wrong.status == 200 and wrong.headers["content-type"] == "text/html"
    assert fetch(srv.url("/nope")).status == 404
    assert fetch(srv.url("/stream?n=abc")).status == 400


def test_garbage_matches_spec(srv: SSEServer) -> None:
    response = fetch(srv.url("/garbage?chunk=2&seed=3"))
    events, parser = parse_all(response.chunks)
    assert [(e.type, e.data, e.last_event_id) for e in events] == list(GARBAGE_EVENTS)
    assert parser.retry == GARBAGE_RETRY


def test_huge_and_gzip(srv: SSEServer) -> None:
    huge = fetch(srv.url("/huge?size=300000"))
    events, _ = parse_all(huge.chunks)
    assert [len(e.data) for e in events] == [300_000]
    gz = fetch(srv.url("/gzip?n=4&key=gz"))
    assert gz.headers["content-encoding"] == "gzip"
    decompressor = zlib.decompressobj(wbits=31)
    # Each HTTP chunk decodes on arrival: the server sync-flushes per event.
    pieces = [decompressor.decompress(chunk) for chunk in gz.chunks]
    assert all(pieces[:4])
    assert b"".join(pieces) == plan_from_query({"n": "4"}).body
    assert decompressor.eof


def test_chat_completions_echo(srv: SSEServer) -> None:
    body = json.dumps({"model": "m", "n": 3, "messages": []}).encode()
    response = fetch(
        srv.url("/v1/chat/completions"),
        method="POST",
        body=body,
        headers={"Authorization": "Bearer sk-test", "Content-Type": "application/json"},
    )
    events, _ = parse_all(response.chunks)
    assert events[-1].data == "[DONE]"
    chunks = [json.loads(e.data) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "tok0 tok1 tok2 "
    echo = chunks[0]["x_echo"]
    assert echo["body"]["n"] == 3 and echo["headers"]["authorization"] == "Bearer sk-test"
    assert srv.requests_for("/v1/chat/completions")[-1].body == body


def test_heartbeat_and_silent(srv: SSEServer) -> None:
    beats = fetch(srv.url("/heartbeat?every=0.05&count=3"))
    _, parser = parse_all(beats.chunks)
    assert parser.comments == [" ping"] * 3 and beats.elapsed >= 0.15
    silent = fetch(srv.url("/silent?after=2&key=sil"), max_time=0.4)
    assert silent.timed_out and seqs(silent.chunks) == [1, 2]


def test_keep_alive_and_request_records(srv: SSEServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        for _ in range(2):
            conn.request("GET", "/stream?n=1&key=ka")
            assert conn.getresponse().read().startswith(b"id: 1\n")
    finally:
        conn.close()
    records = srv.requests_for("/stream")[-2:]
    assert records[0].connection_id == records[1].connection_id
    assert records[0].query == {"n": "1", "key": "ka"} and records[1].time >= records[0].time


def test_shutdown_closes_held_connections() -> None:
    with socket.socket() as sock:
        with SSEServer() as server:
            sock.settimeout(5)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"GET /stream?n=1&hold=30 HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while b"id: 1" not in received and (data := sock.recv(65536)):
                received += data
            assert b"id: 1" in received
            assert server.open_connections == 1
            started = time.monotonic()
        assert sock.recv(65536) == b""  # aborted: EOF without the terminating chunk
        assert time.monotonic() - started < 2


def test_tls_through_connect_proxy(tls_files: TLSFiles) -> None:
    credentials = basic_credentials("user", "pw")
    with (
        SSEServer(ssl_context=tls_files.server_context()) as server,
        ConnectProxy(auth=("user", "pw")) as proxy,
    ):
        conn = http.client.HTTPSConnection(
            "127.0.0.1", proxy.port, context=tls_files.client_context(), timeout=5
        )
        conn.set_tunnel("localhost", server.port, headers={"Proxy-Authorization": credentials})
        try:
            conn.request("GET", "/stream?n=3")
            response = conn.getresponse()
            assert seqs([response.read()]) == [1, 2, 3]
        finally:
            conn.close()
        assert proxy.connect_targets == [f"localhost:{server.port}"]
        assert proxy.proxy_authorizations == [credentials]
        refused = fetch(server.url("/stream"), proxy=("127.0.0.1", proxy.port))
        assert refused.status == 407


def test_plain_http_proxy_forwarding(srv: SSEServer) -> None:
    with ConnectProxy() as proxy:
        response = fetch(srv.url("/stream?n=3&chunk=4&key=px"), proxy=("127.0.0.1", proxy.port))
        assert response.status == 200 and seqs(response.chunks) == [1, 2, 3]
        assert proxy.records[0].target == srv.url("/stream?n=3&chunk=4&key=px")
    forwarded = srv.requests_for("/stream")[-1]
    assert "proxy-authorization" not in forwarded.headers


def test_starlette_drop_and_resume() -> None:
    pytest.importorskip("sse_starlette")
    pytest.importorskip("uvicorn")
    from .starlette_app import UvicornServer

    with UvicornServer() as server:
        url = server.url("/stream?n=5&drop_after=2&key=st&ping=0.1&hold=0.25")
        first = fetch(url)
        assert first.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert not first.complete and seqs(first.chunks) == [1, 2]
        assert b"id: 1\r\ndata: " in first.body  # CRLF separators
        second = fetch(url, headers={"Last-Event-ID": "2"})
        assert second.complete and seqs(second.chunks) == [3, 4, 5]
        _, parser = parse_all(second.chunks)
        assert any(c.startswith(" ping - ") for c in parser.comments)
        state = server.state
        assert state is not None and state.requests[-1].headers["last-event-id"] == "2"
