"""Item pipelines that store items in batches, and validation that sets bad items aside.

``ITEM_PIPELINES = {"scrapy_sse.pipelines.SQLitePipeline": 800}`` stores any items
(dicts, dataclasses, attrs, ``scrapy.Item``) in batches. Sinks with optional drivers
import them only when enabled, so importing this package needs no extra.
"""

from .base import BatchingPipeline, MissingDependencyError
from .parquet import ParquetPipeline
from .sqlite import SQLitePipeline
from .validation import InvalidItem, ValidationPipeline

__all__ = [
    "BatchingPipeline",
    "InvalidItem",
    "MissingDependencyError",
    "ParquetPipeline",
    "SQLitePipeline",
    "ValidationPipeline",
]
