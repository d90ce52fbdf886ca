"""Fixtures and helpers for the tests that need PostgreSQL, Redis or ClickHouse.

The sink tests talk to real servers on 127.0.0.1 (a mock would not show COPY's type
rules, a killed backend or ClickHouse's error text). A developer without the servers
still gets a green run: each fixture skips with a one-line reason when its server does
not answer. CI sets ``SCRAPY_SSE_REQUIRE_SERVICES=1``, which turns that skip into a
failure, so a service that silently went missing cannot pass as "all green".

Every test gets its own table, stream key prefix or database (random suffix), and the
fixture removes it afterwards, so tests can run concurrently with other sessions using
the same servers. The helpers are context managers; each test module wraps the ones
it needs in a fixture.

Crawls run as ``python -m scrapy runspider tests/service_spiders.py`` in a child
process (a Twisted reactor cannot be restarted in-process), with output to a file so
a chatty crawl can never block on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from scrapy_sse.secrets import DEFAULT_SECRET_PARAMS

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_ENV = "SCRAPY_SSE_REQUIRE_SERVICES"
POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
CLICKHOUSE_URL = "http://127.0.0.1:8123/"
#: Seconds a reachability probe or a test-side query may take.
PROBE_TIMEOUT = 3.0


def unavailable(reason: str) -> NoReturn:
    """Skip (or, with ``SCRAPY_SSE_REQUIRE_SERVICES=1``, fail) with ``reason``."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def unique_name(prefix: str) -> str:
    """A name no other test (or concurrent session) uses: ``prefix_<12 hex>``."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# --- PostgreSQL --------------------------------------------------------------------


@dataclass
class PostgresTarget:
    """A unique table in database ``test``, and the application name the pipeline uses
    (so a test can find and kill exactly the pipeline's backend, nobody else's)."""

    table: str
    app_name: str

    @property
    def dsn(self) -> str:
        """The DSN to give the pipeline (``SSE_POSTGRES_DSN``)."""
        return f"{POSTGRES_DSN}?application_name={self.app_name}"

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` on a fresh autocommit connection; rows if it returns any."""
        import psycopg

        with psycopg.connect(POSTGRES_DSN, autocommit=True, connect_timeout=3) as conn:
            cur = conn.execute(sql.encode(), params)  # test SQL, built from test names
            return cur.fetchall() if cur.description else []

    def count(self) -> int:
        """Rows in the table (0 while it does not exist yet)."""
        rows = self.query("SELECT to_regclass(%s) IS NOT NULL", (self.table,))
        if not rows[0][0]:
            return 0
        return int(self.query(f'SELECT count(*) FROM "{self.table}"')[0][0])

    def terminate_pipeline(self, wait: bool = False) -> int:
        """Terminate the pipeline's backends (by application name); how many. With
        ``wait``, return only once they are gone (bounded)."""
        rows = self.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (self.app_name,),
        )
        if wait:
            wait_until(lambda: not self.backends(), timeout=10)
        return sum(1 for (ok,) in rows if ok)

    def backends(self) -> int:
        """How many backends the pipeline has open."""
        rows = self.query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (self.app_name,),
        )
        return int(rows[0][0])


@contextlib.contextmanager
def postgres_target() -> Iterator[PostgresTarget]:
    """A :class:`PostgresTarget`; the table is dropped afterwards."""
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed (pip install scrapy-sse[postgres])")
    try:
        with psycopg.connect(POSTGRES_DSN, connect_timeout=int(PROBE_TIMEOUT)) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        unavailable("PostgreSQL not reachable at 127.0.0.1:5432")
    target = PostgresTarget(unique_name("sse_test"), unique_name("sse_app"))
    try:
        yield target
    finally:
        target.terminate_pipeline()
        target.query(f'DROP TABLE IF EXISTS "{target.table}"')


# --- Redis -------------------------------------------------------------------------


