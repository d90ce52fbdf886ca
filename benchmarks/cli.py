"""``python benchmarks/run.py``: parse-only and end-to-end benchmarks, Markdown tables on
stdout, everything (machine, settings, every run) in ``benchmarks/results.json``.

Why the defaults are what they are: the machine this project runs on has 2 cores, so
each measurement is kept to a few seconds and the whole full run to about four minutes;
``--quick`` (8x smaller parse corpora, fewer events and runs) is for checking that
everything works, not for numbers to quote.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .corpora import CORPORA
from .e2e import ROOT, E2EResult, profile_crawl, run_e2e
from .machine import LoadMonitor, machine_info
from .parse_bench import ParseResult, run_parse
from .peers import PARSERS, compiled_peer
from .report import e2e_tables, load_line, machine_table, parse_tables, write_json

#: Disturbed measurements are repeated only during this many seconds from the start,
#: so a run on a busy machine still ends in about four minutes (one minute with --quick).
RETRY_BUDGET_S = 60.0
QUICK_RETRY_BUDGET_S = 20.0

#: Below this many events/s the crawl consumer gets profiled (cProfile top 10 printed).
PROFILE_BELOW = 30_000


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small corpora, one run each")
    parser.add_argument("--only", choices=("parse", "e2e"), help="run one half only")
    parser.add_argument("--repeats", type=int, help="runs per case (best is kept)")
    parser.add_argument("--parse-corpora", nargs="+", choices=list(CORPORA), default=list(CORPORA))
    parser.add_argument(
        "--e2e-corpora", nargs="+", choices=list(CORPORA), default=["openai", "ticker"]
    )
    parser.add_argument("--e2e-events", type=int, help="events per end-to-end stream")
    parser.add_argument("--consumers", nargs="+", help="end-to-end consumers to run (keys)")
    parser.add_argument("--framing", choices=("chunked", "close"), default="chunked")
    parser.add_argument(
        "--writes",
        choices=("bulk", "event"),
        default="bulk",
        help="server writes: 256 KiB slices (default) or one write per event",
    )
    parser.add_argument("--no-profile", action="store_true", help="never profile the crawl")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="parse-only: also the parser's mypyc build (SCRAPY_SSE_COMPILE=1), same run",
    )
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks" / "results.json", help="JSON file"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    started = time.perf_counter()
    monitor = LoadMonitor()
    retry_until = time.monotonic() + (QUICK_RETRY_BUDGET_S if args.quick else RETRY_BUDGET_S)
    quick = args.quick
    parse_repeats = args.repeats or (2 if quick else 3)
    e2e_repeats = args.repeats or (1 if quick else 3)
    e2e_events = args.e2e_events or (15_000 if quick else 40_000)
    info = machine_info(ROOT)
    config: dict[str, Any] = {
        "quick": quick,
        "only": args.only,
        "parse_repeats": parse_repeats,
        "parse_corpora": args.parse_corpora,
        "e2e_repeats": e2e_repeats,
        "e2e_events": e2e_events,
        "e2e_corpora": args.e2e_corpora,
        "framing": args.framing,
        "server_writes": args.writes,
        "compiled": args.compiled,
    }
    print("## scrapy-sse benchmarks" + (" (--quick: smoke test, not for quoting)" if quick else ""))
    print()
    print(machine_table(info))
    print(flush=True)

    parse_results: list[ParseResult] = []
    e2e_results: list[E2EResult] = []
    profile = ""
    if args.only in (None, "parse"):
        print(f"Running parse-only ({parse_repeats} runs per case, best kept)...", flush=True)
        parsers = PARSERS + ((compiled_peer(),) if args.compiled else ())
        phase = time.perf_counter()
        parse_results = run_parse(
            quick=quick,
            repeats=parse_repeats,
            corpora=args.parse_corpora,
            log=_log,
            retry_until=retry_until,
            parsers=parsers,
        )
        config["parse_s"] = round(time.perf_counter() - phase, 1)
        print(f"(parse-only took {config['parse_s']:.0f} s)", flush=True)
    if args.only in (None, "e2e"):
        phase = time.perf_counter()
        print(
            f"Running end to end ({e2e_events} events, {e2e_repeats} run(s) per consumer, "
            f"{args.framing} framing, {args.writes} server writes)...",
            flush=True,
        )
        e2e_results = run_e2e(
            corpora=args.e2e_corpora,
            events=e2e_events,
            repeats=e2e_repeats,
            framing=args.framing,
            writes=args.writes,
            only=args.consumers,
            log=_log,
            retry_until=retry_until,
        )
        config["e2e_s"] = round(time.perf_counter() - phase, 1)
        print(f"(end to end took {config['e2e_s']:.0f} s)", flush=True)
        crawl = next((r for r in e2e_results if r.consumer == "scrapy_sse_items" and r.ok), None)
        if crawl is not None and crawl.events_per_s < PROFILE_BELOW and not args.no_profile:
            print(f"Profiling the scrapy-sse crawl ({crawl.corpus})...", flush=True)
            profile = profile_crawl(corpus=crawl.corpus, events=min(e2e_events, 20_000))

    sections: list[str] = []
    if parse_results:
        sections.append("### Parse-only\n\n" + parse_tables(parse_results))
    if e2e_results:
        sections.append("### End to end\n\n" + e2e_tables(e2e_results))
    if profile:
        sections.append("### Where the crawl's time goes\n\n```\n" + profile + "\n```")
    load = monitor.summary()
    sections.append(load_line(load))
    text = "\n\n".join(sections)
    print()
    print(text)
    elapsed = time.perf_counter() - started
    print(f"\n(total {elapsed:.0f} s; results in {args.output})")
    write_json(
        args.output,
        {
            "machine": info,
            "config": config,
            "elapsed_s": elapsed,
            "other_load": load,
            "parse": [r.as_dict() for r in parse_results],
            "e2e": [r.as_dict() for r in e2e_results],
            "crawl_profile": profile,
            "markdown": text,
        },
    )
    # A peer with wrong output is reported, not fatal; our own wrong output is.
    ours_failed = any(r.parser == "ours" and not r.ok for r in parse_results) or any(
        r.kind in ("ours", "bound") and not r.ok for r in e2e_results
    )
    return 1 if ours_failed else 0


def _log(message: str) -> None:
    print(message, flush=True)
