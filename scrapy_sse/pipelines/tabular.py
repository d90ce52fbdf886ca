"""Rows as tab-separated text: PostgreSQL's ``COPY`` text format and ClickHouse's
``TabSeparated``, which escape alike (backslash, tab, newline and carriage return get
a backslash; NULL is ``\\N``).

Why a format of our own rather than the drivers' row writers: a row writer is called
once per row and converts value by value in Python (psycopg's ``write_row``, a
``json.dumps`` per ``JSONEachRow`` line), which was most of what a sink cost per row.
Here a batch is encoded a column at a time: a column of text (an event's ``url``,
``event``, ``id``, ``data`` and its JSON) is checked for characters to escape with
one scan of the whole column and is used as it is when it has none, and the lines
are joined by ``str.join``, in C. Values of other types go through the sink's own
``text_of`` (numbers, booleans, nested values as JSON); a value it cannot write
(``Unencodable``) sends the batch back to the driver's row writer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Unencodable", "encode_columns", "number_text"]

_SPECIAL = ("\\", "\t", "\n", "\r")
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
NULL = "\\N"


def number_text(value: Any, true: str, false: str) -> str | None:
    """A bool (as *true*/*false*), int or float as text; ``None`` for anything else."""
    kind = type(value)
    if kind is bool:
        return true if value else false
    if kind is int:
        return str(value)
    if kind is float:
        return repr(value)  # (shortest round trip; inf and nan as both stores read them)
    return None


class Unencodable(TypeError):
    """A value this format cannot carry as the sink needs it (``text_of`` raises it)."""


def encode_columns(
    columns: Sequence[list[Any]],
    text_types: Sequence[frozenset[type]],
    text_of: Sequence[Callable[[Any], str | None]],
) -> str:
    """The lines of a batch given column by column (equal lengths): a value whose type
    is in the column's ``text_types`` is written as it is (escaped), ``None`` as NULL,
    any other through the column's ``text_of`` (``None``: NULL). Raises
    :class:`Unencodable` when ``text_of`` does."""
    texts = [
        _column(values, as_is, convert)
        for values, as_is, convert in zip(columns, text_types, text_of, strict=True)
    ]
    if not texts:
        return ""
    return "\n".join(map("\t".join, zip(*texts, strict=True))) + "\n"


def _column(
    values: list[Any], as_is: frozenset[type], convert: Callable[[Any], str | None]
) -> list[str]:
    kinds = set(map(type, values))
    kinds.discard(type(None))
    if not kinds <= as_is:
        values = [v if v is None or type(v) in as_is else convert(v) for v in values]
    has_null = None in values
    joined = "".join([v for v in values if v is not None] if has_null else values)
    if any(c in joined for c in _SPECIAL):
        values = [None if v is None else v.translate(_ESCAPES) for v in values]
    if has_null:
        values = [NULL if v is None else v for v in values]
    return values
