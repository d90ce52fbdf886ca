"""Reconnection decisions, as pure functions of what happened.

No I/O, no clock, no Scrapy: given how a connection ended and the history of the
logical stream, say whether to reconnect, after how long, or to give up. The random
source and the clock readings are passed in, so every rule is unit-testable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Any

# End reasons: the suffix of the ``sse/ends/<reason>`` stat and what a reconnect
# policy decides on. ``completed`` and ``closed`` are ends a user asked for.
COMPLETED = "completed"  # an SSE_DONE_DATA event
NO_CONTENT = "no_content"  # HTTP 204
SERVER_CLOSED = "server_closed"  # clean end of body
CONNECTION_LOST = "connection_lost"  # the connection broke mid-body
EVENT_TOO_LARGE = "event_too_large"
DECODE_ERROR = "decode_error"
CLOSED = "closed"  # stream.close() from a callback
SPIDER_CLOSED = "spider_closed"
CALLBACK_DONE = "callback_done"  # a response callback returned without draining
RESTART = "restart"  # stream.restart() from a callback: reconnect now
READ_TIMEOUT = "read_timeout"  # nothing received for SSE_READ_TIMEOUT seconds
HTTP_ERROR = "http_error"  # the server answered, but not with a usable stream
NETWORK_ERROR = "network_error"  # no response at all (refused, DNS, TLS, timeout)
CLOSING = "closing"  # refused or dropped before it opened: the spider is closing
HANDED_OVER = "handed_over"  # a cluster worker closed it: another worker holds it now
LLM_ERROR = "llm_error"  # an LLM API's error event mid-stream (overloaded, say)
BAD_HEADERS = "bad_headers"  # a response head too large, or with too many headers
DECOMPRESSION_BOMB = "decompression_bomb"  # a compressed body that expands without bound
TLS_ERROR = "tls_error"  # the server's certificate was refused: final, not a network fault

RECONNECT = "reconnect"
GIVE_UP = "give_up"
STOP = "stop"

#: Ends that a user or the server asked for: never reconnected.
FINAL_ENDS = frozenset({COMPLETED, NO_CONTENT, CLOSED, SPIDER_CLOSED, CALLBACK_DONE, HANDED_OVER})


@dataclass(frozen=True, slots=True)
class PolicySettings:
    retry_delay: float = 1.0  # seconds, when the server sent no retry:
    retry_min: float = 0.25  # the least a server's retry: is taken as
    retry_max: float = 3600.0  # the most
    backoff_max: float = 60.0
    backoff_reset_after: int = 1  # events delivered on one connection
    max_reconnects: int | None = None
    give_up_after: float | None = None  # seconds of failing without delivering


@dataclass(frozen=True, slots=True)
class History:
    """What the reconnect policy remembers about one logical stream.

    Stored in ``request.meta["sse_history"]`` as a plain dict, so it survives
    request serialization (JOBDIR) with the request it belongs to.
    """

    reconnects: int = 0
    failures: int = 0  # consecutive connections that delivered too little
    failing_since: float | None = None  # clock reading of the first of them
    retry_ms: int | None = None  # the server's latest retry:
    auth_refreshed: bool = False  # the previous reconnect followed a 401/403 refresh

    def to_dict(self) -> dict[str, Any]:
        return {
            "reconnects": self.reconnects,
            "failures": self.failures,
            "failing_since": self.failing_since,
            "retry_ms": self.retry_ms,
            "auth_refreshed": self.auth_refreshed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> History:
        if not data:
            return cls()
        return cls(
            reconnects=int(data.get("reconnects", 0)),
            failures=int(data.get("failures", 0)),
            failing_since=data.get("failing_since"),
            retry_ms=data.get("retry_ms"),
            auth_refreshed=bool(data.get("auth_refreshed", False)),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one connection ended, as the policy needs to know it."""

    reason: str  # a stream end reason, or "http_<status>", or "network_error"
    status: int | None = None
    delivered: int = 0  # events handed to the spider on this connection
    retry_ms: int | None = None  # latest retry: seen on this connection
    retry_after: float | None = None  # seconds, from a Retry-After header
    has_auth_hook: bool = False
    opened: bool = False  # the stream began (a 200 event stream), not a failed connect
    resumable: bool = False  # an event id is in effect: Last-Event-ID can resume it
    resend_allowed: bool = True  # a GET (or HEAD) request, or the user opted in
    #: For an LLM completion stream: whether the completion arrived whole (``None``:
    #: not one). A whole one is the stream's end, whatever the connection did next.
    finished: bool | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # RECONNECT, GIVE_UP or STOP
    delay: float = 0.0
    reason: str = ""
    refresh_auth: bool = False
    history: History = field(default_factory=History)


