"""Dataverse's side of a read: the columns of an entity (from EntityDefinitions and its
Attributes) and how their values become record values, the cursors, the first query of a
read, and what the Web API's and Entra ID's error bodies say.

Pure functions and values, no I/O: ``dynamics.py`` does the requests.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aam_bridge.connectors._values import as_is, as_numeric, as_string, one_line
from aam_dcl.errors import ConnectorError
from aam_dcl.messages import Record

API_PATH = "/api/data/v9.2"
MODIFIED = "modifiedon"  # set by the server on every change, at one-second resolution
DELETED_CONTEXT = "$deletedEntity"  # in the @odata.context of a change-tracking delete row
# AttributeType -> our column type; types not here are strings, types in _UNREADABLE are
# not columns ($select refuses them, or they hold no value of their own)
_TYPES = {
    "Money": "numeric",
    "Decimal": "numeric",
    "Double": "numeric",
    "Integer": "integer",
    "BigInt": "integer",
    "DateTime": "datetime",
    "Boolean": "boolean",
}
_LOOKUPS = frozenset({"Lookup", "Customer", "Owner"})  # selected as _<name>_value (a GUID)
_UNREADABLE = frozenset({"Virtual", "PartyList", "CalendarRules", "ManagedProperty"})
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Converter = Callable[[Any], Any]


def is_name(value: object) -> bool:
    """An entity set or column name: letters, digits and underscores."""
    return isinstance(value, str) and _NAME_RE.match(value) is not None


_CONVERTERS: dict[str, Converter] = {"numeric": as_numeric, "string": as_string}


# --- metadata ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntityPlan:
    """What to read from one entity set and how each column becomes a record value."""

    entity_set: str
    logical_name: str
    key: str  # PrimaryIdAttribute
    columns: tuple[str, ...]  # the $select names, key first
    column_types: Mapping[str, str]
    change_tracking: bool  # ChangeTrackingEnabled: deletes come through delta links
    missing: tuple[str, ...] = ()  # listed columns the entity does not have (any more)

    def record(self, raw: Mapping[str, Any]) -> Record:
        return {
            name: _CONVERTERS.get(self.column_types[name], as_is)(raw.get(name))
            for name in self.columns
        }

    @property
    def select(self) -> str:
        return ",".join(self.columns)


def entity_of(entity_set: str, body: Any) -> dict[str, Any]:
    """The one EntityDefinitions row of ``entity_set`` in a ``{value: [...]}`` response."""
    rows = body.get("value") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        raise ConnectorError(f"dynamics EntityDefinitions of {entity_set}: no value list")
    found = [r for r in rows if isinstance(r, dict) and r.get("EntitySetName") == entity_set]
    if not found:
        raise ConnectorError(
            f"dynamics has no entity set {entity_set!r}: check options.entities (entity set "
            "names are plural, e.g. accounts, opportunities)"
        )
    entity = found[0]
    for name in ("LogicalName", "PrimaryIdAttribute"):
        if not is_name(entity.get(name)):
            raise ConnectorError(f"dynamics EntityDefinitions of {entity_set}: no {name}")
    return entity


def plan_entity(
    entity_set: str, entity: Mapping[str, Any], attributes: Any, wanted: tuple[str, ...] | None
) -> EntityPlan:
    """The plan from an entity's definition and its Attributes response: every readable column
    when ``wanted`` is None, else the wanted ones that exist; the key always, and modifiedon
    where the entity has no change tracking (it is then the cursor)."""
    types = _column_types(entity_set, attributes)
    key = str(entity["PrimaryIdAttribute"])
    tracked = entity.get("ChangeTrackingEnabled") is True
    missing: list[str] = []
    if wanted is None:
        names = [key, *(n for n in types if n != key)]
    else:
        by_attribute = {_attribute_of(n): n for n in types}  # parentaccountid -> _..._value
        names = [key]
        for name in wanted:
            actual = name if name in types else by_attribute.get(name)
            if actual is None:
                missing.append(name)
            elif actual not in names:
                names.append(actual)
        if not tracked and MODIFIED in types and MODIFIED not in names:
            names.append(MODIFIED)
    if key not in types:
        types[key] = "string"
    if not tracked and MODIFIED not in types:
        raise ConnectorError(
            f"dynamics {entity_set} has neither change tracking nor a modifiedon column: it "
            "cannot be read incrementally; enable Track changes on the table"
        )
    column_types = {n: types[n] for n in names}
    logical = str(entity["LogicalName"])
    return EntityPlan(entity_set, logical, key, tuple(names), column_types, tracked, tuple(missing))


def _column_types(entity_set: str, body: Any) -> dict[str, str]:
    rows = body.get("value") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        raise ConnectorError(f"dynamics Attributes of {entity_set}: no value list")
    types: dict[str, str] = {}
    for row in rows:
        if not isinstance(row, dict) or not is_name(row.get("LogicalName")):
            continue
        kind = row.get("AttributeType")
        if kind in _UNREADABLE or row.get("AttributeOf") or row.get("IsValidForRead") is False:
            continue
        name = row["LogicalName"]
        types[f"_{name}_value" if kind in _LOOKUPS else name] = _TYPES.get(str(kind), "string")
    return types


def _attribute_of(column: str) -> str:
    """``_parentaccountid_value`` -> ``parentaccountid``; other names are their attribute."""
    if column.startswith("_") and column.endswith("_value"):
        return column[1 : -len("_value")]
    return column


# --- cursors -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a read stands, as one of four compact JSON shapes:

    - ``{"delta": L}``: change tracking: the next read GETs the delta link L;
    - ``{"next": L}``: change tracking: the read goes on at the next link L;
    - ``{"since": T}``: modifiedon: the next read asks for rows modified at T or later
      (null: every row);
    - ``{"next": L, "since": T}``: modifiedon: the read goes on at L, its rows so far
      modified up to T.
    """

    delta: str | None = None
    next: str | None = None
    since: str | None = None
    by_modified: bool = False  # a modifiedon cursor (``since`` may be null)

    def encode(self) -> str:
        body: dict[str, Any] = {}
        if self.delta is not None:
            body["delta"] = self.delta
        if self.next is not None:
            body["next"] = self.next
        if self.by_modified:
            body["since"] = self.since
        return json.dumps(body, separators=(",", ":"))


