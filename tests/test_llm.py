"""LLM completion streams as items (``meta["sse_llm"]``): assembled as the vendors'
SDKs assemble them, one per request, never resent silently, never two items.

Every stream comes from the demo server on 127.0.0.1; the SDKs' accumulators
(``tests/llm_reference.py``) read the same bytes, recorded with a plain HTTP client.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scrapy_sse.llm import LLMStream
from scrapy_sse.llm.assembly import CLOSED
from scrapy_sse.parser import SSEParser
from tests.crawl import CrawlResult, run_crawl
from tests.llm_cases import DemoConfig, record, request_spec, serve_in_thread
from tests.llm_reference import REFERENCES

SCENARIOS = ("text", "tools", "choices", "thinking", "error", "drop")
SDK_CASES = [(fmt, scenario) for fmt in REFERENCES for scenario in SCENARIOS]
COMPARED = ("response_id", "model", "text", "texts", "tool_calls", "finish_reason", "usage")


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    base, stop = serve_in_thread(0, config=DemoConfig(chat_chunk_delay=0.001))
    yield base
    stop()


def crawl(base: str, specs: list[dict[str, Any]], **settings: Any) -> CrawlResult:
    result = run_crawl(
        "Completions",
        args={"url": base, "requests": json.dumps(specs), "callback": "1"},
        settings={"SSE_RETRY_DELAY": 0.05, **settings},
        timeout=180,
    )
    assert result.returncode == 0, result.log[-4000:]
    return result


def by_tag(result: CrawlResult) -> dict[int, dict[str, Any]]:
    tags = [item["tag"] for item in result.items]
    assert len(tags) == len(set(tags)), f"a request gave two items: {sorted(tags)}"
    return {item["tag"]: item for item in result.items}


def ours_on(raw: bytes, fmt: str) -> dict[str, Any]:
    """Our pure assembly of the same bytes, the server having closed after them."""
    state = LLMStream(fmt, "http://127.0.0.1/")
    for event in SSEParser().feed(raw):
        if state.feed(event.event, event.data):
            break
    return vars_of(state.result(end=CLOSED, failure=None))


def vars_of(completion: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(completion)


def assert_matches_sdk(ours: dict[str, Any], sdk: dict[str, Any], where: str) -> None:
    if "response_id" not in sdk:  # (the SDK saw nothing but the error)
        assert ours["error"] == sdk["error"], where
        return
    for name in (*COMPARED, "thinking"):
        if name in sdk:
            assert ours[name] == sdk[name], (
                f"{where}: {name}: ours {ours[name]!r}, SDK {sdk[name]!r}"
            )
    if sdk["error"] is not None:
        assert ours["error"] == sdk["error"], where


@pytest.mark.parametrize(("fmt", "scenario"), SDK_CASES)
def test_each_format_assembles_as_the_vendors_sdk_does(demo: str, fmt: str, scenario: str) -> None:
    raw = record(demo, request_spec(fmt, scenario))
    ours = ours_on(raw, fmt)
    assert_matches_sdk(ours, REFERENCES[fmt](raw), f"{fmt}/{scenario}")
    assert ours["complete"] is (scenario not in ("error", "drop"))
    if scenario == "tools":
        assert [call["name"] for call in ours["tool_calls"]] == ["get_weather", "get_time"]


def test_a_crawl_gives_each_request_one_completion_equal_to_the_sdks(demo: str) -> None:
    cases = [*SDK_CASES, *(("gemini", scenario) for scenario in SCENARIOS)]
    specs = [
        request_spec(fmt, scenario, prompt=f"case {n}") for n, (fmt, scenario) in enumerate(cases)
    ]
    recorded = [record(demo, spec) for spec in specs]
    result = crawl(demo, specs)
    items = by_tag(result)
    assert sorted(items) == list(range(len(specs)))
    for tag, (fmt, scenario) in enumerate(cases):
        got = items[tag]
        where = f"{fmt}/{scenario}"
        whole = scenario not in ("error", "drop")
        assert got["complete"] is whole, (where, got)
        assert got["format"] == fmt and got["attempts"] == 1
        assert got["url"].endswith(specs[tag]["path"])
        if fmt in REFERENCES:
            assert_matches_sdk(got, REFERENCES[fmt](recorded[tag]), where)
        else:
            assert got == {**got, **gemini_expected(recorded[tag])}, where
        if scenario == "drop":
            assert got["error"]["type"] == "connection_lost", got["error"]
        if whole:
            assert got["error"] is None and 0 < got["ttft_s"] <= got["duration_s"]
    incomplete = sum(scenario in ("error", "drop") for _, scenario in cases)
    assert result.stat("sse/llm/completions") == len(specs)
    assert result.stat("sse/llm/incomplete") == incomplete
    assert result.stat("test/errbacks") == incomplete
    # Nothing was sent twice: a POST completion without event ids is never resent.
    assert result.stat("sse/streams_opened") == len(specs)
    assert result.stat("sse/reconnects/server_closed") == 0


def gemini_expected(raw: bytes) -> dict[str, Any]:
    """Gemini (no SDK among the test extras): each frame's parts, read naively."""
    texts: dict[int, str] = {}
    calls = []
    finish = None
    for event in SSEParser().feed(raw):
        frame = json.loads(event.data)
        for candidate in frame.get("candidates", []):
            index = candidate["index"]
            for part in candidate["content"]["parts"]:
                if "functionCall" in part:
                    call = part["functionCall"]
                    calls.append({"id": None, "name": call["name"], "arguments": call["args"]})
                elif not part.get("thought"):
                    texts[index] = texts.get(index, "") + part.get("text", "")
            if index == 0:
                finish = candidate.get("finishReason", finish)
    ordered = [texts[i] for i in sorted(texts)]
    return {
        "text": ordered[0] if ordered else "",
        "texts": ordered,
        "tool_calls": calls,
        "finish_reason": finish,
    }


