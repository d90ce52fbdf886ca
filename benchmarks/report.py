"""Markdown tables and ``results.json``: what was measured, on what machine, and how
each number compares with the peers measured in the same run.

Why ratios are only against the same run: absolute numbers move with the machine and
its load; a ratio between two consumers measured minutes apart on the same machine is
what carries over.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .e2e import E2EResult
from .parse_bench import ParseResult

__all__ = ["e2e_tables", "load_line", "machine_table", "parse_tables", "write_json"]


def load_line(load: dict[str, float]) -> str:
    busy = load["other_cores_busy"]
    warn = " **(busy machine: treat the numbers with care)**" if busy > 0.15 else ""
    return (
        f"Other processes used {load['other_cpu_s']:.1f} CPU-s during this run "
        f"({busy:.0%} of one core on average; load average {load['loadavg_before']:.2f} "
        f"before, {load['loadavg_after']:.2f} after){warn}."
    )


def machine_table(info: dict[str, Any]) -> str:
    pk = info["packages"]
    rows = [
        ("CPU", f"{info['cpu_model']} ({info['nproc']} usable cores)"),
        ("OS", info["platform"]),
        ("Python", f"{info['python']} ({info['python_implementation']})"),
        ("Scrapy / Twisted", f"{pk['scrapy']} / {pk['twisted']}"),
        (
            "Peers",
            f"httpx {pk['httpx']}, httpx-sse {pk['httpx-sse']}, sseclient-py "
            f"{pk['sseclient-py']}, launchdarkly-eventsource {pk['launchdarkly-eventsource']},"
            f" requests {pk['requests']}, urllib3 {pk['urllib3']}",
        ),
        (
            "scrapy-sse",
            f"{info['scrapy_sse_revision']}, source digest {info['scrapy_sse_digest']}, "
            f"parser {info['scrapy_sse_parser']}",
        ),
        ("Date", info["date"]),
    ]
    return _table(["", ""], [list(r) for r in rows])


def _table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    align = align or "l" * len(header)
    marks = [":--" if a == "l" else "--:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _rate(value: float) -> str:
    if math.isnan(value):
        return "—"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    return f"{value / 1e3:.1f} k"


def _ratio(ours: float, other: float) -> str:
    if math.isnan(ours) or math.isnan(other) or other == 0:
        return "—"
    return f"{ours / other:.2f}x"


def parse_tables(results: list[ParseResult]) -> str:
    """One table per corpus; "ours ÷ peer" is speed (events/s) ours over the peer's, and
    with ``--compiled`` "compiled ÷ peer" the same for the parser's mypyc build."""
    out: list[str] = []
    compiled = any(r.parser == "ours_compiled" for r in results)
    for corpus in dict.fromkeys(r.corpus for r in results):
        rows: list[list[str]] = []
        mine = [r for r in results if r.corpus == corpus]
        first = mine[0]
        for mode in dict.fromkeys(r.reads for r in mine):
            case = [r for r in mine if r.reads == mode]
            ours = next(r for r in case if r.parser == "ours")
            built = next((r for r in case if r.parser == "ours_compiled"), None)
            for r in case:
                speed = "—" if r.parser == "ours" else _ratio(ours.events_per_s, r.events_per_s)
                row = [
                    mode,
                    r.label,
                    _rate(r.events_per_s) if r.ok else "**wrong output**",
                    f"{r.us_per_event:.2f}" if r.ok else "—",
                    f"{r.bytes / (1 << 20) / r.best_s:.0f}" if r.ok else "—",
                    speed,
                ]
                if compiled:
                    row.append(
                        "—"
                        if built is None or r is built
                        else _ratio(built.events_per_s, r.events_per_s)
                    )
                notes = (
                    ([r.error] if r.error else [])
                    + r.notes
                    + (
                        [f"machine busy ({min(r.other_load):.0%} of a core)"]
                        if r.other_load and min(r.other_load) > 0.25
                        else []
                    )
                )
                rows.append([*row, "; ".join(notes)])
        headers = ["reads", "parser", "events/s", "µs/event", "MiB/s", "ours ÷ this"]
        headers += ["compiled ÷ this"] if compiled else []
        out.append(
            f"#### Parse-only: `{corpus}` ({first.events} events in "
            f"{first.bytes / (1 << 20):.1f} MiB for 16 KiB reads, "
            f"{first.bytes / first.events:.0f} bytes/event)\n\n"
            + _table([*headers, "notes"], rows, "llrrrr" + ("r" if compiled else "") + "l")
        )
    return "\n\n".join(out)


def e2e_tables(results: list[E2EResult]) -> str:
    out: list[str] = []
    for corpus in dict.fromkeys(r.corpus for r in results):
        mine = [r for r in results if r.corpus == corpus]
        rows = []
        for r in mine:
            best = r.best
            rows.append(
                [
                    r.label,
                    ("all bytes" if r.kind == "baseline" else str(r.events)) if r.ok else "—",
                    (_rate(r.events_per_s) + (" (bytes only)" if r.kind == "baseline" else ""))
                    if r.ok
                    else "**" + (r.error or "failed")[:80] + "**",
                    f"{r.cpu_us_per_event:.2f}" if r.ok else "—",
                    f"{r.maxrss_mib:.0f}" if r.runs else "—",
                    ", ".join(
                        f"{run['wall_s']:.2f}" + ("*" if run.get("disturbed") else "")
                        for run in r.runs
                    )
                    if best
                    else "—",
                ]
            )
        n = mine[0].events
        out.append(
            f"#### End to end over loopback: `{corpus}`, {n} events\n\n"
            "(runs marked * had other processes busy on the machine; the best run is "
            "taken from the unmarked ones when there are any)\n\n"
            + _table(
                [
                    "consumer",
                    "verified events",
                    "events/s",
                    "CPU µs/event",
                    "peak RSS MiB",
                    "runs (s)",
                ],
                rows,
                "lrrrrr",
            )
        )
        ours = [r for r in mine if r.kind in ("ours", "bound") and r.ok]
        others = [r for r in mine if r.kind in ("peer", "ceiling", "bound") and r.ok]
        if ours and others:
            ratio_rows = []
            for o in ours:
                ratio_rows.append(
                    [o.label]
                    + [
                        "—"
                        if p is o
                        else f"{_ratio(o.events_per_s, p.events_per_s)} / "
                        f"{_ratio(o.cpu_us_per_event, p.cpu_us_per_event)}"
                        for p in others
                    ]
                )
            out.append(
                f"Ratios, `{corpus}`: events/s ours ÷ theirs (above 1: ours faster) / "
                "CPU per event ours ÷ theirs (below 1: ours cheaper)\n\n"
                + _table(["", *[p.label for p in others]], ratio_rows, "l" + "r" * len(others))
            )
    return "\n\n".join(out)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
