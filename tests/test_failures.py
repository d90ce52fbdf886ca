"""Failure causes in their own words (whatever wraps them) and which repeats are logged."""

from __future__ import annotations

import errno
import ssl

from OpenSSL import SSL
from scrapy.exceptions import CannotResolveHostError, DownloadConnectionRefusedError
from twisted.internet.error import ConnectionRefusedError as TxRefused
from twisted.internet.error import DNSLookupError
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived

from scrapy_sse.errors import SSEResponseError
from scrapy_sse.failures import FailureLog, cause


def wrapped(outer: type[BaseException], inner: BaseException) -> BaseException:
    """``outer`` raised ``from inner``, as Scrapy's download handlers wrap errors."""
    try:
        raise outer("wrapped") from inner
    except outer as exc:
        return exc


def test_causes_are_named_by_what_failed_not_by_the_wrapper() -> None:
    assert cause(wrapped(DownloadConnectionRefusedError, TxRefused()), "network_error") == (
        "connection_refused",
        "Connection refused",
    )
    # aiohttp's connector errors all come wrapped as "refused": the cause decides.
    unreachable = OSError(errno.ENETUNREACH, "Network is unreachable")
    assert cause(wrapped(DownloadConnectionRefusedError, unreachable), "network_error") == (
        "network_error",
        "Network is unreachable",
    )
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    kind, text = cause(wrapped(DownloadConnectionRefusedError, verify), "network_error")
    assert kind == "tls" and "unable to get local issuer certificate" in text
    tx_tls = ResponseNeverReceived(
        [Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))]
    )
    assert cause(tx_tls, "network_error")[0] == "tls"
    kind, text = cause(wrapped(CannotResolveHostError, DNSLookupError("no-such.invalid")), "x")
    assert kind == "dns" and text.count("DNS lookup failed") == 1 and "no-such.invalid" in text
    body = b'{"error": {"message": "upstream down"}}' + b"x" * 500
    kind, text = cause(SSEResponseError("http://h/s", 500, "application/json", body), "x")
    assert kind == "http_500" and "upstream down" in text and len(text) < 230


def test_an_episode_ends_when_events_flow_and_kinds_are_limited_apart() -> None:
    meta: dict[str, object] = {}
    log = FailureLog(meta)
    assert [log.failed("connection_refused", t, 0)[:2] for t in (0, 1, 2)] == [
        (True, 1),
        (True, 2),
        (False, 3),
    ]
    assert log.opened(3) == (3, 3)
    assert log.opened(4) is None  # (announced once)
    log.clear()  # an hour of events
    assert log.failed("connection_refused", 3600, 0)[:2] == (True, 1)  # a new first failure
    # Two kinds taking turns: each is summarised on its own schedule.
    lines = [
        log.failed(kind, 3601 + i, 0)[0] for i, kind in enumerate(["http_502", "http_503"] * 4)
    ]
    assert lines == [True, True, True, True, False, False, True, True]
