"""How JSON-decoded values become PostgreSQL COPY rows for the PostgreSQL sink: the logical
types' SQL spelling, a type check per column (conversion only for the odd column), and the
direct path's parsed dates and times. ``numeric`` is exact (``_decimals``): a column of
floats travels as their repr text, which asyncpg reads into a numeric digit for digit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from decimal import Decimal
from itertools import repeat
from operator import attrgetter
from typing import Any

import orjson

from aam_dcl.errors import SinkDataError
from aam_dcl.messages import Record
from dcl_worker.sinks._decimals import exact_json, float_texts, only_floats, to_decimal
from dcl_worker.sinks._sql import TablePart

TYPES = {
    "string": "text",
    "integer": "bigint",
    "numeric": "numeric",
    "boolean": "boolean",
    "datetime": "timestamp with time zone",
    "date": "date",
    "json": "jsonb",
}


# What the staging table holds: types asyncpg encodes straight from JSON-decoded values.
# datetime, date and json travel as text and the server casts them (and reads the offsets);
# floats of a numeric column as doubles, which the merge reads through their text
# (PostgreSQL's float8out is the shortest decimal that reads back as the double, as repr()).
STAGE = {**TYPES, "datetime": "text", "date": "text", "json": "text", "float": "double precision"}
FROM_STAGE = {"float": "::text::numeric"}
_DOUBLE_INTS = 2**53


_NONE = type(None)


# Python types a staged column takes without conversion; anything else goes through _CONVERT.
_NATIVE: dict[str, frozenset[type]] = {
    "string": frozenset({str, _NONE}),
    "integer": frozenset({int, _NONE}),
    "numeric": frozenset({int, Decimal, _NONE}),  # floats: float_texts
    "boolean": frozenset({bool, _NONE}),
    "datetime": frozenset({str, _NONE}),
    "date": frozenset({str, _NONE}),
    "json": frozenset({_NONE}),
}


class NotDirect(ValueError):
    """A batch's values that the direct COPY cannot send as they are: the staging path decides."""


def direct_rows(table: str, logical: dict[str, str], part: TablePart) -> Iterator[tuple[Any, ...]]:
    """One batch's COPY rows for the table itself: its columns, then batch id and version."""
    where = f"batch {part.batch_id}: table {table}"
    try:
        values = [
            column_values(part.records, c, kind, lambda _: where) for c, kind in logical.items()
        ]
    except SinkDataError as exc:  # the staging path converts upfront and raises it again
        raise NotDirect(str(exc)) from exc
    direct = _direct_values(logical, values)
    if direct is None:
        raise NotDirect(f"batch {part.batch_id}: a date or time Python does not read")
    return zip(*direct, repeat(part.batch_id), repeat(part.version))


def _direct_values(logical: dict[str, str], values: list[list[Any]]) -> list[list[Any]] | None:
    """Staged values with dates and datetimes parsed, as the table's own columns take them."""
    out = []
    try:
        for kind, column in zip(logical.values(), values, strict=True):
            if kind == "datetime":
                column = _as_utc(_parse(dt.datetime.fromisoformat, column))
            elif kind == "date":
                column = _parse(dt.date.fromisoformat, column)
            out.append(column)
    except ValueError:
        return None  # a format Python does not read: let the server's cast decide
    return out


def _parse(parse: Callable[[str], Any], column: list[Any]) -> list[Any]:
    try:
        return list(map(parse, column))  # no per-value Python code when there is no NULL
    except TypeError:
        return [None if v is None else parse(v) for v in column]


def _as_utc(column: list[dt.datetime | None]) -> list[dt.datetime | None]:
    """Naive datetimes read as UTC (asyncpg would take them as the worker's local time)."""
    if None not in map(attrgetter("tzinfo"), filter(None, column)):
        return column
    return [v if v is None or v.tzinfo is not None else v.replace(tzinfo=dt.UTC) for v in column]


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return str(value)
    return orjson.dumps(value, default=exact_json).decode()


def _to_int(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    if isinstance(value, str):
        return int(value)
    raise TypeError(f"{value!r} is not an integer")


def _to_bool(value: Any) -> bool:
    raise TypeError(f"{value!r} is not a boolean")


def _to_temporal(value: Any) -> str:
    if isinstance(value, str):
        return value
    isoformat = getattr(value, "isoformat", None)  # datetime/date from an in-process producer
    if isoformat is None or isinstance(value, bool | int | float):
        raise TypeError(f"{value!r} is not an ISO 8601 date or time")
    return str(isoformat())


def _to_json(value: Any) -> str:
    return orjson.dumps(value, default=exact_json).decode()  # jsonb keeps a Decimal's digits


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "string": _to_text,
    "integer": _to_int,
    "numeric": to_decimal,
    "boolean": _to_bool,
    "datetime": _to_temporal,
    "date": _to_temporal,
    "json": _to_json,
}


def column_values(
    records: list[Record], column: str, logical: str, where: Callable[[int], str]
) -> list[Any]:
    """One column's values as the table's own column takes them; checks types once per column.

    ``where(index)`` names the batch and table of a record, for the error a bad value raises.
    """
    values: list[Any] = list(map(dict.get, records, repeat(column)))  # 3x a methodcaller
    kinds = set(map(type, values))
    if kinds <= _NATIVE[logical]:
        return values  # the common case: no per-value work
    if logical == "numeric" and only_floats(kinds):
        return float_texts(values)  # a column of floats: their repr, exact
    return [_convert_one(column, logical, i, v, where) for i, v in enumerate(values)]


def staged_values(
    records: list[Record], column: str, logical: str, where: Callable[[int], str]
) -> tuple[list[Any], str]:
    """One column's values as the staging table takes them, and their staged kind: a numeric
    column of floats is staged as ``float`` (double precision: encoding a numeric costs
    asyncpg about 1 µs a value, a double 0.02 µs) and read back exactly by the merge."""
    if logical == "numeric":
        values: list[Any] = list(map(dict.get, records, repeat(column)))
        if doubles_hold(values):
            return values, "float"
    return column_values(records, column, logical, where), logical


def doubles_hold(values: list[Any]) -> bool:
    """Whether a double holds every value as it is: floats, and ints of at most 2**53."""
    kinds = set(map(type, values))
    if not only_floats(kinds) or float not in kinds:
        return False
    if int not in kinds:
        return True
    ints = [v for v in values if type(v) is int]
    return max(ints) <= _DOUBLE_INTS and min(ints) >= -_DOUBLE_INTS


def _convert_one(
    column: str, logical: str, index: int, value: Any, where: Callable[[int], str]
) -> Any:
    if type(value) in _NATIVE[logical]:
        return value
    try:
        return _CONVERT[logical](value)
    except (TypeError, ValueError, ArithmeticError) as exc:  # Decimal raises ArithmeticErrors
        raise SinkDataError(
            f"{where(index)}: column {column}: "
            f"{value!r} cannot be stored as {TYPES[logical]}: {exc}"
        ) from exc
