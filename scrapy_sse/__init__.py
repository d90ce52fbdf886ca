"""Stream Server-Sent Events through Scrapy spiders, middlewares and item pipelines."""

from .addon import SSEAddon
from .errors import SSEError, SSEEventTooLarge, SSEResponseError, SSEStreamError
from .events import SSEBatch, SSEComment, SSEEvent, SSEEventItem
from .http import SSERequest, SSEResponse
from .parser import SSEParser
from .stream import SSEStream

__all__ = [
    "SSEAddon",
    "SSEBatch",
    "SSEComment",
    "SSEError",
    "SSEEvent",
    "SSEEventItem",
    "SSEEventTooLarge",
    "SSEParser",
    "SSERequest",
    "SSEResponse",
    "SSEResponseError",
    "SSEStream",
    "SSEStreamError",
]
__version__ = "0.1.0"
