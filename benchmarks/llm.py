"""Many concurrent LLM completions: time and memory per completion, against the
vendor's own client.

Why: a crawl that asks a thousand prompts at once should get every answer whole, and
spend less per completion than the standalone way of doing it, openai-python's
``AsyncOpenAI`` (httpx) with its ``chat.completions.stream`` accumulator, a task per
prompt. In one run, against the demo server in its own process (OpenAI Chat
Completions format, ``--delay`` seconds between chunks, ~45 chunks per answer):

* ``scrapy-sse``: one crawl, ``SSERequest(..., meta={"sse_llm": "openai-chat"})`` per
  prompt, all at once (``CONCURRENT_REQUESTS`` = the number of prompts), one
  ``LLMCompletion`` per prompt into a counting pipeline;
* ``openai-python``: one ``asyncio.gather`` of ``client.chat.completions.stream()``
  calls with ``get_final_completion()``, a connection pool as large as the prompts;
* ``idle``: each client's process with nothing to do: what memory per completion is
  counted above.

Reported per case (median of ``--repeats``): wall seconds from the first request to
the last completion, completions per second, CPU seconds per completion (the client
process's), peak resident memory above the idle process, per completion, and the
median time to first token and duration seen by the client. Every completion must
arrive whole with the expected text, or the run fails.

    python -m benchmarks.llm                        # 1,000 completions, 3 repeats
    python -m benchmarks.llm --completions 2000 --delay 0.01
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _prompts(n: int) -> list[str]:
    return [f"prompt {i}" for i in range(n)]


def _body(prompt: str) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the clients, each in its own process ------------------------------------------------


def child_scrapy(base: str, n: int) -> dict[str, Any]:
    import scrapy
    from scrapy.crawler import CrawlerProcess

    from scrapy_sse import SSERequest

    results: list[Any] = []
    marks: dict[str, float] = {}

    class Count:
        def process_item(self, item: Any) -> Any:
            results.append(item)
            marks["last"] = time.monotonic()
            return item

    class Completions(scrapy.Spider):
        name = "llm_bench"

        async def start(self) -> Any:
            marks["first"] = time.monotonic()
            for prompt in _prompts(n):
                yield SSERequest(
                    base + "/v1/chat/completions",
                    method="POST",
                    body=json.dumps(_body(prompt)),
                    headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
                    meta={"sse_llm": "openai-chat"},
                )

    sys.modules[__name__].Count = Count  # type: ignore[attr-defined]
    process = CrawlerProcess(
        {
            "ADDONS": {"scrapy_sse.SSEAddon": 500},
            "ITEM_PIPELINES": {f"{__name__}.Count": 100},
            "CONCURRENT_REQUESTS": n,
            "CONCURRENT_REQUESTS_PER_DOMAIN": n,
            "LOG_LEVEL": "WARNING",
            "TELNETCONSOLE_ENABLED": False,
        }
    )
    cpu = _cpu()
    process.crawl(Completions)
    process.start()
    cpu = _cpu() - cpu
    whole = [c for c in results if c.complete and c.text]
    return {
        "wall": marks["last"] - marks["first"],
        "cpu": cpu,
        "complete": len(whole),
        "texts": sorted({c.text for c in whole}),
        "ttft": statistics.median(c.ttft_s for c in whole),
        "duration": statistics.median(c.duration_s for c in whole),
        "peak_kib": _peak_kib(),
    }


def child_openai(base: str, n: int) -> dict[str, Any]:
    import asyncio

    import httpx
    from openai import AsyncOpenAI

    async def main() -> dict[str, Any]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        client = AsyncOpenAI(
            base_url=base + "/v1",
            api_key="k",
            http_client=httpx.AsyncClient(limits=limits, timeout=120),
            max_retries=0,
        )

        async def one(prompt: str) -> tuple[Any, float, float]:
            sent = time.monotonic()
            first = None
            body = _body(prompt)
            async with client.chat.completions.stream(
                model=body["model"],
                messages=body["messages"],
                stream_options={"include_usage": True},
            ) as stream:
                async for event in stream:
                    if first is None and event.type == "content.delta":
                        first = time.monotonic()
                final = await stream.get_final_completion()
            end = time.monotonic()
            return final, (first or end) - sent, end - sent

        start = time.monotonic()
        done = await asyncio.gather(*(one(p) for p in _prompts(n)))
        wall = time.monotonic() - start
        await client.close()
        whole = [d for d in done if d[0].choices and d[0].choices[0].finish_reason]
        return {
            "wall": wall,
            "complete": len(whole),
            "texts": sorted({d[0].choices[0].message.content for d in whole}),
            "ttft": statistics.median(d[1] for d in whole),
            "duration": statistics.median(d[2] for d in whole),
        }

    cpu = _cpu()
    result = asyncio.run(main())
    result["cpu"] = _cpu() - cpu
    result["peak_kib"] = _peak_kib()
    return result


def child_idle(kind: str) -> dict[str, Any]:
    """The same imports and start-up, no completion: the memory the others start from."""
    if kind == "scrapy-sse":
        import scrapy
        from scrapy.crawler import CrawlerProcess

        import scrapy_sse  # noqa: F401

        class Nothing(scrapy.Spider):
            name = "idle"

            async def start(self) -> Any:
                return
                yield

        process = CrawlerProcess(
            {
                "ADDONS": {"scrapy_sse.SSEAddon": 500},
                "LOG_LEVEL": "WARNING",
                "TELNETCONSOLE_ENABLED": False,
            }
        )
        process.crawl(Nothing)
        process.start()
    else:
        import asyncio

        import httpx
        from openai import AsyncOpenAI

        async def nothing() -> None:
            client = AsyncOpenAI(
                base_url="http://127.0.0.1:1/v1", api_key="k", http_client=httpx.AsyncClient()
            )
            await client.close()

        asyncio.run(nothing())
    return {"peak_kib": _peak_kib()}


# -- the parent --------------------------------------------------------------------------


def _run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.llm", "--child", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _server(delay: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "example_project" / "demo_server.py"),
            "--port",
            "0",
            "--chat-chunk-delay",
            str(delay),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line.split(" on ", 1)[1].split()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--completions", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between chunks")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "idle":
            print(json.dumps(child_idle(rest[0])))
        else:
            run = child_scrapy if kind == "scrapy-sse" else child_openai
            print(json.dumps(run(rest[0], int(rest[1]))))
        return 0

    n = args.completions
    server, base = _server(args.delay)
    try:
        idle = {
            kind: _run_child("idle", kind)["peak_kib"] for kind in ("scrapy-sse", "openai-python")
        }
        runs: dict[str, list[dict[str, Any]]] = {"scrapy-sse": [], "openai-python": []}
        for _ in range(args.repeats):
            for kind, results in runs.items():  # interleaved: both see the same machine
                result = _run_child(kind, base, str(n))
                if result["complete"] != n:
                    raise SystemExit(f"{kind}: {result['complete']} of {n} completions whole")
                results.append(result)
    finally:
        server.terminate()
        server.wait(10)
    texts = {kind: runs[kind][0]["texts"] for kind in runs}
    if texts["scrapy-sse"] != texts["openai-python"]:
        raise SystemExit("the two clients assembled different answers")

    print(
        f"{n} concurrent completions (OpenAI Chat Completions format, {args.delay * 1000:.0f} ms "
        f"between chunks, demo server in its own process), median of {args.repeats}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print(
        "| client | wall s | completions/s | CPU ms per completion | KiB per completion "
        "| ttft s (median) | duration s (median) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for kind, results in runs.items():
        wall = statistics.median(r["wall"] for r in results)
        cpu = statistics.median(r["cpu"] for r in results) / n * 1000
        kib = statistics.median(r["peak_kib"] - idle[kind] for r in results) / n
        summary[kind] = (wall, cpu, kib)
        print(
            f"| {kind} | {wall:.2f} | {n / wall:,.0f} | {cpu:.2f} | {kib:.1f} | "
            f"{statistics.median(r['ttft'] for r in results):.3f} | "
            f"{statistics.median(r['duration'] for r in results):.2f} |"
        )
    ours, peer = summary["scrapy-sse"], summary["openai-python"]
    print(
        f"\nscrapy-sse vs openai-python: wall x{peer[0] / ours[0]:.2f} faster, "
        f"CPU x{peer[1] / ours[1]:.2f} less, memory x{peer[2] / ours[2]:.2f} less "
        "(ratios above 1 favour scrapy-sse)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
