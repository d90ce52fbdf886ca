"""End-to-end benchmark over loopback: one server process per corpus, one process per
consumer run, each result verified before its speed counts.

Why it is run this way: the server and the consumer are separate processes so that,
on a 2-core machine, each has a core and the consumer's ``getrusage`` covers only the
client. Consumers run one after another (never two at once) and their runs are
interleaved across repeats, so a slow moment of the machine does not land on one
consumer only; the best (shortest) run of each is kept, with the CPU time and peak RSS
of that same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from .consumers import CONSUMERS, Consumer
from .corpora import build_events
from .machine import LoadMonitor
from .server import Framing, encode_body, response_head

__all__ = ["E2EResult", "profile_crawl", "run_e2e"]

ROOT = Path(__file__).resolve().parent.parent
CONSUMER_TIMEOUT = 180.0
#: A run during which other processes kept more than this share of a core busy is
#: "disturbed": it is repeated (at most ``RETRIES`` times per consumer and corpus), and
#: counts towards the best only if no undisturbed run exists.
DISTURBED = 0.25
RETRIES = 1


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


@dataclass
class E2EResult:
    corpus: str
    consumer: str
    label: str
    kind: str
    events: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    ok: bool = True
    error: str = ""

    @property
    def best(self) -> dict[str, Any] | None:
        if not self.ok or not self.runs:
            return None
        clean = [r for r in self.runs if not r.get("disturbed")]
        return min(clean or self.runs, key=lambda r: r["wall_s"])

    @property
    def events_per_s(self) -> float:
        best = self.best
        return self.events / best["wall_s"] if best else float("nan")

    @property
    def cpu_us_per_event(self) -> float:
        best = self.best
        return best["cpu_s"] * 1e6 / self.events if best else float("nan")

    @property
    def maxrss_mib(self) -> float:
        return max(r["maxrss_kib"] for r in self.runs) / 1024 if self.runs else float("nan")

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(
            events_per_s=self.events_per_s if self.ok else None,
            cpu_us_per_event=self.cpu_us_per_event if self.ok else None,
            maxrss_mib=self.maxrss_mib if self.runs else None,
        )
        return row


class Server:
    """The loopback server process for one corpus (stopped by closing its stdin)."""

    def __init__(self, corpus: str, events: int, framing: Framing, writes: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.server",
                f"--corpus={corpus}",
                f"--events={events}",
                f"--framing={framing}",
                f"--writes={writes}",
                "--lifetime=900",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=_env(),
            text=True,
        )
        stdout: IO[str] | None = self.proc.stdout
        line = stdout.readline() if stdout else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"benchmark server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}/stream"

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _run_consumer(
    consumer: str, url: str, events: int, corpus: str, profile: str = ""
) -> tuple[dict[str, Any] | None, str]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.consumers",
        consumer,
        f"--url={url}",
        f"--events={events}",
        f"--corpus={corpus}",
    ]
    if profile:
        cmd.append(f"--profile={profile}")
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=CONSUMER_TIMEOUT,
            cwd=ROOT,
            env=_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {CONSUMER_TIMEOUT:.0f} s"
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:]), proc.stderr
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return None, f"exit {proc.returncode}: " + " | ".join(tail)


def _verify(consumer: Consumer, run: dict[str, Any], n: int, last: list[str], raw: bytes) -> str:
    """Empty if ``run`` saw exactly the stream; otherwise what was wrong."""
    if consumer.key == "raw_drain":
        if run.get("bytes") != len(raw):
            return f"read {run.get('bytes')} bytes, expected {len(raw)}"
        if bytes.fromhex(run.get("tail", "")) != raw[-64:]:
            return "the last bytes differ"
        return ""
    if run["events"] != n:
        return f"received {run['events']} events, expected {n}"
    if run["last"] != last:
        return f"last event {run['last']!r:.120} != expected {last!r:.120}"
    stats = run.get("stats", {})
    if stats.get("log_count/ERROR"):
        return f"{stats['log_count/ERROR']} ERROR log lines in the crawl"
    return ""


def _measure(
    consumer: Consumer,
    result: E2EResult,
    *,
    url: str,
    server_pid: int,
    corpus_name: str,
    events: int,
    last_expected: Any,
    raw: bytes,
    log: Any,
) -> bool:
    """One verified run of ``consumer`` into ``result``; True if it was disturbed."""
    if not result.ok:
        return False
    monitor = LoadMonitor(also_ours=(server_pid,))
    run, stderr = _run_consumer(consumer.key, url, events, corpus_name)
    load = monitor.summary()
    busy = load["other_cores_busy"]
    if run is None:
        result.ok, result.error = False, stderr
        log(f"  e2e {corpus_name} {consumer.key}: FAILED {stderr}")
        return False
    own_id = last_expected.own_id or ""
    last_id = own_id if consumer.key.startswith("sseclient") else last_expected.id
    expected_last = [last_expected.event, last_expected.data, last_id]
    problem = _verify(consumer, run, events, expected_last, raw)
    if problem:
        result.ok, result.error = False, problem
        log(f"  e2e {corpus_name} {consumer.key}: WRONG OUTPUT {problem}")
        return False
    run["other_cores_busy"] = busy
    # Under half a second, 10 ms ticks make the share too coarse to act on.
    run["disturbed"] = busy > DISTURBED and load["elapsed_s"] >= 0.5
    result.runs.append(run)
    log(
        f"  e2e {corpus_name:7} {consumer.key:20} {run['wall_s']:6.2f} s  "
        f"{events / run['wall_s']:9.0f} events/s  "
        f"{run['cpu_s'] * 1e6 / events:6.2f} CPU us/event  "
        f"RSS {run['maxrss_kib'] / 1024:5.0f} MiB  other load {busy:4.0%}"
    )
    return bool(run["disturbed"])


def run_e2e(
    *,
    corpora: list[str],
    events: int,
    repeats: int,
    framing: Framing = "chunked",
    writes: str = "bulk",
    only: list[str] | None = None,
    log: Any = print,
    retry_until: float = float("inf"),
) -> list[E2EResult]:
    """Every consumer on every corpus; disturbed runs are repeated only before
    ``retry_until`` (``time.monotonic()``)."""
    consumers = [c for c in CONSUMERS if not only or c.key in only]
    results: list[E2EResult] = []
    for corpus_name in corpora:
        corpus = build_events(corpus_name, events)
        last_expected = corpus.expected[-1]
        raw = response_head(framing) + b"".join(encode_body(corpus, framing))
        del corpus
        case = {c.key: E2EResult(corpus_name, c.key, c.label, c.kind, events) for c in consumers}
        server = Server(corpus_name, events, framing, writes)
        try:
            retries = dict.fromkeys(case, RETRIES)
            for _ in range(repeats):
                for consumer in consumers:
                    while _measure(
                        consumer,
                        case[consumer.key],
                        url=server.url,
                        server_pid=server.proc.pid,
                        corpus_name=corpus_name,
                        events=events,
                        last_expected=last_expected,
                        raw=raw,
                        log=log,
                    ):
                        if retries[consumer.key] <= 0 or time.monotonic() > retry_until:
                            break
                        retries[consumer.key] -= 1
                        log(f"  e2e {corpus_name} {consumer.key}: machine busy, run again")
        finally:
            server.stop()
        results.extend(case.values())
    return results


def _short(path: str) -> str:
    """``.../site-packages/scrapy/core/scraper.py`` -> ``scrapy/core/scraper.py``."""
    parts = Path(path).parts
    for anchor in ("site-packages", "lib", "main"):
        if anchor in parts:
            rest = parts[len(parts) - parts[::-1].index(anchor) :]
            if rest:
                return "/".join(rest[-3:])
    return "/".join(parts[-2:]) or path


def _package(path: str) -> str:
    """Who owns a profiled function: scrapy_sse, a site-packages package, a stdlib
    module, or C built-ins (``~``)."""
    if path == "~":
        return "C built-ins"
    parts = Path(path).parts
    if "scrapy_sse" in parts:
        return "scrapy_sse"
    if "benchmarks" in parts:
        return "benchmark code"
    if "site-packages" in parts:
        i = parts.index("site-packages")
        return parts[i + 1].removesuffix(".py") if i + 1 < len(parts) else path
    for i, part in enumerate(parts):
        if part.startswith("python3") and i + 1 < len(parts):
            return "stdlib " + parts[i + 1].removesuffix(".py")
    return parts[-1] if parts else path


def _profile(consumer: str, corpus: str, events: int) -> tuple[dict[str, Any], dict[Any, Any]]:
    """One consumer run under cProfile: its result and pstats' raw table."""
    import pstats

    server = Server(corpus, events, "chunked", "bulk")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "crawl.prof")
            run, err = _run_consumer(consumer, server.url, events, corpus, path)
            if run is None:
                raise RuntimeError(f"profiled {consumer} failed: {err}")
            raw: dict[Any, Any] = pstats.Stats(path).stats  # type: ignore[attr-defined]
    finally:
        server.stop()
    return run, raw


