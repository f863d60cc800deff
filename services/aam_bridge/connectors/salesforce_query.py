"""Salesforce's side of a read: the fields to select (from describe), their values as the
bridge should type them, the cursor and the SOQL that resumes after it, and error bodies.

Pure functions and values, no I/O: ``salesforce.py`` does the requests.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aam_bridge.connectors._values import as_is, as_numeric, as_string, one_line
from aam_dcl.errors import ConnectorError
from aam_dcl.messages import Record

CURSOR_FIELD = "SystemModstamp"  # indexed, and bumped by system changes too (deletes included)
KEY_FIELD = "Id"
DELETED_FIELD = "IsDeleted"

# describe's field types -> our column types; every other type is a string.
_TYPES: dict[str, str] = {
    "int": "integer",
    "long": "integer",
    "double": "numeric",
    "currency": "numeric",
    "percent": "numeric",
    "boolean": "boolean",
    "date": "date",
    "datetime": "datetime",
    "address": "json",
    "location": "json",
}
_ID_RE = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # object and field API names
_LIMIT_RE = re.compile(r"api-usage=(\d+)/(\d+)")

Converter = Callable[[Any], Any]


def column_type(salesforce_type: str) -> str:
    return _TYPES.get(salesforce_type, "string")


def is_api_name(name: object) -> bool:
    return isinstance(name, str) and _NAME_RE.match(name) is not None


# --- values ------------------------------------------------------------------------------


def _as_integer(value: Any) -> Any:
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def _as_datetime(value: Any) -> Any:
    """``2013-05-20T20:49:32.000+0000`` -> ``2013-05-20T20:49:32.000+00:00`` (ISO 8601)."""
    if isinstance(value, str) and len(value) > 5 and value[-5] in "+-" and value[-4:].isdigit():
        return f"{value[:-2]}:{value[-2:]}"
    return value


_CONVERTERS: dict[str, Converter] = {
    "numeric": as_numeric,
    "integer": _as_integer,
    "datetime": _as_datetime,
    "string": as_string,
}


# --- fields ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldPlan:
    """What to select from one object and how each selected field becomes a record value."""

    object_name: str
    select: tuple[str, ...]
    column_types: Mapping[str, str]  # the record's columns, in order, and their types
    sees_deletes: bool  # IsDeleted is selected: a row with IsDeleted=true is a delete
    missing: tuple[str, ...] = ()  # listed fields the object does not have (any more)

    def record(self, raw: Mapping[str, Any]) -> Record:
        return {
            name: _CONVERTERS.get(kind, as_is)(raw.get(name))
            for name, kind in self.column_types.items()
        }


def plan_fields(object_name: str, describe: Any, wanted: tuple[str, ...] | None) -> FieldPlan:
    """The plan for ``object_name`` from its describe body: every field but compound ones
    (other than Name) if ``wanted`` is None, else the wanted ones; Id and SystemModstamp
    always, IsDeleted selected whenever the object has it."""
    types = _describe_types(object_name, describe)
    for required in (KEY_FIELD, CURSOR_FIELD):
        if required not in types:
            raise ConnectorError(
                f"salesforce {object_name} has no {required} field: it cannot be read "
                "incrementally; remove it from options.objects"
            )
    missing: list[str] = []
    if wanted is None:
        compound = {
            str(f["compoundFieldName"])
            for f in describe["fields"]
            if isinstance(f, dict) and f.get("compoundFieldName")
        }
        columns = [n for n in types if n not in compound or n == "Name"]
    else:
        spelled = {name.lower(): name for name in types}  # API names ignore case
        columns = [KEY_FIELD]
        for name in wanted:
            actual = spelled.get(name.lower())
            if actual is None:
                missing.append(name)
            elif actual not in columns:
                columns.append(actual)
        if CURSOR_FIELD not in columns:
            columns.append(CURSOR_FIELD)
    sees_deletes = DELETED_FIELD in types
    select = [*columns, DELETED_FIELD] if sees_deletes and DELETED_FIELD not in columns else columns
    column_types = {n: column_type(types[n]) for n in columns}
    return FieldPlan(object_name, tuple(select), column_types, sees_deletes, tuple(missing))


def _describe_types(object_name: str, describe: Any) -> dict[str, str]:
    fields = describe.get("fields") if isinstance(describe, dict) else None
    if not isinstance(fields, list):
        raise ConnectorError(f"salesforce describe of {object_name} has no 'fields' list")
    types: dict[str, str] = {}
    for entry in fields:
        if isinstance(entry, dict) and is_api_name(entry.get("name")):
            kind = entry.get("type")
            types[entry["name"]] = kind if isinstance(kind, str) else "string"
    return types


# --- cursor and SOQL ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A row's place in ``ORDER BY SystemModstamp, Id``; a read resumes right after it."""

    modstamp: dt.datetime  # UTC
    id: str


