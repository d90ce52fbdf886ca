"""Why a stream's connection failed, in the words of the failure, and how often to say so.

A wrong port, a dead DNS name, a certificate the server's name does not match, a server
that never sends its headers and a permanent ``HTTP 500`` all end a connection; to an
operator they are different problems. :func:`cause` turns the error the transport
raised (Twisted's or aiohttp's, unwrapped from the wrappers they come in) into a short
kind, which stats and the log summary count by, and the sentence the OS or the server
used (``Connection refused``, the first bytes of a 500's body).

:class:`FailureLog` decides which failures are worth a log line: the first of each kind
on a stream (a WARNING), then repeats at growing intervals (after 2, 4, 8, ...
attempts, one line that says how many and for how long), and the recovery once. Its
state is a small dict in the request's ``meta``, so it follows the stream from one
reconnect to the next (and through ``JOBDIR``).
"""

from __future__ import annotations

import errno
import ssl
from typing import Any

from .errors import SSEResponseError, SSEStreamError

#: Characters of an error body quoted in a log line (the error keeps a KiB).
BODY_QUOTE = 200


def _unwrap(error: BaseException) -> BaseException:
    """The innermost meaningful error: Scrapy's download errors wrap the transport's
    (as ``__cause__``), Twisted's ``ResponseNeverReceived`` and friends carry a list of
    failures, aiohttp's connector errors carry the OS's."""
    for _ in range(8):
        cause = error.__cause__
        if type(error).__module__.startswith("scrapy.") and isinstance(cause, BaseException):
            error = cause
            continue
        reasons = getattr(error, "reasons", None)
        if reasons:
            inner = getattr(reasons[0], "value", reasons[0])
            if isinstance(inner, BaseException):
                error = inner
                continue
        os_error = getattr(error, "os_error", None)
        if isinstance(os_error, BaseException) and not _named(
            error, "ClientConnectorCertificateError", "ClientConnectorSSLError"
        ):
            error = os_error
            continue
        break
    return error


def _named(error: BaseException, *names: str) -> bool:
    """Whether ``error`` is an instance of a class (or base class) with one of ``names``
    (Twisted's and aiohttp's errors, without importing either here)."""
    return any(cls.__name__ in names for cls in type(error).__mro__)


def cause(error: BaseException | None, reason: str) -> tuple[str, str]:
    """``(kind, sentence)``: why a connection failed. ``reason`` is the stream's end
    reason, used when there is no error object (a clean close, say)."""
    if error is None:
        return reason, reason.replace("_", " ")
    if isinstance(error, SSEResponseError):
        body = error.body.decode("utf-8", "replace").strip()
        quoted = (body[:BODY_QUOTE] + "...") if len(body) > BODY_QUOTE else body
        if error.status == 200:
            return (
                "bad_content_type",
                f"Content-Type {error.content_type or '(none)'!r}, not text/event-stream",
            )
        return f"http_{error.status}", f"HTTP {error.status}" + (f": {quoted}" if quoted else "")
    if _named(error, "DownloadTimeoutError"):  # (its own message says it all)
        return "header_timeout", str(error)
    inner = _unwrap(error)
    if (
        isinstance(inner, ssl.SSLError)
        or type(inner).__module__.startswith(("OpenSSL", "service_identity"))
        or _named(inner, "ClientSSLError", "ClientConnectorCertificateError", "VerificationError")
    ):
        return "tls", f"TLS error: {getattr(inner, 'verify_message', None) or inner}"
    if _named(inner, "ConnectionRefusedError") or getattr(inner, "errno", None) == (
        errno.ECONNREFUSED
    ):
        return "connection_refused", "Connection refused"
    if _named(
        inner, "DNSLookupError", "gaierror", "ClientConnectorDNSError", "CannotResolveHostError"
    ):
        text = str(inner)
        return "dns", text if "dns" in text.lower() else f"DNS lookup failed: {text}"
    if _named(inner, "DownloadTimeoutError"):
        return "header_timeout", str(inner)
    if _named(inner, "TCPTimedOutError", "TimeoutError", "ConnectTimeoutError"):
        return "connect_timeout", f"Connect timeout ({inner})" if str(inner) else "Connect timeout"
    if isinstance(inner, SSEStreamError):
        return inner.reason or reason, str(inner)
    text = getattr(inner, "strerror", None) or str(inner) or type(inner).__name__
    return reason, str(text)


class FailureLog:
    """What to log about one stream's failed connections (state in ``meta``).

    An *episode* is a run of failures with no event delivered in between (it ends when
    a connection delivers events, see :meth:`clear`). In it, the first failure of each
    kind is logged, then that kind's 2nd, 4th, 8th... as summaries (kinds that take
    turns, 502 and 503 say, are each limited), and the first connection that opens
    after failures is announced once.
    """

    KEY = "sse_failing"

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def failed(self, kind: str, now: float, delivered: int) -> tuple[bool, int, float]:
        """Record one failure; ``(worth a line, failures of this kind in the episode,
        seconds since the episode began)``. A connection that delivered events before
        failing begins a new episode."""
        state = self.meta.get(self.KEY)
        if not state or delivered:
            state = self.meta[self.KEY] = {"since": now, "opened": False, "kinds": {}}
        kinds = state["kinds"]
        count = kinds[kind] = int(kinds.get(kind, 0)) + 1
        return count & (count - 1) == 0, count, now - float(state["since"])

    def opened(self, now: float) -> tuple[int, float] | None:
        """A connection opened: ``(failures, seconds failing)`` the first time one does
        after failures (to announce once), else ``None``."""
        state = self.meta.get(self.KEY)
        if not state or state.get("opened"):
            return None
        state["opened"] = True
        return sum(state["kinds"].values()), now - float(state["since"])

    def clear(self) -> None:
        """A connection delivered events: the episode, if any, is over."""
        self.meta.pop(self.KEY, None)
