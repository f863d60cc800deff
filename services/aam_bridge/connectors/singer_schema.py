"""Singer streams' JSON schemas as column types, and records converted to match them.

| JSON schema (``"null"`` aside)                 | column type | a value                        |
|------------------------------------------------|-------------|--------------------------------|
| ``string`` + ``format: date-time``             | datetime    | ``datetime.fromisoformat``     |
| ``string`` + ``format: date``                  | date        | ``date.fromisoformat``         |
| ``string`` (other formats too)                 | string      | as is; other JSON as its text  |
| ``integer``                                    | integer     | as is                          |
| ``number``, ``[integer, number]``              | numeric     | a Decimal of the tap's digits  |
| ``boolean``                                    | boolean     | as is                          |
| ``object``, ``array``, ``{}`` (anything)       | json        | as is                          |
| several of these                               | string      | as its text                    |

A value a converter cannot parse (a ``date-time`` string that is no ISO 8601 time) is kept as
the tap sent it: the store decides what a mismatched value becomes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from aam_bridge.connectors._values import as_is, as_string
from aam_dcl.messages import Record

Converter = Callable[[Any], Any]


def column_type(prop: Any) -> str | None:
    """The column type of one property's JSON schema; None for a property that is only
    ever null (the bridge infers it from the values, if any come)."""
    if not isinstance(prop, Mapping):
        return "json"
    types, formats = _types_of(prop)
    if types is None:  # no type: ``{}`` validates anything
        return "json"
    types.discard("null")
    if not types:
        return None
    if types <= {"integer"}:
        return "integer"
    if types <= {"integer", "number"}:
        return "numeric"
    if types == {"boolean"}:
        return "boolean"
    if types <= {"object", "array"}:
        return "json"
    if types == {"string"}:
        if formats == {"date-time"}:
            return "datetime"
        if formats == {"date"}:
            return "date"
        return "string"
    return "string"


def _types_of(prop: Mapping[str, Any]) -> tuple[set[str] | None, set[str]]:
    """The JSON types a property allows (None: any) and the formats of its string forms,
    through anyOf / oneOf alternatives."""
    alternatives = prop.get("anyOf", prop.get("oneOf"))
    if isinstance(alternatives, list) and "type" not in prop:
        types: set[str] = set()
        formats: set[str] = set()
        for alternative in alternatives:
            if not isinstance(alternative, Mapping):
                return None, set()
            inner, inner_formats = _types_of(alternative)
            if inner is None:
                return None, set()
            types |= inner
            formats |= inner_formats
        return types, formats
    declared = prop.get("type")
    if declared is None:
        return None, set()
    names = {declared} if isinstance(declared, str) else set(declared)
    fmt = prop.get("format")
    return {str(n) for n in names}, {fmt} if isinstance(fmt, str) and "string" in names else set()


def _datetime(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _date(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            parsed = _datetime(value)  # some taps send a date as midnight of that day
            return parsed.date() if isinstance(parsed, dt.datetime) else value
    return value


def _numeric(value: Any) -> Any:
    """Exact: lines are parsed with Decimal for numbers a double does not hold, and a float
    of 15 digits or fewer is its shortest repr, which is the tap's number."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):  # a tap that writes numbers as strings (singer-decimal)
        try:
            number = Decimal(value)
        except InvalidOperation:
            return value
        return number if number.is_finite() else None
    return value


_CONVERTERS: dict[str | None, Converter] = {
    "datetime": _datetime,
    "date": _date,
    "numeric": _numeric,
    "string": as_string,
}


@dataclass(frozen=True, slots=True)
class StreamSchema:
    """One stream's columns as a SCHEMA message (or the catalog) gives them."""

    column_types: dict[str, str]
    key: tuple[str, ...]
    _convert: dict[str, Converter]

    @classmethod
    def of(cls, schema: Any, key: Iterable[str]) -> StreamSchema:
        props = schema.get("properties") if isinstance(schema, Mapping) else None
        types: dict[str, str] = {}
        if isinstance(props, Mapping):
            for name, prop in props.items():
                found = column_type(prop)
                if found is not None:
                    types[str(name)] = found
        convert = {n: _CONVERTERS[t] for n, t in types.items() if t in _CONVERTERS}
        return cls(types, tuple(key), convert)

    def record(self, raw: Mapping[str, Any]) -> Record:
        """``raw`` with each value converted to its column's type."""
        convert = self._convert
        return {k: convert.get(k, as_is)(v) if v is not None else None for k, v in raw.items()}

    def changed_types(self, other: StreamSchema) -> dict[str, tuple[str, str]]:
        """Columns of both whose type differs: name -> (this type, the other's)."""
        return {
            name: (kind, other.column_types[name])
            for name, kind in self.column_types.items()
            if name in other.column_types and other.column_types[name] != kind
        }