def test_items_without_a_callback_are_the_completions_in_the_default_store(
    demo: str, tmp_path: Path
) -> None:
    specs = [request_spec(fmt, "tools", prompt="stored") for fmt in ("openai-chat", "anthropic")]
    db = tmp_path / "completions.sqlite3"
    result = run_crawl(
        "Completions",
        args={"url": demo, "requests": json.dumps(specs)},
        settings={
            "ITEM_PIPELINES": {"scrapy_sse.pipelines.SQLitePipeline": 300},
            "SSE_SQLITE_PATH": str(db),
            "SSE_SQLITE_TABLE": "completions",
        },
    )
    assert result.returncode == 0, result.log[-3000:]
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(row) for row in conn.execute("SELECT * FROM completions")]
    assert sorted(row["format"] for row in rows) == ["anthropic", "openai-chat"]
    for row in rows:
        assert row["complete"] == 1
        assert json.loads(row["tool_calls"])[0]["arguments"] == {
            "location": "Paris, France",
            "unit": "celsius",
        }
        assert json.loads(row["usage"])


def test_a_dropped_completion_is_retried_from_scratch_only_when_asked(
    demo: str, tmp_path: Path
) -> None:
    flaky = [
        request_spec(fmt, "drop_once", prompt=f"flaky {fmt}")
        for fmt in ("openai-chat", "anthropic")
    ]
    always = request_spec("openai-responses", "drop", prompt="always drops")
    result = crawl(demo, [*flaky, always], SSE_LLM_RETRIES=2)
    items = by_tag(result)
    for tag in (0, 1):  # dropped once, then whole: one complete completion, no trace of the first
        assert items[tag]["complete"] is True and items[tag]["attempts"] == 2, items[tag]
        assert (
            items[tag]["text"]
            == ours_on(
                record(
                    demo,
                    {**flaky[tag], "headers": {**flaky[tag]["headers"], "X-Demo-Scenario": "text"}},
                ),
                flaky[tag]["llm"],
            )["text"]
        )
    assert items[2]["complete"] is False and items[2]["attempts"] == 3
    assert result.stat("sse/llm/retried") == 2 + 2
    assert result.stat("test/errbacks") == 1

    # Without the opt-in: the first drop is the answer, once, with its error, and a
    # dead letter when those are kept.
    again = [request_spec("anthropic", "drop_once", prompt="flaky, not retried")]
    letters = tmp_path / "dead.jsonl"
    single = by_tag(crawl(demo, again, SSE_DEAD_LETTERS=True, SSE_DEAD_LETTER_PATH=str(letters)))
    assert single[0]["complete"] is False and single[0]["attempts"] == 1
    assert single[0]["error"]["type"] == "connection_lost"
    [letter] = [json.loads(line) for line in letters.read_text().splitlines()]
    assert letter["kind"] == "llm_incomplete" and letter["item"]["text"] == single[0]["text"]