def parse_cursor(cursor: str) -> Cursor:
    try:
        body = json.loads(cursor)
    except ValueError:
        body = None
    keys = set(body) if isinstance(body, dict) else None
    links_ok = isinstance(body, dict) and all(
        isinstance(body.get(k), str) and body[k] for k in ("delta", "next") if k in body
    )
    since = body.get("since") if isinstance(body, dict) else None
    since_ok = since is None or (isinstance(since, str) and _is_datetime(since))
    if links_ok and since_ok and isinstance(body, dict):
        if keys == {"delta"}:
            return Cursor(delta=body["delta"])
        if keys == {"next"}:
            return Cursor(next=body["next"])
        if keys in ({"since"}, {"next", "since"}):
            return Cursor(next=body.get("next"), since=since, by_modified=True)
    raise ConnectorError(
        f"dynamics cursor {cursor[:200]!r} is invalid: expected {{'delta': <link>}}, "
        "{'since': <modifiedon>}, or a page cursor of this connector"
    )


def modified_query(plan: EntityPlan, since: str | None) -> dict[str, str]:
    """The first query of a modifiedon read: rows modified at ``since`` or later (rows in
    that second are read again: modifiedon has one-second resolution, so a row committed
    later in the same second as the last one read is not lost), in (modifiedon, key) order
    so that pages are stable."""
    params = {"$select": plan.select, "$orderby": f"{MODIFIED} asc,{plan.key} asc"}
    if since is not None:
        params["$filter"] = f"{MODIFIED} ge {since}"
    return params


def split_changes(plan: EntityPlan, rows: list[Any]) -> tuple[list[Record], list[Record]]:
    """A change-tracking page's rows: (records, the keys of deleted rows)."""
    records: list[Record] = []
    deleted: list[Record] = []
    for row in rows:
        if not isinstance(row, dict):
            raise ConnectorError(f"dynamics {plan.entity_set}: a row that is not an object")
        context = row.get("@odata.context")
        if isinstance(context, str) and context.endswith(DELETED_CONTEXT):
            deleted.append({plan.key: row.get("id")})
        else:
            records.append(plan.record(row))
    return records, deleted


def _is_datetime(value: str) -> bool:
    try:
        return dt.datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


# --- responses ---------------------------------------------------------------------------


def parse_error(status: int, text: str) -> tuple[str | None, str]:
    """(code, message) of the Web API's ``{error: {code, message}}`` or Entra ID's
    ``{error, error_description}``."""
    try:
        body = json.loads(text)
    except ValueError:
        return None, one_line(text)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
    elif isinstance(error, str):
        code, message = error, body.get("error_description")
    else:
        return None, one_line(text)
    return (code if isinstance(code, str) else None), one_line(str(message or ""))
