"""The ``/garbage`` body: malformed event-stream input mixed with valid events.

Every malformed construct has a rule in the WHATWG parsing algorithm, so a compliant
client must produce exactly :data:`GARBAGE_EVENTS` and end with reconnection time
:data:`GARBAGE_RETRY`.  ``test_servers.py`` checks this against the reference parser,
which keeps the expectation honest when the body is edited.
"""

from __future__ import annotations

from typing import NamedTuple


class ExpectedEvent(NamedTuple):
    """An event a compliant parser dispatches: type, data, last event ID."""

    type: str
    data: str
    last_event_id: str


GARBAGE_BYTES = b"".join(
    [
        b": garbage scenario - a comment line is ignored\n",
        b"id: g1\n",
        b"data: first\n",
        b"\n",  # -> event 1
        b"this line has no colon\n",  # field name is the whole line: unknown, ignored
        b"data:no-space\n",  # no space after the colon is fine
        b"unknown: value\n",  # unknown field, ignored
        b"event: custom\n",
        b"id: bad\x00id\n",  # an id containing NUL is ignored (last id stays g1)
        b"retry: 10abc\n",  # not all digits: ignored
        b"data: caf\xc3\xa9 \xff\xfe \xe2\x82\n",  # \xff, \xfe and a truncated euro sign
        b"\n",  # -> event 2 (invalid bytes become U+FFFD)
        b"retry: 1500\n",  # valid: reconnection time 1500 ms
        b"data : not-a-data-field\n",  # field name is "data " (with the space): ignored
        b"data:  two-spaces\n",  # only ONE leading space is removed
        b"data\n",  # field "data" with empty value: appends an empty line
        b"id\n",  # field "id" with empty value: resets the last event id
        b"\n",  # -> event 3 (" two-spaces\n")
        b"event: ignored-type\n",
        b"id: g4\n",
        b"\n",  # no data: nothing dispatched, but the last event id becomes g4
        b"data: after-empty\n",
        b"\n",  # -> event 4 (type reset to message)
        b":\n",  # bare colon: comment
        b"Data: wrong-case\n",  # field names are case-sensitive: ignored
        b"data: a:b:c\n",  # only the first colon separates
        b"retry:\n",  # empty retry: ignored
        b"\n",  # -> event 5
        b"data: cr-line\r",  # CR, CRLF and LF may be mixed in one stream
        b"data: crlf-line\r\n",
        b"\r\n",  # -> event 6
        b"data: never-dispatched\n",  # no blank line before EOF: must be discarded
    ]
)

GARBAGE_EVENTS: tuple[ExpectedEvent, ...] = (
    ExpectedEvent("message", "first", "g1"),
    ExpectedEvent("custom", "no-space\ncaf\u00e9 \ufffd\ufffd \ufffd", "g1"),
    ExpectedEvent("message", " two-spaces\n", ""),
    ExpectedEvent("message", "after-empty", "g4"),
    ExpectedEvent("message", "a:b:c", "g4"),
    ExpectedEvent("message", "cr-line\ncrlf-line", "g4"),
)

GARBAGE_RETRY = 1500