def _where(filename: str, lineno: int, func: str) -> str:
    return f"{_short(filename)}:{lineno}({func})" if lineno else f"~({func})"


def profile_crawl(
    *, corpus: str, events: int, top: int = 10, consumer: str = "scrapy_sse_items"
) -> str:
    """cProfile of a scrapy-sse items crawl: top functions by own time (``tottime``), own
    time by package, and the functions whose own time per event grows most over the
    crawl's item ceiling (the add-on installed, dicts from an async callback, no stream),
    i.e. what a stream adds per event. Profiled times are inflated several-fold: compare
    them with each other, not with the unprofiled tables.
    """
    try:
        run, raw = _profile(consumer, corpus, events)
        _, base = _profile("scrapy_ceiling", corpus, events)
    except RuntimeError as exc:
        return str(exc)
    total = sum(v[2] for v in raw.values())
    base_total = sum(v[2] for v in base.values())
    n = run["events"]
    lines = [
        f"cProfile, scrapy-sse items crawl, {corpus}, {n} events, whole process: "
        f"{total:.2f} s profiled ({total * 1e6 / n:.0f} us/event; the item "
        f"ceiling: {base_total * 1e6 / n:.0f} us/event)",
        f"{'ncalls':>9} {'tottime':>8} {'cumtime':>8}  function",
    ]
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    for (filename, lineno, func), (_, ncalls, tottime, cumtime, _) in rows:
        lines.append(f"{ncalls:>9} {tottime:8.3f} {cumtime:8.3f}  {_where(filename, lineno, func)}")
    by_package: dict[str, float] = {}
    for (filename, _, _), stat in raw.items():
        owner = _package(filename)
        by_package[owner] = by_package.get(owner, 0.0) + stat[2]
    ranked = sorted(by_package.items(), key=lambda kv: kv[1], reverse=True)[:8]
    lines.append(
        "own time by package: " + ", ".join(f"{name} {share / total:.0%}" for name, share in ranked)
    )
    lines.append("")
    lines.append("own time per event added over the ceiling (us/event, profiled):")
    keys = set(raw) | set(base)
    grown = sorted(
        keys,
        key=lambda k: raw.get(k, (0, 0, 0.0))[2] - base.get(k, (0, 0, 0.0))[2],
        reverse=True,
    )[:top]
    for key in grown:
        ours, theirs = raw.get(key, (0, 0, 0.0))[2], base.get(key, (0, 0, 0.0))[2]
        lines.append(
            f"{(ours - theirs) * 1e6 / n:+8.2f}  ({ours * 1e6 / n:6.2f} vs {theirs * 1e6 / n:6.2f})"
            f"  {_where(*key)}"
        )
    return "\n".join(lines)
