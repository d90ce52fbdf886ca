"""Many open streams, and event latency: ``python benchmarks/streams_load.py``.

Two measurements the throughput benchmark (``run.py``) does not cover:

* ``many``: N concurrently open streams in one crawl (heartbeat comments on all of
  them, a fraction also carrying events), reporting resident memory per open stream
  above the idle crawler and the events each hot stream received (starvation shows as
  a low minimum).
  ``--trace`` also attributes the memory: ``tracemalloc`` snapshots before the crawl
  and once every stream is open, printed as bytes per stream by component and by
  allocating line (tracing slows the crawl several times, so its RSS figure is not
  the one to quote).
* ``latency``: one stream at a fixed event rate in per-event mode; each event carries
  the server's send time, the item pipeline records the difference on arrival, and the
  p50/p99/max are printed.

The server is a separate process (asyncio, raw HTTP/1.1) so it never competes with the
crawler for the GIL. Everything is bounded in time; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def raise_nofile(wanted: int) -> int:
    """Raise the open-file limit as far as allowed; return the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(max(soft, wanted), hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# -- server (child process) ---------------------------------------------------------


async def _serve(port: int, heartbeat: float, rate: float, life: float) -> None:
    loop = asyncio.get_running_loop()
    # Hot streams are written by one task, in up to ten phases (each stream in one), not
    # by a sleeping task per stream: 1,000 streams at 20 events/s would be 20,000 task
    # wake-ups a second, and the server, not the crawler, would be what is measured.
    phases = max(1, min(10, int(1000 / rate)))
    hot: list[dict[asyncio.StreamWriter, int]] = [{} for _ in range(phases)]
    joined = 0

    async def send_events() -> None:
        start = loop.time()
        tick = 0
        while True:
            tick += 1
            await asyncio.sleep(max(0.0, start + tick / (rate * phases) - loop.time()))
            sent = time.time()
            writers = hot[tick % phases]
            for writer, seq in writers.items():
                # A client that stopped reading gets no more (bounded server memory).
                if writer.transport.get_write_buffer_size() < 4 << 20:
                    writers[writer] = n = seq + 1
                    writer.write(b'id: %d\ndata: {"seq": %d, "sent": %.6f}\n\n' % (n, n, sent))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal joined
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
            )
            if b" /hot" in head.split(b"\r\n", 1)[0]:
                hot[joined % phases][writer] = 0
                joined += 1
            end = loop.time() + life
            while loop.time() < end:
                await asyncio.sleep(min(heartbeat, max(0.0, end - loop.time())))
                writer.write(b": heartbeat\n\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for writers in hot:
                writers.pop(writer, None)
            writer.close()

    sender = asyncio.create_task(send_events())
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await asyncio.sleep(life + 30)
    sender.cancel()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(heartbeat: float, rate: float, life: float) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "_server", str(port), str(heartbeat), str(rate), str(life)]
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("benchmark server did not start")


# -- crawls (child process) ------------------------------------------------------------


