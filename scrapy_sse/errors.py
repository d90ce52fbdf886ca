"""Exceptions a spider can catch in an errback.

They carry what a user needs to act (status, content type, start of the body, the
limit that was hit) so that an API's JSON error is not hidden behind a vague message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .secrets import mask_url

if TYPE_CHECKING:
    from collections.abc import Sequence


class SSEError(Exception):
    """Base class for every error raised by scrapy-sse."""


class SSEEventTooLarge(SSEError):
    """An event (or a single line) grew past ``SSE_MAX_EVENT_SIZE``.

    ``events`` holds the complete events parsed from the same read before the limit
    was hit, so that nothing already received is lost.
    """

    def __init__(self, size: int, limit: int, events: Sequence[Any] = ()) -> None:
        super().__init__(
            f"SSE event of at least {size} characters exceeds SSE_MAX_EVENT_SIZE={limit}"
        )
        self.size = size
        self.limit = limit
        self.events = list(events)


class SSEResponseError(SSEError):
    """The server answered, but not with a usable event stream.

    Raised for a status other than 200 (redirects aside) and for a content type other
    than ``text/event-stream``. ``body`` is the first KiB of the response body: APIs put
    the reason there (``{"error": {"message": "Invalid API key"}}``).
    """

    def __init__(
        self,
        url: str,
        status: int,
        content_type: str,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        snippet = body.decode("utf-8", "replace")
        super().__init__(
            f"{mask_url(url)} did not return an event stream: HTTP {status}, "
            f"Content-Type {content_type or '(none)'!r}, body starts {snippet!r}"
        )
        self.url = url
        self.status = status
        self.content_type = content_type
        self.body = body
        self.headers = headers or {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.url, self.status, self.content_type, self.body, self.headers),
        )


class SSEStreamError(SSEError):
    """The stream could not go on: the connection failed, or the bytes could not be
    decoded (for example a compression error). ``reason`` is the stats key suffix."""

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.reason))