def position_of(object_name: str, raw: Mapping[str, Any]) -> Position:
    ident, stamp = raw.get(KEY_FIELD), raw.get(CURSOR_FIELD)
    when = _parse_datetime(stamp)
    if not (isinstance(ident, str) and _ID_RE.match(ident)) or when is None:
        raise ConnectorError(
            f"salesforce {object_name}: a record has no valid Id and SystemModstamp "
            f"(Id={ident!r}, SystemModstamp={stamp!r})"
        )
    return Position(when, ident)


def encode_cursor(position: Position | None) -> str:
    """Compact JSON: ``{"ts":"2024-05-01T10:00:00.000Z","id":"006..."}``; ``{}`` is the start."""
    if position is None:
        return "{}"
    return json.dumps({"ts": _iso_ms(position.modstamp), "id": position.id}, separators=(",", ":"))


def parse_cursor(cursor: str | None) -> Position | None:
    if cursor is None:
        return None
    try:
        body = json.loads(cursor)
    except ValueError:
        body = None
    if body == {}:
        return None
    ts, ident = (body.get("ts"), body.get("id")) if isinstance(body, dict) else (None, None)
    when = _parse_datetime(ts)
    if when is None or not (isinstance(ident, str) and _ID_RE.match(ident)):
        raise ConnectorError(
            f"salesforce cursor {cursor[:200]!r} is invalid: expected "
            '{"ts": "<SystemModstamp>", "id": "<Id>"} or {}'
        )
    return Position(when, ident)


def soql(plan: FieldPlan, after: Position | None) -> str:
    """The query of the rows after ``after``: ties on SystemModstamp are broken by Id, so
    a page or run ending inside a tie neither loses nor repeats a row."""
    text = f"SELECT {', '.join(plan.select)} FROM {plan.object_name}"
    if after is not None:
        ts = _soql_datetime(after.modstamp)
        text += (
            f" WHERE {CURSOR_FIELD} > {ts} OR ({CURSOR_FIELD} = {ts} AND {KEY_FIELD} > "
            f"'{after.id}')"  # the id matched _ID_RE: nothing to escape
        )
    return f"{text} ORDER BY {CURSOR_FIELD}, {KEY_FIELD}"


def _parse_datetime(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.astimezone(dt.UTC)


def _iso_ms(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _soql_datetime(when: dt.datetime) -> str:
    """A SOQL datetime literal: the documented ``YYYY-MM-DDThh:mm:ssZ`` when the value has no
    fraction (Salesforce's always end in .000), else with its fraction."""
    if when.microsecond == 0:
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0") + "Z"


# --- responses ---------------------------------------------------------------------------


def parse_error(status: int, text: str) -> tuple[str | None, str]:
    """(error code, message) of a Salesforce error body: REST's ``[{message, errorCode}]``
    or OAuth's ``{error, error_description}``."""
    try:
        body = json.loads(text)
    except ValueError:
        return None, one_line(text)
    if isinstance(body, list) and body and isinstance(body[0], dict):
        code, message = body[0].get("errorCode"), body[0].get("message")
    elif isinstance(body, dict) and "error" in body:
        code, message = body.get("error"), body.get("error_description")
    else:
        return None, one_line(text)
    return (code if isinstance(code, str) else None), one_line(str(message or ""))


def api_usage(headers: Mapping[str, str]) -> tuple[int, int] | None:
    """(used, limit) from ``Sforce-Limit-Info: api-usage=18/5000``, if present."""
    match = _LIMIT_RE.search(headers.get("Sforce-Limit-Info", ""))
    return (int(match.group(1)), int(match.group(2))) if match else None