def _crawl(config: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    import scrapy
    from scrapy import signals
    from scrapy.crawler import CrawlerProcess
    from scrapy.utils.asyncio import create_looping_call

    from scrapy_sse import SSEEvent, SSERequest
    from scrapy_sse.extension import sse_state

    nofile = raise_nofile(config["streams"] + 1000)
    received: dict[int, int] = {}
    # When each stream's response arrived (the stream opened), and when the crawl ended:
    # starvation is judged on the rate a hot stream got while it was open, not on a
    # count that also reflects how late it was opened.
    opened_at: dict[int, float] = {}
    ended_at: list[float] = []
    closing_at: list[float] = []  # when the spider began closing (to the second)
    latencies: list[float] = []
    record_latency = config.get("record_latency", False)
    # (seconds since start, streams opened, RSS, events queued in all streams)
    samples: list[tuple[float, int, int, int]] = []
    trace_frames = config.get("trace", 0)
    profile: dict[str, Any] = {}

    class Record:
        def process_item(self, item: dict[str, Any]) -> dict[str, Any]:
            sent = item.get("sent")
            # Only the latency mode keeps them: in ``many`` a list of every event's
            # latency would be counted as stream memory (about 32 bytes an event).
            if sent is not None and record_latency:
                latencies.append(time.time() - sent)
            received[item["stream"]] = received.get(item["stream"], 0) + item.get("count", 1)
            return item

    class LoadSpider(scrapy.Spider):
        name = "load"

        async def start(self) -> Any:
            for i in range(config["streams"]):
                # Idle streams first: Scrapy takes one start request per reactor
                # iteration, and busy hot streams make iterations long.
                path = "hot" if i >= config["streams"] - config["hot"] else "idle"
                batch = config.get("batch") or 0
                yield SSERequest(
                    f"http://127.0.0.1:{config['port']}/{path}?s={i}",
                    callback=self.parse_batch if batch else self.parse_event,
                    cb_kwargs={"stream": i},
                    reconnect=False,
                    batch_size=batch or None,
                    batch_interval=1.0,
                )

        def parse_event(self, event: SSEEvent, stream: int) -> dict[str, Any]:
            return {"stream": stream, "sent": json.loads(event.data)["sent"]}

        def parse_batch(self, batch: list[SSEEvent], stream: int) -> dict[str, Any]:
            return {"stream": stream, "count": len(batch), "sent": None}

    settings = {
        "ADDONS": {"scrapy_sse.SSEAddon": 500},
        "ITEM_PIPELINES": {Record: 100},
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
        "REMOTE_CONTROL_ENABLED": False,
        "CLOSESPIDER_TIMEOUT": config["seconds"],
        "CONCURRENT_REQUESTS": 1000,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 1000,
        "CONCURRENT_ITEMS": config["concurrent_items"],
        **(
            {"SSE_CONCURRENT_ITEMS": config["sse_concurrent_items"]}
            if config.get("sse_concurrent_items")
            else {}
        ),
        # Each open response is charged 1 KiB in the scraper slot: make room.
        "SCRAPER_SLOT_MAX_ACTIVE_SIZE": 5_000_000 + 1024 * config["streams"],
        "DOWNLOAD_TIMEOUT": 120,
        **config.get("settings", {}),
    }
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(LoadSpider)
    timers: list[Any] = []
    started = time.monotonic()

    def sample() -> None:
        assert crawler.stats is not None
        opened = crawler.stats.get_value("sse/streams_opened", 0)
        registry = sse_state(crawler).registry
        queued = sum(stream.queued for stream in registry.streams)
        if registry.closing and not closing_at:
            closing_at.append(time.monotonic())
        samples.append((time.monotonic() - started, opened, rss_bytes(), queued))
        if trace_frames and opened >= config["streams"] and "text" not in profile:
            # Three samples after the last stream opened: its set-up has settled.
            profile["settled"] = profile.get("settled", 0) + 1
            if profile["settled"] == 3:
                profile["text"] = attribute(base_snapshot, tracemalloc.take_snapshot(), opened)

    def engine_started() -> None:
        timer = create_looping_call(sample)
        timers.append(timer)
        timer.start(1.0)

    def response_received(response: Any, request: Any, spider: Any) -> None:
        stream = request.cb_kwargs.get("stream")
        if stream is not None:
            opened_at.setdefault(stream, time.monotonic())

    def spider_closed() -> None:
        ended_at.append(time.monotonic())

    crawler.signals.connect(engine_started, signal=signals.engine_started)
    crawler.signals.connect(response_received, signal=signals.response_received)
    crawler.signals.connect(spider_closed, signal=signals.spider_closed)
    if trace_frames:
        tracemalloc.start(trace_frames)
    base_snapshot = tracemalloc.take_snapshot() if trace_frames else None
    baseline = rss_bytes()
    process.crawl(crawler)
    process.start()
    top = max(samples, key=lambda s: (s[1], -s[0])) if samples else (0, 0, baseline, 0)
    settled = [s for s in samples if s[1] == top[1]]
    peak = max(settled, key=lambda s: s[2]) if settled else top
    hot = range(config["streams"] - config["hot"], config["streams"])
    hot_counts = [received.get(i, 0) for i in hot]
    ended = ended_at[0] if ended_at else time.monotonic()
    end = closing_at[0] if closing_at else ended
    # (seconds open, events received) of each hot stream that opened.
    hot_open = [(end - opened_at[i], received.get(i, 0)) for i in hot if i in opened_at]
    return {
        "nofile": nofile,
        "opened": top[1],
        "seconds_to_open": top[0],
        "rss_idle": baseline,
        "rss_open": peak[2],
        "queued_max": max((s[3] for s in settled), default=0),
        "profile": profile.get("text"),
        "hot_min": min(hot_counts) if hot_counts else None,
        "hot_max": max(hot_counts) if hot_counts else None,
        "hot_open": hot_open,
        "crawl_seconds": end - started,
        "close_seconds": ended - end,
        "latencies": latencies,
    }


#: (label, path prefixes) of the parts an open stream's memory is attributed to, in the
#: order they are tried; an allocation counts for the first frame (innermost first)
#: outside the standard library, so asyncio's weak set of async generators is charged
#: to whoever made the generator.
_PARTS = (
    (
        "Scrapy spider-middleware output chain",
        (
            "scrapy/core/spidermw.py",
            "scrapy/utils/decorators.py",
            "scrapy/utils/python.py",
            "scrapy/spidermiddlewares/",
            "scrapy/utils/asyncgen.py",
        ),
    ),
    (
        "Scrapy engine and scraper (request in flight)",
        (
            "scrapy/core/",
            "scrapy/utils/defer.py",
            "scrapy/utils/reactor.py",
            "twisted/internet/defer.py",
            "twisted/internet/asyncioreactor.py",
        ),
    ),
    ("Twisted HTTP/1.1 connection", ("twisted/", "attr/")),
    (
        "Scrapy requests, response, headers, caches",
        ("scrapy/http/", "scrapy/utils/", "w3lib/"),
    ),
    ("scrapy_sse", ("scrapy_sse/",)),
)
_STDLIB = (
    "_weakrefset",
    "weakref.py",
    "asyncio/",
    "<frozen",
    "contextlib",
    "functools",
    "abc.py",
    "typing",
    "collections/",
    "selectors",
    "socket.py",
    "codecs",
    "encodings/",
    "urllib/",
    "copy.py",
    "<string>",
)


def _short(filename: str) -> str:
    for marker in ("site-packages/", "python3.11/", "python3.12/", "python3.13/", f"{ROOT}/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def attribute(before: Any, after: Any, streams: int) -> str:
    """Bytes per stream allocated between two tracemalloc snapshots, by part and line."""
    ignore = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
        tracemalloc.Filter(False, "*linecache.py"),
    ]
    stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "traceback")
    parts: dict[str, int] = {}
    lines: dict[str, list[int]] = {}
    for stat in stats:
        frames = list(reversed(list(stat.traceback)))  # innermost first
        where = next((f for f in frames if not _short(f.filename).startswith(_STDLIB)), frames[0])
        name = _short(where.filename)
        part = next(
            (label for label, prefixes in _PARTS if name.startswith(prefixes)),
            "other (imports and one-off set-up, divided by N)",
        )
        parts[part] = parts.get(part, 0) + stat.size_diff
        line = lines.setdefault(f"{name}:{where.lineno}", [0, 0])
        line[0] += stat.size_diff
        line[1] += stat.count_diff
    out = ["| part | bytes per stream |", "|---|---|"]
    for part, size in sorted(parts.items(), key=lambda item: -item[1]):
        out.append(f"| {part} | {size / streams:.0f} |")
    out.append(f"| total | {sum(parts.values()) / streams:.0f} |")
    out += ["", "| allocating line (first outside the stdlib) | bytes | blocks |", "|---|---|---|"]
    for name, (size, count) in sorted(lines.items(), key=lambda item: -item[1][0])[:30]:
        out.append(f"| {name} | {size / streams:.0f} | {count / streams:.1f} |")
    return "\n".join(out)


