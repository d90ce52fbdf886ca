"""A literal, slow transcription of the WHATWG event-stream processing model.

It decodes the whole stream at once and walks it line by line exactly as the spec's
prose reads, so the property tests can compare the fast incremental parser against
it on arbitrary input.
"""

from __future__ import annotations

import re

from scrapy_sse.events import SSEEvent

_LINE_END = re.compile(r"\r\n|\r|\n")


def reference_parse(stream: bytes) -> list[SSEEvent]:
    text = stream.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = _LINE_END.split(text)
    # The last piece has no line end: it is an incomplete line, discarded at EOF.
    lines.pop()
    events: list[SSEEvent] = []
    data = ""
    event_type = ""
    last_id = ""
    retry: int | None = None
    for line in lines:
        if line == "":
            if data == "":
                event_type = ""
                retry = None
                continue
            if data.endswith("\n"):
                data = data[:-1]
            events.append(SSEEvent(event_type or "message", data, last_id, retry))
            data = ""
            event_type = ""
            retry = None
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            field, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            field, value = line, ""
        if field == "event":
            event_type = value
        elif field == "data":
            data += value + "\n"
        elif field == "id":
            if "\0" not in value:
                last_id = value
        elif field == "retry" and value and all("0" <= c <= "9" for c in value):
            retry = int(value)
    return events
