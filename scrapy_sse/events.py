"""Value types produced by the parser and handed to spiders.

``SSEEvent`` is created once per event on the hot path, so it is a named tuple built
with one C-level call, with no validation and no copies. It knows nothing about Scrapy:
``source`` is whatever the transport attached (an ``SSEResponse`` in a crawl), which
gives the event its URL, status, headers and request without a per-event cost.
"""

from __future__ import annotations

import json as _json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple


class _EventFields(NamedTuple):
    event: str
    data: str
    id: str
    retry: int | None
    source: Any
    own_id: bool


class SSEEvent(_EventFields):
    """One dispatched event, as the WHATWG processing model defines it.

    ``event`` is the type (``"message"`` unless the server named one). ``id`` is the
    last event id in effect when the event was dispatched (it persists across events
    until the server changes or resets it), not only an id sent with this event.
    ``retry`` is the reconnection time in milliseconds if this event's block carried a
    valid ``retry:`` field, else ``None``. ``own_id`` says whether the block itself
    carried the ``id:`` line (``id`` may be inherited from an earlier event): only such
    an event can be recognised as one the server resent after a reconnect.

    A named tuple underneath: fields are read by name through C-level getters, and the
    parser builds one per event with a single C-level call (:func:`new_event`), which is
    measurably cheaper than running a Python ``__init__``. Equality ignores ``source``.
    """

    __slots__ = ()

    def __new__(  # noqa: PLR0917 - the tuple's fields, in order
        cls,
        event: str = "message",
        data: str = "",
        id: str = "",
        retry: int | None = None,
        source: Any = None,
        own_id: bool = False,
    ) -> SSEEvent:
        return new_event((event, data, id, retry, source, own_id))

    def json(self, **kwargs: Any) -> Any:
        """Parse ``data`` as JSON (raises ``ValueError`` when it is not JSON)."""
        return _json.loads(self.data, **kwargs)

    @property
    def response(self) -> Any:
        """The stream's ``SSEResponse`` (``None`` outside a crawl)."""
        return self.source

    @property
    def url(self) -> str | None:
        return getattr(self.source, "url", None)

    @property
    def status(self) -> int | None:
        return getattr(self.source, "status", None)

    @property
    def headers(self) -> Any:
        return getattr(self.source, "headers", None)

    @property
    def request(self) -> Any:
        """The stream's request (the ``SSERequest`` the spider yielded)."""
        stream = getattr(self.source, "stream", None)
        return getattr(stream, "request", None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SSEEvent):
            return NotImplemented
        return self[:4] == other[:4]

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash(self[:4])

    def __repr__(self) -> str:
        data = self.data if len(self.data) <= 80 else self.data[:77] + "..."
        return (
            f"SSEEvent(event={self.event!r}, id={self.id!r}, data={data!r}"
            + (f", retry={self.retry}" if self.retry is not None else "")
            + ")"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # The source (a live response) is not picklable and not part of the value.
        return (SSEEvent, (self.event, self.data, self.id, self.retry, None, self.own_id))


#: The one way an event is built: ``new_event((event, data, id, retry, source, own_id))``,
#: a single C-level call (the parser makes one per event; ``SSEEvent(...)`` uses it too).
new_event: Callable[[tuple[str, str, str, int | None, Any, bool]], SSEEvent] = partial(
    tuple.__new__, SSEEvent
)


class SSEComment:
    """A comment line (``: text``), surfaced only to consumers that ask for them.

    Servers send comments as heartbeats; they carry no event but prove the connection
    is alive.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SSEComment) and other.text == self.text

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SSEComment({self.text!r})"


class SSEBatch(list[SSEEvent]):
    """The events a batch-mode callback receives at once (``SSERequest(batch_size=N)``).

    A list, so it can also be yielded as is to a batching sink, which stores it without
    one pipeline call per event.
    """

    __slots__ = ("response",)

    def __init__(self, events: list[SSEEvent], response: Any = None) -> None:
        super().__init__(events)
        self.response = response

    @property
    def url(self) -> str | None:
        return getattr(self.response, "url", None)


@dataclass(slots=True)
class SSEEventItem:
    """The item a stream yields when its request has no callback.

    A dataclass, so feed exports and every itemadapter-based pipeline take it as is.
    ``json`` holds ``data`` parsed as JSON when it is JSON, else ``None``.
    """

    url: str
    event: str
    id: str
    data: str
    json: Any
    received_at: float


#: The JSON scanner behind ``json.loads``, called directly: ``loads`` adds a type check,
#: a BOM check and a regex match for trailing whitespace, a third of the cost of parsing
#: a typical 200-byte event, which a per-event item pays on every event.
_scan_json: Callable[[str, int], tuple[Any, int]] = _json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def parse_json_or_none(data: str) -> Any:
    """JSON value of ``data``, or ``None`` when ``data`` is not JSON (``[DONE]``, text)."""
    if not data or data[0] not in '{["-0123456789tfn':
        return None
    try:
        value, end = _scan_json(data, 0)
    except (StopIteration, ValueError):
        return None
    if end == len(data):
        return value
    try:  # something follows the value: JSON only if it is whitespace
        return _json.loads(data)
    except ValueError:
        return None
