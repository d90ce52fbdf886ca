"""``ValidationPipeline``: bad items go to the dead letters, good ones keep flowing.

A feed that changes its payload shape at 3 a.m. must not stop the crawl, and must not
put half-formed rows into the store either. Each item is checked against every
validator configured, in this order:

1. the spider attribute ``sse_validator``;
2. the setting ``SSE_VALIDATOR``;
3. the setting ``SSE_JSON_SCHEMA`` (a dict, a path to a ``.json`` file, or JSON text).

A validator (from 1 or 2, or an import path to one) is a callable that raises or
returns ``False`` for a bad item (it may be async), a pydantic model class (validated
with ``model_validate``), or a JSON schema dict (checked with ``jsonschema``). An item
that fails is dropped with :class:`InvalidItem` (a ``DropItem``) and recorded in the
crawl's :class:`~scrapy_sse.deadletter.DeadLetters` with the validator's error; for a
batch item (a list, or ``sse_batch_rows``) only its bad members are taken out.

Put it before the sinks: ``ITEM_PIPELINES = {ValidationPipeline: 100, SQLitePipeline:
800}``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import DropItem, NotConfigured
from scrapy.utils.misc import load_object

from .base import BatchingPipeline, batch_members, item_fields, json_default

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from typing_extensions import Self

    from ..deadletter import DeadLetters

#: The dead-letter kind of items that failed validation.
INVALID_ITEM = "invalid_item"

#: A check raises for a bad item (a validator's exception, or ``ValueError``).
Check = Callable[[Any], Awaitable[None]]


class InvalidItem(DropItem):
    """An item failed validation; ``error`` is the validator's exception."""

    #: How :class:`~scrapy_sse.deadletter.DeadLetters` files it (its item_dropped hook).
    sse_dead_letter_kind: str | None = INVALID_ITEM

    def __init__(self, error: BaseException, *, recorded: bool = False) -> None:
        super().__init__(f"Invalid item: {type(error).__name__}: {error}")
        self.error = self.sse_error = error
        if recorded:
            self.sse_dead_letter_kind = None  # already in the dead letters


def _json_ready(item: Any) -> Any:
    """The item's fields as JSON would carry them (dates as ISO text, and so on)."""
    return json.loads(json.dumps(item_fields(item), default=json_default))


def callable_check(func: Callable[[Any], Any]) -> Check:
    name = getattr(func, "__qualname__", repr(func))

    async def check(item: Any) -> None:
        result = func(item)
        if inspect.isawaitable(result):
            result = await result
        if result is False:
            raise ValueError(f"{name} returned False")

    return check


def pydantic_check(model: Any) -> Check:
    async def check(item: Any) -> None:
        model.model_validate(item_fields(item))

    return check


def json_schema_check(schema: dict[str, Any]) -> Check:
    try:
        jsonschema = BatchingPipeline.require("jsonschema", "validation")
    except ImportError as exc:
        raise NotConfigured(f"A JSON schema is configured but {exc}") from exc
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)  # a broken schema is a configuration error: fail loudly
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)

    async def check(item: Any) -> None:
        error = jsonschema.exceptions.best_match(validator.iter_errors(_json_ready(item)))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "the item"
            raise ValueError(f"{error.message} (at {where})")

    return check


def _is_pydantic_model(obj: Any) -> bool:
    return isinstance(obj, type) and callable(getattr(obj, "model_validate", None))


def build_check(spec: Any, *, source: str) -> Check:
    """A check from a validator spec: callable, pydantic model, schema, or import path."""
    if isinstance(spec, str):
        spec = load_object(spec)
    if isinstance(spec, dict):
        return json_schema_check(spec)
    if _is_pydantic_model(spec):
        return pydantic_check(spec)
    if callable(spec):
        return callable_check(spec)
    raise TypeError(
        f"{source} must be a callable, a pydantic model class, a JSON schema dict "
        f"or an import path to one of them, not {spec!r}"
    )


def load_schema(value: Any) -> dict[str, Any]:
    """``SSE_JSON_SCHEMA``: a dict, JSON text, or the path of a JSON file."""
    if isinstance(value, dict):
        return value
    text = str(value)
    if not text.lstrip().startswith("{"):
        text = Path(text).read_text(encoding="utf-8")
    schema = json.loads(text)
    if not isinstance(schema, dict):
        raise TypeError(f"SSE_JSON_SCHEMA must be a JSON object, not {schema!r}")
    return schema


class ValidationPipeline:
    """Drops invalid items into the dead letters (module doc)."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.checks: list[Check] = []
        spider_spec = getattr(crawler.spider, "sse_validator", None)
        if spider_spec is not None:
            self.checks.append(build_check(spider_spec, source="The spider's sse_validator"))
        if crawler.settings.get("SSE_VALIDATOR"):
            self.checks.append(
                build_check(crawler.settings["SSE_VALIDATOR"], source="SSE_VALIDATOR")
            )
        if crawler.settings.get("SSE_JSON_SCHEMA"):
            self.checks.append(json_schema_check(load_schema(crawler.settings["SSE_JSON_SCHEMA"])))
        if not self.checks:
            raise NotConfigured(
                "No validator: set SSE_VALIDATOR, SSE_JSON_SCHEMA or a spider attribute "
                "sse_validator"
            )
        # Imported here: the dead-letter module imports this package's base module.
        from ..deadletter import DeadLetters

        self.dead_letters: DeadLetters = DeadLetters.for_crawler(crawler).record_item_failures()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    async def validate(self, item: Any) -> None:
        """Raise the first validator's error for *item*, if any."""
        for check in self.checks:
            await check(item)

    async def process_item(self, item: Any) -> Any:
        members = batch_members(item)
        if len(members) == 1 and members[0] is item:
            try:
                await self.validate(item)
            except Exception as exc:
                self._count("invalid")
                raise InvalidItem(exc) from exc
            self._count("valid")
            return item
        return await self._process_batch(item, members)

    async def _process_batch(self, batch: Any, members: list[Any]) -> Any:
        valid = []
        last_error: BaseException | None = None
        for member in members:
            try:
                await self.validate(member)
            except Exception as exc:
                last_error = exc
                self._count("invalid")
                self.dead_letters.record(
                    INVALID_ITEM, item=member, url=getattr(batch, "url", None), error=exc
                )
            else:
                self._count("valid")
                valid.append(member)
        if last_error is None:
            return batch
        if not valid:
            raise InvalidItem(last_error, recorded=True)
        if isinstance(batch, list):
            batch[:] = valid  # keeps the batch's type and attributes
            return batch
        try:
            batch.sse_batch_rows = valid
        except AttributeError:
            return valid  # a read-only batch object: pass the good members on as a list
        return batch

    def _count(self, outcome: str) -> None:
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value(f"sse/validation/{outcome}")
