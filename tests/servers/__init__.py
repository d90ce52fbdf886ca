"""Local test servers for scrapy-sse: fault-injecting SSE, sse-starlette, proxy, TLS.

Everything binds 127.0.0.1 on an ephemeral port and runs in daemon threads, so tests
can use them from blocking code (Scrapy, Twisted, ``http.client``)::

    from tests.servers import SSEServer

    with SSEServer() as srv:
        url = srv.url("/stream?n=10&drop_at=120&key=t1")

The uvicorn/sse-starlette server lives in :mod:`.starlette_app` and is not imported
here, so using the others does not import (and monkey-patch) uvicorn.
"""

from .garbage import GARBAGE_BYTES, GARBAGE_EVENTS, GARBAGE_RETRY
from .http_client import RawResponse, fetch
from .http_io import RecordedRequest
from .proxy import ConnectProxy, basic_credentials
from .scenarios import ScenarioState
from .sse_plan import StreamParams, StreamPlan, build_plan, drop_points, plan_from_query
from .sse_reference import ReferenceParser, RefEvent, parse_all
from .sse_server import SSEServer
from .tls import TemporaryTLS, TLSFiles, make_tls_files

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
