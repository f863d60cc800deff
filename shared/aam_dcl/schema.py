"""Schema inference over a chunk of records: column types, samples and counts.

Types form a small lattice: integer < numeric; date < datetime; anything else mixed is
string. ``json`` is for objects and arrays; a column whose values are all null is string.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from decimal import Decimal
from itertools import chain
from operator import methodcaller
from typing import Any

from aam_dcl.messages import Column, Record, TableBatch, TableSchema

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?$"
)

_NONE = type(None)
_PY_TYPES: dict[type, str] = {
    bool: "boolean",
    int: "integer",
    float: "numeric",
    Decimal: "numeric",
    dict: "json",
    list: "json",
    dt.datetime: "datetime",
    dt.date: "date",
}


def merge_types(a: str | None, b: str) -> str:
    """The narrowest type that holds values of both types."""
    if a is None or a == b:
        return b
    pair = {a, b}
    if pair == {"integer", "numeric"}:
        return "numeric"
    if pair == {"date", "datetime"}:
        return "datetime"
    return "string"


def _string_type(values: Sequence[str]) -> str:
    """date or datetime if every string looks like one, else string (stops at the first miss)."""
    found = "date"
    for value in values:
        if _DATE_RE.match(value):
            continue
        if _DATETIME_RE.match(value):
            found = "datetime"
            continue
        return "string"
    return found


def infer_column_type(values: Sequence[Any]) -> str:
    kinds = set(map(type, values))
    kinds.discard(_NONE)
    if not kinds:
        return "string"
    if kinds == {str}:  # the common case: one regex pass, stopping at the first miss
        return _string_type([v for v in values if v is not None])
    result: str | None = None
    for kind in kinds:
        if kind is str:
            found = _string_type([v for v in values if type(v) is str])
        else:
            found = _PY_TYPES.get(kind, "string")
        result = merge_types(result, found)
    return result or "string"


def infer_schema(records: Sequence[Record], primary_key: Sequence[str] = ()) -> TableSchema:
    """Columns in order of first appearance, typed over all given records."""
    names = dict.fromkeys(chain.from_iterable(records))  # C speed, keeps first-seen order
    columns = [
        Column(n, infer_column_type(list(map(methodcaller("get", n), records)))) for n in names
    ]
    return TableSchema(columns, list(primary_key))


def table_batch(
    name: str,
    records: list[Record],
    *,
    primary_key: Sequence[str] = (),
    max_samples: int,
    total_count: int | None = None,
    with_records: bool = True,
) -> TableBatch:
    """A table's part of a stream entry: schema, up to ``max_samples`` samples and stats."""
    return TableBatch(
        name=name,
        schema=infer_schema(records, primary_key),
        samples=records[:max_samples],
        total_count=len(records) if total_count is None else total_count,
        records=records if with_records else None,
    )
