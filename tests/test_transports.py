"""TLS, CONNECT proxies and a third-party server (sse-starlette under uvicorn)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from .crawl import run_crawl
from .servers.proxy import ConnectProxy
from .servers.sse_server import SSEServer
from .servers.starlette_app import UvicornServer
from .servers.tls import TemporaryTLS


@pytest.fixture(scope="module")
def tls() -> Iterator[tuple[SSEServer, str]]:
    """An HTTPS server whose certificate chains to a CA no system trusts, and that CA."""
    with TemporaryTLS() as files, SSEServer(ssl_context=files.server_context()) as server:
        yield server, str(files.ca_path)


def ids(result: object) -> list[str]:
    return [item["id"] for item in result.items if "id" in item]  # type: ignore[attr-defined]


TRANSPORTS = pytest.mark.parametrize("reactorless", [False, True], ids=["twisted", "aiohttp"])


@TRANSPORTS
def test_an_untrusted_certificate_is_refused_at_once_with_the_reason(
    tls: tuple[SSEServer, str], reactorless: bool
) -> None:
    server, _ = tls
    key = f"untrusted-{reactorless}"
    url = server.url(f"/stream?n=20&key={key}")
    result = run_crawl("PerEvent", args={"url": url, "reconnect": "1"}, reactorless=reactorless)
    assert result.returncode == 0, result.log[-3000:]
    assert ids(result) == []
    [error] = [item for item in result.items if "error" in item]
    assert error["error"] == "SSEStreamError"
    assert "The TLS certificate of 127.0.0.1 was refused" in error["message"]
    assert "issuer" in error["message"] or "self-signed" in error["message"], error["message"]
    assert result.stat("sse/give_up/tls_error") == 1
    assert not any(name.startswith("sse/reconnects/") for name in result.stats)
    assert server.requests_for_key(key) == []  # (refused in the handshake: no request)


@TRANSPORTS
def test_https_with_its_ca_trusted_or_verification_off(
    tls: tuple[SSEServer, str], reactorless: bool
) -> None:
    server, ca = tls
    url = server.url("/stream?n=20&chunk=9")
    for settings in ({"SSE_TLS_CA_FILE": ca}, {"SSE_TLS_VERIFY": False}):
        result = run_crawl(
            "PerEvent", args={"url": url}, settings=settings, reactorless=reactorless
        )
        assert result.returncode == 0, result.log
        assert ids(result) == [str(i) for i in range(1, 21)], settings


@TRANSPORTS
def test_https_through_connect_proxy_is_verified_too(
    tls: tuple[SSEServer, str], reactorless: bool
) -> None:
    server, ca = tls
    url = server.url("/stream?n=10&key=proxied")
    with ConnectProxy() as proxy:
        refused = run_crawl(
            "PerEvent", args={"url": url, "proxy": proxy.url}, reactorless=reactorless
        )
        trusted = run_crawl(
            "PerEvent",
            args={"url": url, "proxy": proxy.url},
            settings={"SSE_TLS_CA_FILE": ca},
            reactorless=reactorless,
        )
        targets = proxy.connect_targets
    assert ids(refused) == [] and refused.stat("sse/give_up/tls_error") == 1
    assert trusted.returncode == 0, trusted.log
    assert ids(trusted) == [str(i) for i in range(1, 11)]
    host_port = url.split("/")[2]
    assert host_port in targets


def test_plain_http_through_proxy(sse_server: SSEServer) -> None:
    url = sse_server.url("/stream?n=5&key=plainproxy")
    with ConnectProxy() as proxy:
        result = run_crawl("PerEvent", args={"url": url, "proxy": proxy.url})
        records = proxy.records
    assert result.returncode == 0, result.log
    assert ids(result) == ["1", "2", "3", "4", "5"]
    assert records, "the request did not go through the proxy"


@pytest.fixture(scope="module")
def starlette() -> Iterator[UvicornServer]:
    with UvicornServer() as server:
        yield server


@pytest.mark.parametrize("sep", ["crlf", "lf", "cr"])
def test_sse_starlette_stream(starlette: UvicornServer, sep: str) -> None:
    url = starlette.url(f"/stream?n=30&event=update&retry=1500&sep={sep}&done=1&ping=0.2")
    result = run_crawl("PerEvent", args={"url": url})
    assert result.returncode == 0, result.log
    assert ids(result) == [str(i) for i in range(1, 31)]
    assert {item["event"] for item in result.items} == {"update"}
    assert [json.loads(item["data"])["seq"] for item in result.items] == list(range(1, 31))
    assert result.items[0]["retry"] == 1500
    assert result.stat("sse/ends/completed") == 1


@pytest.mark.parametrize("reactorless", [False, True], ids=["twisted", "aiohttp"])
def test_bind_address_is_honoured(sse_server: SSEServer, reactorless: bool) -> None:
    url = sse_server.url(f"/stream?n=2&key=bind{reactorless}")
    result = run_crawl(
        "PerEvent",
        args={"url": url},
        settings={"DOWNLOAD_BIND_ADDRESS": "127.0.0.2"},
        reactorless=reactorless,
    )
    assert result.returncode == 0, result.log
    assert ids(result) == ["1", "2"]
    [request] = sse_server.requests_for_key(f"bind{reactorless}")
    assert request.peer_host == "127.0.0.2"
