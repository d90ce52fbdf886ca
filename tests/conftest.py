from __future__ import annotations

from collections.abc import Iterator

import pytest

from .servers.sse_server import SSEServer


@pytest.fixture(scope="session")
def sse_server() -> Iterator[SSEServer]:
    with SSEServer() as server:
        yield server