@dataclass
class RedisTarget:
    """A unique key prefix (streams and dedup markers) and the client name the pipeline
    sets, so a test kills only the pipeline's connection, not other sessions'."""

    prefix: str
    client_name: str

    @property
    def url(self) -> str:
        """The URL to give the pipeline (``SSE_REDIS_URL``)."""
        return f"{REDIS_URL}?client_name={self.client_name}"

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(REDIS_URL, socket_timeout=PROBE_TIMEOUT, decode_responses=True)

    def entries(self, stream: str) -> list[dict[str, str]]:
        """All fields of all entries of ``stream``, oldest first."""
        with self.client() as client:
            return [fields for _id, fields in client.xrange(stream)]

    def length(self, stream: str) -> int:
        with self.client() as client:
            return int(client.xlen(stream))

    def owned_keys(self) -> list[str]:
        """Keys under this test's prefix (bounded scan)."""
        with self.client() as client:
            return sorted(client.scan_iter(match=f"{self.prefix}*", count=1000))

    def kill_pipeline(self) -> int:
        """Close the pipeline's connections (by client name); how many."""
        with self.client() as client:
            ids = [c["id"] for c in client.client_list() if c.get("name") == self.client_name]
            return sum(int(client.client_kill_filter(_id=i)) for i in ids)


@contextlib.contextmanager
def redis_target() -> Iterator[RedisTarget]:
    """A :class:`RedisTarget`; every key under its prefix is deleted afterwards."""
    try:
        import redis
    except ImportError:
        unavailable("redis is not installed (pip install scrapy-sse[redis])")
    target = RedisTarget(unique_name("sse_test"), unique_name("sse_app"))
    try:
        with target.client() as client:
            client.ping()
    except redis.RedisError:
        unavailable("Redis not reachable at 127.0.0.1:6379")
    try:
        yield target
    finally:
        with target.client() as client:
            for key in target.owned_keys():
                client.delete(key)


# --- ClickHouse --------------------------------------------------------------------


class ClickHouseError(RuntimeError):
    pass


def clickhouse_query(sql: str, body: bytes | None = None, database: str | None = None) -> str:
    """POST ``sql`` (and ``body`` after it) to ClickHouse; the response text."""
    params = {"query": sql} if body is not None else {}
    if database:
        params["database"] = database
    url = CLICKHOUSE_URL + ("?" + urllib.parse.urlencode(params) if params else "")
    data = body if body is not None else sql.encode()
    try:
        with urllib.request.urlopen(url, data=data, timeout=10) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        raise ClickHouseError(exc.read().decode(errors="replace")) from exc


@dataclass
class ClickHouseTarget:
    """A unique database (created here) and a table name inside it."""

    database: str
    table: str = "events"

    def query(self, sql: str) -> str:
        return clickhouse_query(sql, database=self.database)

    def rows(self, order_by: str) -> list[dict[str, Any]]:
        """Every row of the table as dicts, ordered by ``order_by``."""
        text = self.query(f"SELECT * FROM {self.table} ORDER BY {order_by} FORMAT JSONEachRow")
        return [json.loads(line) for line in text.splitlines() if line]

    def count(self) -> int:
        return int(self.query(f"SELECT count() FROM {self.table}").strip())


@contextlib.contextmanager
def clickhouse_target() -> Iterator[ClickHouseTarget]:
    """A :class:`ClickHouseTarget`; its database is dropped afterwards."""
    try:
        with urllib.request.urlopen(CLICKHOUSE_URL + "ping", timeout=PROBE_TIMEOUT) as response:
            response.read()
    except OSError:
        unavailable("ClickHouse not reachable at 127.0.0.1:8123")
    target = ClickHouseTarget(unique_name("sse_test"))
    clickhouse_query(f"CREATE DATABASE {target.database}")
    try:
        yield target
    finally:
        clickhouse_query(f"DROP DATABASE IF EXISTS {target.database}")


# --- crawls ------------------------------------------------------------------------


@dataclass
class Crawl:
    """A ``scrapy runspider`` child process with its output going to a file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def wait(self, timeout: float) -> tuple[int, str]:
        """Wait (bounded) for the crawl to end; its exit code and log. A crawl still
        running at ``timeout`` is killed and reported as a failure."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            code = -9
        return code, self.log_path.read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self.process.poll() is None


