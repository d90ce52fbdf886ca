"""The layers import one way: pure parser, events and policy (standard library only);
the downloader side (handler, downloader middleware, transports) never loads the
spider side or the sinks. Checked in fresh interpreters, as a user's import would."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PURE = [
    "scrapy_sse.parser",
    "scrapy_sse.events",
    "scrapy_sse.policy",
    "scrapy_sse.errors",
    "scrapy_sse.durable",
]
DOWNLOADER_SIDE = [
    "scrapy_sse.handler",
    "scrapy_sse.downloadermw",
    "scrapy_sse.transport.twisted",
    "scrapy_sse.transport.aiohttp",
]
SPIDER_SIDE_AND_SINKS = (
    "scrapy_sse.dispatch",
    "scrapy_sse.spidermw",
    "scrapy_sse.reconnect",
    "scrapy_sse.deadletter",
    "scrapy_sse.pipelines",
)


def loaded_after_import(module: str) -> list[str]:
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return list(json.loads(out.stdout))


@pytest.mark.parametrize("module", PURE)
def test_pure_layers_load_no_scrapy_or_twisted(module: str) -> None:
    third_party = {
        name.split(".")[0]
        for name in loaded_after_import(module)
        if name.split(".")[0] in {"scrapy", "twisted", "itemadapter", "zope", "aiohttp"}
    }
    assert third_party == set()


@pytest.mark.parametrize("module", DOWNLOADER_SIDE)
def test_the_downloader_side_loads_no_spider_side_or_sink(module: str) -> None:
    loaded = loaded_after_import(module)
    assert [name for name in loaded if name.startswith(SPIDER_SIDE_AND_SINKS)] == []
