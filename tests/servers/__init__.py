"""Local test servers for scrapy-sse: fault-injecting SSE, sse-starlette, proxy, TLS.

Everything binds 127.0.0.1 on an ephemeral port and runs in daemon threads, so tests
can use them from blocking code (Scrapy, Twisted, ``http.client``)::

    from tests.servers import SSEServer

    with SSEServer() as srv:
        url = srv.url("/stream?n=10&drop_at=120&key=t1")

The uvicorn/sse-starlette server lives in :mod:`.starlette_app` and is not imported
here, so using the others does not import (and monkey-patch) uvicorn.  ``SSEServer``
is imported lazily so that ``python -m tests.servers.sse_server`` does not find its
own module already imported (runpy warns about that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .garbage import GARBAGE_BYTES, GARBAGE_EVENTS, GARBAGE_RETRY
from .http_client import RawResponse, fetch
from .http_io import RecordedRequest
from .proxy import ConnectProxy, basic_credentials
from .scenarios import ScenarioState
from .sse_plan import StreamParams, StreamPlan, build_plan, drop_points, plan_from_query
from .sse_reference import ReferenceParser, RefEvent, parse_all
from .tls import TemporaryTLS, TLSFiles, make_tls_files

if TYPE_CHECKING:
    from .sse_server import SSEServer


def __getattr__(name: str) -> Any:
    if name == "SSEServer":
        from .sse_server import SSEServer

        return SSEServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GARBAGE_BYTES",
    "GARBAGE_EVENTS",
    "GARBAGE_RETRY",
    "ConnectProxy",
    "RawResponse",
    "RecordedRequest",
    "RefEvent",
    "ReferenceParser",
    "SSEServer",
    "ScenarioState",
    "StreamParams",
    "StreamPlan",
    "TLSFiles",
    "TemporaryTLS",
    "basic_credentials",
    "build_plan",
    "drop_points",
    "fetch",
    "make_tls_files",
    "parse_all",
    "plan_from_query",
]