def start_crawl(
    url: str,
    pipeline: str,
    settings: dict[str, Any],
    tmp_path: Path,
    *,
    spider: str = "service_spiders.py",
    args: dict[str, str] | None = None,
) -> Crawl:
    """Start a crawl of ``url`` (``|``-separated for several streams) with the add-on
    and ``pipeline`` as the only item pipeline; ``settings`` go on the command line.
    Spill files go under ``tmp_path`` unless ``settings`` say otherwise. ``spider``:
    the spider file under ``tests/``; ``args``: more spider arguments (``-a``)."""
    log_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    settings = {"SSE_SPILL_DIR": str(tmp_path / "spill"), **settings}
    cmd = [
        sys.executable,
        "-m",
        "scrapy",
        "runspider",
        str(ROOT / "tests" / spider),
        "-a",
        f"url={url}",
        "-s",
        'ADDONS={"scrapy_sse.SSEAddon": 500}',
        "-s",
        json.dumps({pipeline: 300}).join(["ITEM_PIPELINES=", ""]),
        "-s",
        "TELNETCONSOLE_ENABLED=False",
        "-s",
        # (The test servers name a scenario's state key=: not a credential here.)
        "SSE_SECRET_PARAMS=" + ",".join(name for name in DEFAULT_SECRET_PARAMS if name != "key"),
        "-s",
        "LOG_LEVEL=INFO",
    ]
    for name, value in settings.items():
        cmd += ["-s", f"{name}={value}"]
    for name, value in (args or {}).items():
        cmd += ["-a", f"{name}={value}"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    log_path = log_dir / "crawl.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, env=env
        )
    return Crawl(process, log_path)


def log_stat(log: str, name: str) -> int:
    """An integer stat from the stats a crawl dumps in its log (0 when absent)."""
    match = re.search(rf"'{re.escape(name)}': (\d+)", log)
    return int(match.group(1)) if match else 0


# --- a TCP proxy that loses one reply ------------------------------------------------


class LoseReplyProxy:
    """A TCP proxy on 127.0.0.1 to a local server that, once :meth:`arm`-ed, lets the
    next client message containing ``trigger`` reach the server, then cuts both
    connections as soon as the server replies (the reply is dropped), or after
    ``hold`` seconds without a reply.

    This is the one failure a retry cannot see through: the server did the write (a
    COMMIT, a script call) and the client only learns that its connection broke. Runs
    in the test's own asyncio loop.
    """

    def __init__(self, target_port: int, trigger: bytes, hold: float = 5.0) -> None:
        self.target_port = target_port
        self.trigger = trigger
        self.hold = hold
        self.port = 0
        self.cuts = 0
        self._armed = False
        self._server: asyncio.Server | None = None

    def arm(self) -> None:
        self._armed = True

    async def __aenter__(self) -> LoseReplyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        cutting = False
        loop = asyncio.get_running_loop()

        def cut() -> None:
            client_w.transport.abort()
            server_w.transport.abort()

        async def upstream() -> None:
            nonlocal cutting
            try:
                while data := await client_r.read(65536):
                    if self._armed and not cutting and self.trigger in data:
                        self._armed = False
                        cutting = True
                        self.cuts += 1
                        loop.call_later(self.hold, cut)
                    server_w.write(data)
                    await server_w.drain()
            finally:
                server_w.close()

        async def downstream() -> None:
            try:
                while data := await server_r.read(65536):
                    if cutting:  # the server has done it: the client must not know
                        cut()
                        return
                    client_w.write(data)
                    await client_w.drain()
            finally:
                client_w.close()

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)
        cut()


def sink_stat(sink: Any, name: str) -> int:
    """A ``sse/sink/<sink name>/<name>`` stat of a pipeline built in-process."""
    assert sink.crawler.stats is not None
    return int(sink.crawler.stats.get_value(f"sse/sink/{sink.name}/{name}", 0))
