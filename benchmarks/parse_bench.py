"""Parse-only benchmark: bytes already in memory, cut into reads, through each parser.

Why it is measured this way:

* Every parser gets the same prebuilt list of reads (16 KiB slices, 7-byte slices, or
  one read per wire block), so slicing is never timed.
* A run is timed with ``time.perf_counter`` around the whole parse, with ``gc.collect()``
  before and the collector disabled during the run, for every parser alike: each run
  keeps all its events alive for verification, and collections triggered by that
  growing list would otherwise be charged to whoever allocates the most objects. The
  corpus itself is ``gc.freeze()``-d for the case so those collections stay short.
* glibc's malloc is told to keep the memory it frees (no trimming, no ``mmap`` for big
  blocks; :func:`keep_freed_memory`). Otherwise each run pages in again the memory the
  previous run's events were freed from, and on a VM a page fault can cost several
  µs: with 64 KiB events that was most of every parser's time (12 faults an event),
  which measures the kernel, not the parser. A long-running consumer's heap stays
  grown the same way.
* Runs are interleaved (parser A, B, C, D, then again) and the best of ``repeats`` is
  kept, so a noisy moment hurts one run, not one parser.
* Every run's output is checked against the corpus's expected events (after the
  normalisation documented in :func:`benchmarks.peers.normalise`); a parser whose
  output differs gets no speed.
"""

from __future__ import annotations

import ctypes
import gc
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .corpora import Corpus, build, split_reads
from .machine import LoadMonitor
from .peers import PARSERS, ParserPeer, expected_rows, normalise

__all__ = ["READ_MODES", "SIZES", "run_parse"]

MiB = 1 << 20
#: Share of a core that other processes may keep busy during a round of runs before
#: the round counts as disturbed and another one is run (at most EXTRA_ROUNDS).
DISTURBED = 0.25
EXTRA_ROUNDS = 1

#: label -> read size (None: one read per wire block).
READ_MODES: dict[str, int | None] = {"16 KiB": 16 * 1024, "7 B": 7, "per event": None}

#: Bytes of corpus per (corpus, read mode) for a full run: enough that the fastest parser
#: takes a few hundred milliseconds per run, small enough that the slowest of the four
#: stays within a couple of seconds (7-byte reads cost 10-50x more per byte).
SIZES: dict[str, dict[str, int]] = {
    "openai": {"16 KiB": 32 * MiB, "7 B": 2 * MiB, "per event": 16 * MiB},
    "ticker": {"16 KiB": 24 * MiB, "7 B": 3 * MiB // 2, "per event": 12 * MiB},
    "mixed": {"16 KiB": 16 * MiB, "7 B": 1 * MiB, "per event": 8 * MiB},
    "large": {"16 KiB": 64 * MiB, "7 B": 2 * MiB, "per event": 64 * MiB},
}


@dataclass
class ParseResult:
    corpus: str
    reads: str
    parser: str
    label: str
    events: int
    bytes: int
    n_reads: int
    runs_s: list[float] = field(default_factory=list)
    ok: bool = True
    error: str = ""
    notes: list[str] = field(default_factory=list)
    other_load: list[float] = field(default_factory=list)

    @property
    def best_s(self) -> float:
        return min(self.runs_s) if self.runs_s else float("nan")

    @property
    def events_per_s(self) -> float:
        return self.events / self.best_s if self.ok and self.runs_s else float("nan")

    @property
    def us_per_event(self) -> float:
        return self.best_s * 1e6 / self.events if self.ok and self.runs_s else float("nan")

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(
            best_s=self.best_s if self.ok else None,
            events_per_s=self.events_per_s if self.ok else None,
            us_per_event=self.us_per_event if self.ok else None,
            mib_per_s=self.bytes / MiB / self.best_s if self.ok else None,
        )
        return row


#: glibc ``mallopt`` parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse; ``False`` if it cannot (not
    glibc): the figures then include page faults for every run's events."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) and libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    )


def _time_once(parse: Any, reads: list[bytes]) -> tuple[float, list[Any]]:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        out = parse(reads)
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    return elapsed, out


def _check(result: ParseResult, out: list[Any], corpus: Corpus) -> None:
    rows, notes = normalise(result.parser, out)
    for note in notes:
        if note not in result.notes:
            result.notes.append(note)
    expected = expected_rows(result.parser, corpus.expected)
    if rows == expected:
        return
    result.ok = False
    if len(rows) != len(expected):
        result.error = f"{len(rows)} events, expected {len(expected)}"
    else:
        first = next(i for i, (a, b) in enumerate(zip(rows, expected, strict=True)) if a != b)
        result.error = f"event {first} differs: {rows[first]!r:.120} != {expected[first]!r:.120}"


def _one_run(parse: Any, reads: list[bytes], result: ParseResult, corpus: Corpus) -> None:
    if not result.ok:
        return
    try:
        elapsed, out = _time_once(parse, reads)
    except Exception as exc:  # a peer that crashes gets no speed
        result.ok = False
        result.error = f"{type(exc).__name__}: {exc}"
        return
    _check(result, out, corpus)
    del out
    result.runs_s.append(elapsed)


def run_parse(
    *,
    quick: bool,
    repeats: int,
    corpora: list[str] | None = None,
    log: Any = print,
    retry_until: float = float("inf"),
    parsers: tuple[ParserPeer, ...] = PARSERS,
) -> list[ParseResult]:
    """Every parser on every (corpus, read mode); corpora are 8x smaller with ``quick``.

    Extra rounds for a disturbed case are run only before ``retry_until``
    (``time.monotonic()``), which keeps a run on a busy machine within its time budget.
    """
    if not keep_freed_memory():
        log("  (malloc is not glibc's: runs include page faults for the freed memory)")
    results: list[ParseResult] = []
    for name in corpora or list(SIZES):
        for mode, read_size in READ_MODES.items():
            target = SIZES[name][mode] // (8 if quick else 1)
            corpus = build(name, target)
            reads = split_reads(corpus, read_size)
            case = [
                ParseResult(
                    name, mode, p.key, p.label, len(corpus.expected), corpus.size, len(reads)
                )
                for p in parsers
            ]
            # The corpus, its reads and expected events live through all runs: freeze them
            # so that each run's gc.collect() does not rescan them (tens of ms each).
            gc.collect()
            gc.freeze()
            # Rounds of interleaved runs; another round (at most EXTRA_ROUNDS) whenever
            # other processes were busy during one: the best run can only improve.
            for round_no in range(1 + EXTRA_ROUNDS):
                monitor = LoadMonitor()
                for _ in range(repeats):
                    for peer, result in zip(parsers, case, strict=True):
                        _one_run(peer.parse, reads, result, corpus)
                busy = monitor.summary()["other_cores_busy"]
                for result in case:
                    result.other_load.append(round(busy, 3))
                if busy <= DISTURBED or time.monotonic() > retry_until:
                    break
                if round_no < EXTRA_ROUNDS:
                    log(f"  parse {name} {mode}: machine busy ({busy:.0%}), another round")
            gc.unfreeze()
            results.extend(case)
            ours = case[0]
            log(
                f"  parse {name:7} {mode:9} {ours.events:7} events {corpus.size / MiB:5.1f} MiB: "
                + ", ".join(
                    f"{r.parser} {r.us_per_event:.2f}" if r.ok else f"{r.parser} FAILED"
                    for r in case
                )
                + " us/event"
            )
            del reads, corpus
    return results