def run_crawl(config: dict[str, Any]) -> dict[str, Any]:
    # Tracing makes everything several times slower, the snapshot comparison included.
    slack = 900 if config.get("trace") else 120
    proc = subprocess.run(
        [sys.executable, __file__, "_crawl"],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=config["seconds"] + slack,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"crawl failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def many(args: argparse.Namespace) -> None:
    proc, port = start_server(args.heartbeat, args.rate, args.seconds + 60)
    try:
        result = run_crawl(
            {
                "port": port,
                "streams": args.streams,
                "hot": args.hot,
                "seconds": args.seconds,
                "concurrent_items": args.concurrent_items,
                "sse_concurrent_items": args.sse_concurrent_items,
                "settings": dict(item.split("=", 1) for item in args.set),
                "batch": args.batch,
                "trace": args.trace,
            }
        )
    finally:
        proc.kill()
    per_stream = (result["rss_open"] - result["rss_idle"]) / max(1, result["opened"])
    print(
        "| streams asked | opened | open after s | RSS idle MB | RSS open MB | KiB/stream "
        "| hot streams | min/max events per hot stream | open-file limit |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.streams} | {result['opened']} | {result['seconds_to_open']:.0f} "
        f"| {result['rss_idle'] / 1e6:.0f} | {result['rss_open'] / 1e6:.0f} "
        f"| {per_stream / 1024:.1f} | {args.hot} | {result['hot_min']}/{result['hot_max']} "
        f"| {result['nofile']} |"
    )
    # A hot stream open for a while must have received events at about the server's
    # rate; a batch may still wait up to its 1 s interval, hence the margin. Streams
    # opened in the last seconds may still lag while the crawl opens the rest, so the
    # rates are given for two windows.
    print(f"\nHot streams opened: {len(result['hot_open'])} of {args.hot}.")
    for window in (10, 30):
        settled = [(seconds, count) for seconds, count in result["hot_open"] if seconds >= window]
        rates = sorted(count / seconds for seconds, count in settled)
        spread = (
            f"min {rates[0]:.1f}, median {percentile(rates, 0.5):.1f}, max {rates[-1]:.1f}; "
            f"under half the rate: {sum(rate < args.rate / 2 for rate in rates)}"
            if rates
            else "n/a"
        )
        print(
            f"Open {window} s or more: {len(settled)}; events/s each got while open "
            f"(server sends {args.rate:g}/s): {spread}."
        )
    print(
        f"The crawl ran {result['crawl_seconds']:.0f} s, and closing it "
        f"{result['close_seconds']:.0f} s (sampled once a second)."
    )
    print(
        "\nEvents parsed and waiting in stream queues (the spider behind), most in one "
        f"sample once all were open: {result['queued_max']}"
    )
    if result["profile"]:
        print("\nWith tracemalloc on (the RSS above is inflated by tracing):\n")
        print(result["profile"])
    if result["nofile"] < args.streams + 100:
        print(
            f"\nOpen-file limit {result['nofile']} is below {args.streams} streams: "
            "raise it (ulimit -n) to open them all."
        )


def latency(args: argparse.Namespace) -> None:
    proc, port = start_server(15.0, args.rate, args.seconds + 60)
    try:
        result = run_crawl(
            {
                "port": port,
                "streams": 1,
                "hot": 1,
                "seconds": args.seconds,
                "concurrent_items": args.concurrent_items,
                "record_latency": True,
                "settings": dict(item.split("=", 1) for item in args.set),
            }
        )
    finally:
        proc.kill()
    values = result["latencies"]
    # Leave out the first second (connection set-up, warm-up); then sort.
    steady = sorted(values[int(args.rate) :] or values)
    print("| rate ev/s | events | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    print(
        f"| {args.rate:.0f} | {len(steady)} | {percentile(steady, 0.5) * 1e3:.2f} "
        f"| {percentile(steady, 0.99) * 1e3:.2f} | {max(steady) * 1e3 if steady else 0:.2f} |"
    )
    if steady:
        print(f"\nmean {statistics.fmean(steady) * 1e3:.2f} ms")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        port, beat, rate, life = sys.argv[2:6]
        raise_nofile(100_000)
        asyncio.run(_serve(int(port), float(beat), float(rate), float(life)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_crawl":
        print(json.dumps(_crawl(json.loads(sys.stdin.read()))))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("many", help="many open streams: memory per stream, starvation")
    m.add_argument("--streams", type=int, default=10_000)
    m.add_argument("--hot", type=int, default=1_000)
    m.add_argument("--rate", type=float, default=20.0, help="events/s on each hot stream")
    m.add_argument("--heartbeat", type=float, default=15.0)
    m.add_argument("--seconds", type=float, default=60.0)
    m.add_argument("--concurrent-items", type=int, default=100)
    m.add_argument(
        "--sse-concurrent-items", type=int, default=None, help="SSE_CONCURRENT_ITEMS if set"
    )
    m.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a Scrapy setting for the crawl (repeatable), e.g. SSE_RELEASE_IDLE_CHAIN=0",
    )
    m.add_argument(
        "--batch", type=int, default=0, help="batch delivery with this batch size (0: per event)"
    )
    m.add_argument(
        "--trace",
        type=int,
        default=0,
        metavar="FRAMES",
        help="attribute memory with tracemalloc, keeping FRAMES frames (try 25; slow)",
    )
    lat = sub.add_parser("latency", help="server-write to pipeline latency")
    lat.add_argument("--rate", type=float, default=10_000.0)
    lat.add_argument("--seconds", type=float, default=10.0)
    lat.add_argument("--concurrent-items", type=int, default=100)
    lat.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    {"many": many, "latency": latency}[args.mode](args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