def test_a_background_response_resumes_after_its_last_sequence_number(demo: str) -> None:
    spec = request_spec("openai-responses", "drop", prompt="long job", background=True)
    result = crawl(demo, [spec])
    got = by_tag(result)[0]
    whole = REFERENCES["openai-responses"](
        record(demo, {**spec, "headers": {**spec["headers"], "X-Demo-Scenario": "text"}})
    )
    assert got["complete"] is True and got["attempts"] == 1
    assert got["text"] == whole["text"] and got["usage"] == whole["usage"]
    assert result.stat("sse/llm/resumed") == 1
    assert "Resuming LLM completion" in result.log


def test_an_error_status_gives_one_completion_with_the_apis_explanation(demo: str) -> None:
    spec = request_spec("openai-chat", "text")
    spec["headers"].pop("Authorization")
    result = crawl(demo, [spec])
    got = by_tag(result)[0]
    assert got["complete"] is False
    assert got["error"]["type"] == "http_401" and got["error"]["status"] == 401
    assert "API key" in got["error"]["body"]["error"]["message"]
    assert result.stat("test/errbacks") == 1


def _server_llm_stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(base + "/", timeout=5) as response:
        return dict(json.loads(response.read())["llm"])


@pytest.mark.parametrize("cap", [2, 0])
def test_streams_per_api_key_are_capped_or_429s_honoured(cap: int) -> None:
    base, stop = serve_in_thread(
        0, config=DemoConfig(chat_chunk_delay=0.005, llm_streams_per_key=2, llm_retry_after_ms=50)
    )
    try:
        specs = [request_spec("anthropic", "text", prompt=f"q{n}") for n in range(10)]
        result = crawl(base, specs, SSE_MAX_STREAMS_PER_KEY=cap)
        server = _server_llm_stats(base)
    finally:
        stop()
    items = by_tag(result)
    assert len(items) == 10 and all(item["complete"] for item in items.values())
    assert server["most_open_per_key"] <= 2
    if cap:
        assert server["rejected_429"] == 0 and result.stat("sse/errors/http_429") == 0
    else:  # refused with retry-after-ms, sent again (nothing was billed), all arrive
        assert server["rejected_429"] > 0
        assert result.stat("sse/errors/http_429") == server["rejected_429"]


def test_a_thousand_concurrent_completions_arrive_complete() -> None:
    base, stop = serve_in_thread(0, config=DemoConfig(chat_chunk_delay=0.02))
    try:
        fmts = ("openai-chat", "openai-responses", "anthropic", "gemini")
        specs = [
            request_spec(fmts[n % 4], "tools" if n % 5 == 0 else "text", prompt=f"p{n}")
            for n in range(1000)
        ]
        result = crawl(base, specs, CONCURRENT_REQUESTS=1000, CONCURRENT_REQUESTS_PER_DOMAIN=1000)
    finally:
        stop()
    items = by_tag(result)
    assert sorted(items) == list(range(1000))
    assert all(item["complete"] and item["error"] is None for item in items.values())
    assert result.stat("sse/streams_opened") == 1000


# -- what a stream can do to a completion besides ending well ------------------------------


