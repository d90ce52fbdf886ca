"""A small, literal implementation of the WHATWG event-stream parsing rules.

It exists only to check the test servers themselves: ``test_servers.py`` decodes what
the servers send with it, so the expectations written next to a scenario (for example
:data:`servers.scenarios.GARBAGE_EVENTS`) are known to match the specification and
not merely the project's own parser.  It follows HTML Living Standard 9.2.6
("Interpreting an event stream") step by step and favours clarity over speed.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True)
class RefEvent:
    """A dispatched event: type, data and the last event ID at dispatch time."""

    type: str
    data: str
    last_event_id: str


class ReferenceParser:
    """Incremental parser: ``feed(bytes)`` returns the events completed by those bytes."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._at_start = True
        self._skip_lf = False
        self._data = ""
        self._event_type = ""
        self._id_buffer = ""
        self.last_event_id = ""
        self.retry: int | None = None
        self.comments: list[str] = []

    def feed(self, chunk: bytes) -> list[RefEvent]:
        """Decode ``chunk`` (split anywhere, even inside a character) and parse lines."""
        text = self._decoder.decode(chunk)
        if self._at_start and text:
            self._at_start = False
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf and text:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        self._buffer += text
        events: list[RefEvent] = []
        while True:
            cr, lf = self._buffer.find("\r"), self._buffer.find("\n")
            ends = [i for i in (cr, lf) if i >= 0]
            if not ends:
                break
            end = min(ends)
            line = self._buffer[:end]
            if self._buffer[end] == "\r":
                if end + 1 < len(self._buffer):
                    skip = 2 if self._buffer[end + 1] == "\n" else 1
                else:  # a CR at the end: a following LF belongs to the same line end
                    skip, self._skip_lf = 1, True
            else:
                skip = 1
            self._buffer = self._buffer[end + skip :]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> RefEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:])
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry" and value and all("0" <= c <= "9" for c in value):
            self.retry = int(value)  # anything else than ASCII digits is ignored
        return None

    def _dispatch(self) -> RefEvent | None:
        self.last_event_id = self._id_buffer
        if self._data == "":
            self._event_type = ""
            return None
        data = self._data[:-1] if self._data.endswith("\n") else self._data
        event = RefEvent(self._event_type or "message", data, self.last_event_id)
        self._data = ""
        self._event_type = ""
        return event


def parse_all(chunks: list[bytes] | bytes) -> tuple[list[RefEvent], ReferenceParser]:
    """Parse a whole body (or list of chunks); pending data at EOF is discarded."""
    parser = ReferenceParser()
    events: list[RefEvent] = []
    for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.feed(b""))
    return events, parser
