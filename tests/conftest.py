from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .servers.sse_server import SSEServer


def pytest_configure(config: pytest.Config) -> None:
    # test_parser_compiled.py runs the parser tests against the compiled build: make
    # sure that is what they import, or they would pass on the pure module.
    if os.environ.get("SCRAPY_SSE_EXPECT_COMPILED") == "1":
        import scrapy_sse.parser

        if not scrapy_sse.parser.COMPILED:
            raise pytest.UsageError(f"not the compiled parser: {scrapy_sse.parser.__file__}")


@pytest.fixture(scope="session")
def sse_server() -> Iterator[SSEServer]:
    with SSEServer() as server:
        yield server