def test_an_event_not_of_its_formats_shape_ends_the_completion_with_its_error() -> None:
    state = LLMStream("openai-chat", "http://127.0.0.1/")
    state.feed(
        "message", json.dumps({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hi"}}]})
    )
    assert state.feed("message", json.dumps({"id": "c1", "choices": [{"index": 0, "delta": 7}]}))
    got = state.result(end=CLOSED, failure=None)
    assert got.complete is False and got.text == "Hi"
    assert got.error is not None and got.error["type"] == "malformed_event"


def test_a_blocked_gemini_prompt_is_final_and_an_error_first_is_kept_in_auto_mode() -> None:
    blocked = LLMStream("gemini", "http://127.0.0.1/")
    frame = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}
    assert blocked.feed("message", json.dumps(frame))
    assert blocked.final
    assert blocked.result(end=CLOSED, failure=None).error["type"] == "prompt_blocked"  # type: ignore[index]
    for first, expected in (
        (
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            "anthropic",
        ),
        ({"error": {"message": "Rate limit", "type": "requests"}}, "openai-chat"),
        ({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}, "gemini"),
    ):
        auto = LLMStream("auto", "http://127.0.0.1/custom/path")
        assert auto.feed("error" if expected == "anthropic" else "message", json.dumps(first))
        got = auto.result(end=CLOSED, failure=None)
        assert got.format == expected and got.error == first["error"], got


def test_a_refusal_is_kept_apart_from_the_text_as_the_sdk_keeps_it() -> None:
    chunks = [
        {
            "id": "c",
            "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant", "refusal": ""}}],
        },
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"refusal": "I can't "}}]},
        {
            "id": "c",
            "model": "m",
            "choices": [{"index": 0, "delta": {"refusal": "help with that."}}],
        },
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    raw = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"
    from openai._models import construct_type
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    sdk: Any = ChatCompletionStreamState()
    for chunk in chunks:
        sdk.handle_chunk(construct_type(type_=ChatCompletionChunk, value=chunk))
    ours = ours_on(raw, "openai-chat")
    assert ours["refusal"] == sdk.current_completion_snapshot.choices[0].message.refusal
    assert ours["complete"] is True and ours["text"] == ""


def test_a_failed_background_response_is_delivered_once_not_resumed(demo: str) -> None:
    spec = request_spec("openai-responses", "error", prompt="bg fails", background=True)
    result = crawl(demo, [spec])
    got = by_tag(result)[0]
    assert got["complete"] is False and got["error"]["code"] == "server_error"
    assert result.stat("sse/llm/resumed") == 0 and result.stat("sse/streams_opened") == 1


def test_resend_post_does_not_resend_a_completion(demo: str) -> None:
    spec = request_spec("anthropic", "drop", prompt="no resend")
    result = crawl(demo, [spec], SSE_RESEND_POST=True)
    got = by_tag(result)[0]
    assert got["complete"] is False and got["attempts"] == 1
    assert result.stat("sse/streams_opened") == 1


def test_an_exhausted_quota_is_not_retried_and_a_permanent_500_gives_up(sse_server: Any) -> None:
    quota = json.dumps(
        {"error": {"message": "You exceeded your quota", "code": "insufficient_quota"}}
    )
    specs = [
        {**request_spec("openai-chat", "text"), "path": f"/status?code=429&key=quota&body={quota}"},
        {**request_spec("openai-chat", "text"), "path": "/status?code=500&key=down&body=down"},
    ]
    result = crawl(sse_server.base_url, specs, SSE_GIVE_UP_AFTER=0.3)
    items = by_tag(result)
    assert items[0]["error"]["status"] == 429
    assert items[0]["error"]["body"]["error"]["code"] == "insufficient_quota"
    assert len(sse_server.requests_for_key("quota")) == 1
    assert items[1]["error"]["status"] == 500 and items[1]["complete"] is False
    assert len(sse_server.requests_for_key("down")) >= 2
    assert result.stat("sse/give_up/insufficient_quota") == 1
    assert result.stat("test/errbacks") == 2


@pytest.mark.parametrize("delay", [0.3, 1.6])
def test_a_completion_cut_by_the_spider_closing_is_delivered_incomplete(delay: float) -> None:
    """0.3 s between chunks: the stream's burst is running at the close; 1.6 s: it is
    resting between bursts (longer than SSE_RELEASE_IDLE_CHAIN)."""
    base, stop = serve_in_thread(0, config=DemoConfig(chat_chunk_delay=delay))
    try:
        result = crawl(
            base, [request_spec("anthropic", "text", prompt="slow")], CLOSESPIDER_TIMEOUT=2
        )
    finally:
        stop()
    got = by_tag(result)[0]
    assert got["complete"] is False and got["error"]["type"] == "spider_closed", got
