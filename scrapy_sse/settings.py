"""Every ``SSE_*`` setting, its default, and the one place they are read.

Components read an :class:`SSESettings` built once per crawler instead of calling
``settings.get*`` on hot paths. Per-request overrides go through ``meta`` keys named
after the setting in lower case (``meta["sse_queue_size"]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .parser import DEFAULT_MAX_EVENT_SIZE
from .policy import PolicySettings
from .secrets import DEFAULT_SECRET_PARAMS

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.settings import BaseSettings

#: Defaults, with what each one means (the README's settings table mirrors this).
DEFAULTS: dict[str, Any] = {
    # Largest event (or line) in characters; a bigger one ends the stream with an error.
    "SSE_MAX_EVENT_SIZE": DEFAULT_MAX_EVENT_SIZE,
    # Parsed events waiting for the spider; when full, the socket is no longer read.
    "SSE_QUEUE_SIZE": 1000,
    # Data values that end a stream as completed (OpenAI-style sentinels).
    "SSE_DONE_DATA": ["[DONE]"],
    # Most streams open at once in the crawl (0: no limit); extra ones wait.
    "SSE_MAX_STREAMS": 0,
    # Hand comment lines (heartbeats) to response.events consumers as SSEComment.
    "SSE_COMMENTS": False,
    # Per scheme, the handler non-stream requests go to; default: what Scrapy would use.
    "SSE_FALLBACK_HANDLERS": {},
    # Most streams open at once per download slot (meta["download_slot"]); 0: no limit.
    "SSE_MAX_STREAMS_PER_SLOT": 0,
    # Most streams open at once per API key (Authorization, x-api-key, x-goog-api-key,
    # api-key header or ?key=, per host): LLM providers cap open streams per key. 0: none.
    "SSE_MAX_STREAMS_PER_KEY": 0,
    # Seconds without a byte (comments count) before a connection is dropped; 0: never.
    "SSE_READ_TIMEOUT": 300.0,
    # Seconds before reconnecting when the server sent no retry: field.
    "SSE_RETRY_DELAY": 1.0,
    # The range a server's "retry:" is held to, in seconds (no reconnect storm, no
    # year-long wait).
    "SSE_RETRY_MIN": 0.25,
    "SSE_RETRY_MAX": 3600.0,
    # Ceiling of the exponential backoff between consecutive failed connections.
    "SSE_BACKOFF_MAX": 60.0,
    # Events a connection must deliver to count as healthy (resets the backoff).
    "SSE_BACKOFF_RESET_AFTER": 1,
    # Reconnects of one stream before giving up; None: unlimited.
    "SSE_MAX_RECONNECTS": None,
    # Seconds of consecutive failures before giving up; None: never.
    "SSE_GIVE_UP_AFTER": None,
    # Seconds between JOBDIR checkpoints of delivered ids (also written at close).
    "SSE_CHECKPOINT_INTERVAL": 1.0,
    # Items of one stream in flight at once (Scrapy's CONCURRENT_ITEMS, per stream): a
    # task each only while in flight, none while the stream is idle. 1: no task at all.
    "SSE_CONCURRENT_ITEMS": 16,
    # Items of one stream enter the item pipelines strictly in order (each leaves them
    # before the next enters). False: Scrapy's worker pool, slow async pipelines overlap.
    "SSE_ORDERED_ITEMS": True,
    # Seconds a stream callback may wait for its next output before the stream's
    # spider-middleware chain (~13 KiB of suspended generators) is released; a new one
    # is built for its next burst. 0: one chain for the stream's life, as for a page.
    "SSE_RELEASE_IDLE_CHAIN": 1.0,
    # Re-send a POST (any method but GET/HEAD) stream that ended without event ids to
    # resume from: by default it is not (it would start anew: a second LLM completion).
    "SSE_RESEND_POST": False,
    # An LLM completion (meta["sse_llm"]) cut short (a drop, a mid-stream API error) is
    # sent again from scratch up to this many times, its partial answer discarded
    # (each is a new, billed completion). 0: one incomplete LLMCompletion instead.
    "SSE_LLM_RETRIES": 0,
    # Verify the TLS certificates of streams (chain and host); pages keep Scrapy's way.
    "SSE_TLS_VERIFY": True,
    # A PEM bundle of CAs to trust besides the system's (a private CA, tests).
    "SSE_TLS_CA_FILE": None,
    # Query parameters whose values are credentials: masked in items, errors and logs.
    "SSE_SECRET_PARAMS": list(DEFAULT_SECRET_PARAMS),
    # Seconds between the "SSE: n open streams, events/s..." log lines (0: none).
    "SSE_LOGSTATS_INTERVAL": 60.0,
    # Port of an HTTP endpoint serving stream metrics to Prometheus (None: none; 0: any
    # free port), its host, and seconds between the snapshots it serves.
    "SSE_PROMETHEUS_PORT": None,
    "SSE_PROMETHEUS_HOST": "127.0.0.1",
    "SSE_PROMETHEUS_INTERVAL": 5.0,
    # Record events whose callback raised, and items pipelines dropped, as dead letters.
    "SSE_DEAD_LETTERS": False,
    # Redis URL of the cluster this crawl is a worker of (None: a crawl on its own).
    "SSE_CLUSTER_URL": None,
    # Name of the cluster (workers with the same name share streams); "": the spider's.
    "SSE_CLUSTER_NAME": "",
    # Seconds a worker's lease on a stream lasts unless renewed (every TTL / 3).
    "SSE_LEASE_TTL": 10.0,
    # This worker's share of the cluster's streams, relative to the other workers'.
    "SSE_CLUSTER_WEIGHT": 1.0,
}


@dataclass(frozen=True, slots=True)
class SSESettings:
    max_event_size: int
    queue_size: int
    done_data: tuple[str, ...]
    max_streams: int
    max_streams_per_slot: int
    max_streams_per_key: int
    comments: bool
    read_timeout: float
    retry_delay: float
    retry_min: float
    retry_max: float
    backoff_max: float
    backoff_reset_after: int
    max_reconnects: int | None
    give_up_after: float | None
    checkpoint_interval: float
    concurrent_items: int
    ordered_items: bool
    release_idle_chain: float
    dead_letters: bool
    resend_post: bool
    tls_verify: bool
    tls_ca_file: str | None
    secret_params: tuple[str, ...]
    llm_retries: int

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> SSESettings:
        def get(name: str) -> Any:
            value = settings.get(name)
            return DEFAULTS[name] if value is None else value

        return cls(
            max_event_size=int(get("SSE_MAX_EVENT_SIZE")),
            queue_size=int(get("SSE_QUEUE_SIZE")),
            done_data=tuple(settings.getlist("SSE_DONE_DATA", DEFAULTS["SSE_DONE_DATA"])),
            max_streams=int(get("SSE_MAX_STREAMS")),
            max_streams_per_slot=int(get("SSE_MAX_STREAMS_PER_SLOT")),
            max_streams_per_key=int(get("SSE_MAX_STREAMS_PER_KEY")),
            comments=bool(settings.getbool("SSE_COMMENTS", DEFAULTS["SSE_COMMENTS"])),
            read_timeout=float(get("SSE_READ_TIMEOUT")),
            retry_delay=float(get("SSE_RETRY_DELAY")),
            retry_min=float(get("SSE_RETRY_MIN")),
            retry_max=float(get("SSE_RETRY_MAX")),
            backoff_max=float(get("SSE_BACKOFF_MAX")),
            backoff_reset_after=int(get("SSE_BACKOFF_RESET_AFTER")),
            max_reconnects=_optional(settings.get("SSE_MAX_RECONNECTS"), int),
            give_up_after=_optional(settings.get("SSE_GIVE_UP_AFTER"), float),
            checkpoint_interval=float(get("SSE_CHECKPOINT_INTERVAL")),
            concurrent_items=int(get("SSE_CONCURRENT_ITEMS")),
            ordered_items=settings.getbool("SSE_ORDERED_ITEMS", DEFAULTS["SSE_ORDERED_ITEMS"]),
            release_idle_chain=float(get("SSE_RELEASE_IDLE_CHAIN")),
            dead_letters=settings.getbool("SSE_DEAD_LETTERS", DEFAULTS["SSE_DEAD_LETTERS"]),
            resend_post=settings.getbool("SSE_RESEND_POST", DEFAULTS["SSE_RESEND_POST"]),
            tls_verify=verify_wanted(settings.get("SSE_TLS_VERIFY", True)),
            tls_ca_file=settings.get("SSE_TLS_CA_FILE") or None,
            secret_params=tuple(
                settings.getlist("SSE_SECRET_PARAMS", DEFAULTS["SSE_SECRET_PARAMS"])
            ),
            llm_retries=int(get("SSE_LLM_RETRIES")),
        )

    def policy(self, request: Request) -> PolicySettings:
        """Reconnect settings for one request (``meta["sse_<name>"]`` overrides)."""
        return PolicySettings(
            retry_delay=float(self.for_request(request, "retry_delay")),
            retry_min=float(self.for_request(request, "retry_min")),
            retry_max=float(self.for_request(request, "retry_max")),
            backoff_max=float(self.for_request(request, "backoff_max")),
            backoff_reset_after=int(self.for_request(request, "backoff_reset_after")),
            max_reconnects=_optional(self.for_request(request, "max_reconnects"), int),
            give_up_after=_optional(self.for_request(request, "give_up_after"), float),
        )

    def for_request(self, request: Request, name: str) -> Any:
        """The value for one request: ``meta["sse_<name>"]`` wins over the setting."""
        return request.meta.get(f"sse_{name}", getattr(self, name))


def _optional(value: Any, kind: type[Any]) -> Any:
    """``None`` and ``""`` mean "no limit" (a setting given as ``-s X=`` on the CLI)."""
    return None if value in (None, "") else kind(value)


def meta_flag(value: Any) -> bool:
    """A flag from ``meta`` read as Scrapy's ``getbool`` reads settings (``"0"``,
    ``"false"`` are false)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def verify_wanted(value: object) -> bool:
    """Whether a stream's certificate must be verified, given ``SSE_TLS_VERIFY`` or
    ``meta["sse_tls_verify"]``: only an explicit no turns it off (``False``, ``0``,
    ``"false"``, ``"no"``, ``"off"``); anything else, a typo included, keeps it on."""
    if value is False or value == 0:
        return False
    return not (isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"))