def retry_after(headers: dict[str, str], now_epoch: float) -> float | None:
    """Seconds a refusal asks to wait: ``retry-after-ms`` (what several LLM APIs send,
    more precise) or ``Retry-After``; header names in any case."""
    lowered = {name.lower(): value for name, value in headers.items()}
    millis = lowered.get("retry-after-ms", "").strip()
    try:
        if millis:
            return max(0.0, float(millis) / 1000)
    except ValueError:
        pass
    return parse_retry_after(lowered.get("retry-after"), now_epoch)


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_epoch)


def backoff_delay(settings: PolicySettings, history: History, rng: random.Random) -> float:
    """The wait before the next connection.

    The base is the server's latest ``retry:`` (else ``SSE_RETRY_DELAY``): the spec's
    reconnection time, always honoured, so a server that fails instantly still sees
    at least that gap. Each consecutive failure doubles the ceiling (up to
    ``SSE_BACKOFF_MAX``) and the delay is drawn uniformly between base and ceiling
    (jitter spreads reconnects of many clients after an outage).
    """
    if history.retry_ms is not None:
        # The server's word, within reason: a "retry: 0" is no reconnect storm, and a
        # year is no wait (SSE_RETRY_MIN, SSE_RETRY_MAX).
        milliseconds = min(history.retry_ms, int(settings.retry_max * 1000))
        base = max(milliseconds / 1000, settings.retry_min)
    else:
        base = settings.retry_delay
    if history.failures <= 0:
        return base
    ceiling = min(settings.backoff_max, base * (2 ** min(history.failures, 32)))
    if ceiling <= base:
        return base
    return rng.uniform(base, ceiling)


def decide(
    outcome: Outcome,
    history: History,
    settings: PolicySettings,
    *,
    reconnect_enabled: bool,
    now: float,
    rng: random.Random,
) -> Decision:
    """What to do after one connection of a stream ended."""
    reason = outcome.reason
    if outcome.finished:
        return Decision(STOP, reason=COMPLETED, history=history)
    if reason in FINAL_ENDS:
        return Decision(STOP, reason=reason, history=history)
    if not reconnect_enabled:
        return Decision(GIVE_UP if _is_failure(outcome) else STOP, reason=reason, history=history)
    if (
        outcome.opened
        and not outcome.resumable
        and not outcome.resend_allowed
        and reason != RESTART  # (stream.restart(): the spider asked for it)
    ):
        # A POST stream that ran, without ids: sending it again would not resume it but
        # start a new one (for an LLM API, a second billed completion). A clean end is
        # its end (unless it is a completion cut short); a drop is a failure for the
        # errback.
        if outcome.finished is False:
            return Decision(GIVE_UP, reason="incomplete", history=history)
        if reason == SERVER_CLOSED:
            return Decision(STOP, reason=reason, history=history)
        return Decision(GIVE_UP, reason="not_resendable", history=history)

    status = outcome.status
    if status in (401, 403):
        if not outcome.has_auth_hook:
            return Decision(GIVE_UP, reason=f"http_{status}", history=history)
        if history.auth_refreshed:
            # Refreshed credentials were refused again straight away.
            return Decision(GIVE_UP, reason=f"http_{status}_after_refresh", history=history)
    elif status is not None and 300 <= status < 500 and status != 429:
        # (A 3xx reaches here only when it could not be followed: no Location.)
        return Decision(GIVE_UP, reason=f"http_{status}", history=history)
    elif reason in (
        "bad_content_type",
        "event_too_large",
        "unsupported_encoding",
        TLS_ERROR,
        DECOMPRESSION_BOMB,
        BAD_HEADERS,
    ):
        return Decision(GIVE_UP, reason=reason, history=history)

    retry_ms = outcome.retry_ms if outcome.retry_ms is not None else history.retry_ms
    healthy = outcome.delivered >= max(1, settings.backoff_reset_after)
    if healthy or reason == RESTART:
        failures = 0
        failing_since = None
    else:
        failures = history.failures + 1
        failing_since = history.failing_since if history.failing_since is not None else now
    new = replace(
        history,
        reconnects=history.reconnects + 1,
        failures=failures,
        failing_since=failing_since,
        retry_ms=retry_ms,
        auth_refreshed=status in (401, 403),
    )
    if settings.max_reconnects is not None and history.reconnects >= settings.max_reconnects:
        return Decision(GIVE_UP, reason="max_reconnects", history=history)
    if (
        settings.give_up_after is not None
        and failing_since is not None
        and now - failing_since >= settings.give_up_after
    ):
        return Decision(GIVE_UP, reason="give_up_after", history=history)
    if reason == RESTART:
        delay = 0.0
    else:
        # Delay for this reconnect: the backoff of the failures so far (before this one
        # counts, the first reconnect after a healthy connection waits the base delay).
        delay = backoff_delay(settings, replace(new, failures=max(0, failures - 1)), rng)
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
    return Decision(
        RECONNECT,
        delay=delay,
        reason=reason,
        refresh_auth=status in (401, 403),
        history=new,
    )


def _is_failure(outcome: Outcome) -> bool:
    if outcome.finished is False:
        return True  # a completion cut short, however the connection ended
    return outcome.status is not None or outcome.reason not in ("server_closed",)
