"""HubSpot's side of a read: which properties to read (from the properties API) and how each
string value becomes a typed one, the cursor, the search request of a window, and what
HubSpot's error bodies and rate-limit headers say.

Pure functions and values, no I/O: ``hubspot.py`` does the requests.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from aam_bridge.connectors._http import HttpResponse
from aam_bridge.connectors._values import as_string, one_line
from aam_dcl.errors import ConnectorError
from aam_dcl.messages import Record

KEY = "id"  # the record's id: the table's primary key
OBJECT_ID = "hs_object_id"  # the same id as a property: what search sorts and pages on
SEARCH_LIMIT = 200  # PublicObjectSearchRequest.limit: "up to 200"
PROPERTIES_CHARS = 15_000  # of a list request's properties parameter; HubSpot's URLs end near 16k
# property `type` -> our column type; every other type (string, enumeration, phone_number,
# json, object_coordinates) is a string
_TYPES = {"number": "numeric", "bool": "boolean", "datetime": "datetime", "date": "date"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")

Converter = Callable[[Any], Any]


def is_name(value: object) -> bool:
    """An object type (deals, p_tickets, 2-1234567) or a property name."""
    return isinstance(value, str) and _NAME_RE.match(value) is not None


def modified_property(object_type: str) -> str:
    """The property search filters on for changes: contacts' default is lastmodifieddate."""
    return "lastmodifieddate" if object_type == "contacts" else "hs_lastmodifieddate"


# --- values ------------------------------------------------------------------------------


def _as_numeric(value: Any) -> Any:
    """The string's own digits as a Decimal; an empty or malformed number is null."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _as_boolean(value: Any) -> Any:
    return {"true": True, "false": False}.get(value.lower()) if isinstance(value, str) else None


def _as_datetime(value: Any) -> Any:
    """ISO 8601 as HubSpot sends it; an epoch-milliseconds string (older properties) too."""
    if not isinstance(value, str) or not value:
        return None
    if value.isdigit():
        return _iso(dt.datetime.fromtimestamp(int(value) / 1000, dt.UTC))
    return value


def _as_date(value: Any) -> Any:
    """``2025-03-01``; a midnight datetime or epoch milliseconds keep their date."""
    if not isinstance(value, str) or not value:
        return None
    if value.isdigit():
        return dt.datetime.fromtimestamp(int(value) / 1000, dt.UTC).date().isoformat()
    return value[:10]


_CONVERTERS: dict[str, Converter] = {
    "numeric": _as_numeric,
    "boolean": _as_boolean,
    "datetime": _as_datetime,
    "date": _as_date,
    "string": as_string,
}


# --- properties --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PropertyPlan:
    """What to read from one object type and how each property becomes a record value."""

    object_type: str
    properties: tuple[str, ...]
    column_types: Mapping[str, str]  # id, then the properties, in order
    missing: tuple[str, ...] = ()  # listed properties the object does not have (any more)

    def record(self, raw: Mapping[str, Any]) -> Record:
        """A record of a list or search result ``{id, properties{...}, ...}``."""
        values = raw.get("properties")
        if not isinstance(values, dict):
            values = {}
        record: Record = {KEY: raw[KEY]}
        for name in self.properties:
            record[name] = _CONVERTERS[self.column_types[name]](values.get(name))
        return record

    def property_chunks(self, limit_chars: int = PROPERTIES_CHARS) -> list[tuple[str, ...]]:
        """The properties in runs whose comma-joined text stays within ``limit_chars``
        (names are URL-safe, so that is their length in the URL)."""
        chunks: list[tuple[str, ...]] = []
        current: list[str] = []
        size = 0
        for name in self.properties:
            if current and size + 1 + len(name) > limit_chars:
                chunks.append(tuple(current))
                current, size = [], 0
            size += len(name) + (1 if current else 0)
            current.append(name)
        if current or not chunks:
            chunks.append(tuple(current))
        return chunks


def plan_properties(object_type: str, body: Any, wanted: tuple[str, ...] | None) -> PropertyPlan:
    """The plan from the properties API's ``{results: [{name, type, ...}]}``: every property
    when ``wanted`` is None, else the wanted ones that exist."""
    types = _property_types(object_type, body)
    missing: list[str] = []
    if wanted is None:
        names = list(types)
    else:
        names = [n for n in dict.fromkeys(wanted) if n != KEY]
        missing = [n for n in names if n not in types]
        names = [n for n in names if n in types]
    column_types = {KEY: "string"} | {n: _TYPES.get(types[n], "string") for n in names}
    return PropertyPlan(object_type, tuple(names), column_types, tuple(missing))


def _property_types(object_type: str, body: Any) -> dict[str, str]:
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list):
        raise ConnectorError(f"hubspot properties of {object_type}: the response has no results")
    types: dict[str, str] = {}
    for entry in results:
        if isinstance(entry, dict) and is_name(entry.get("name")) and entry["name"] != KEY:
            kind = entry.get("type")
            types[entry["name"]] = kind if isinstance(kind, str) else "string"
    return types


# --- cursor ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a read stands, as one of four compact JSON shapes:

    - ``{"start":S,"after":A}``: a full read (the list endpoint) begun at S, next page ``after``;
    - ``{"since":S}``: a read's end: the next one searches what changed from S on;
    - ``{"since":S,"until":U,"id":I}``: searching the window [S, U] past object id I (no
      ``id``: from the window's first object);
    - ``{"since":S,"until":U,"archived":A}``: the window's deletes, archived list page A
      (null: its first page).

    Times are epoch milliseconds; ``after`` and ``archived`` are HubSpot's paging tokens.
    """

    since: int  # a full read's start, else the window's lower bound
    until: int | None = None  # None: a full read, or a read's end
    after: str | None = None  # the list's next page (full read)
    last_id: str | None = None  # search: the last object id read
    archived: str | None = None  # the deletes' next page token
    deletes: bool = False  # the window's objects are read; its deletes are under way

    @property
    def full(self) -> bool:
        """A full read under way."""
        return self.until is None and self.after is not None

    def encode(self) -> str:
        if self.full:
            body: dict[str, Any] = {"start": self.since, "after": self.after}
        elif self.until is None:
            body = {"since": self.since}
        elif self.deletes:
            body = {"since": self.since, "until": self.until, "archived": self.archived}
        else:
            body = {"since": self.since, "until": self.until}
            if self.last_id is not None:
                body["id"] = self.last_id
        return json.dumps(body, separators=(",", ":"))


def parse_cursor(cursor: str) -> Cursor:
    try:
        body = json.loads(cursor)
    except ValueError:
        body = None
    if isinstance(body, dict):
        parsed = _cursor_of(body)
        if parsed is not None:
            return parsed
    raise ConnectorError(
        f"hubspot cursor {cursor[:200]!r} is invalid: expected {{'since': <epoch ms>}}, "
        "or a page cursor of this connector"
    )


def _cursor_of(body: dict[str, Any]) -> Cursor | None:
    def ms(name: str) -> int | None:
        value = body.get(name)
        return value if type(value) is int and value >= 0 else None

    def token(name: str) -> str | None:
        value = body.get(name)
        return value if isinstance(value, str) and value else None

    keys = set(body)
    start, since, until = ms("start"), ms("since"), ms("until")
    if keys == {"start", "after"} and start is not None and token("after"):
        return Cursor(since=start, after=token("after"))
    if keys == {"since"} and since is not None:
        return Cursor(since=since)
    if since is None or until is None:
        return None
    if keys == {"since", "until"}:
        return Cursor(since, until)
    if keys == {"since", "until", "id"} and (token("id") or "").isdigit():
        return Cursor(since, until, last_id=token("id"))
    if keys == {"since", "until", "archived"} and (body["archived"] is None or token("archived")):
        return Cursor(since, until, archived=token("archived"), deletes=True)
    return None


def search_body(plan: PropertyPlan, since: int, until: int, last_id: str | None) -> dict[str, Any]:
    """The search of the objects modified in [since, until], in id order past ``last_id``:
    keyset pages (no ``after``), so neither the 10 000-result cap nor any number of objects
    sharing one modified time can stop or loop the read."""
    modified = modified_property(plan.object_type)
    filters = [
        {"propertyName": modified, "operator": "GTE", "value": str(since)},
        {"propertyName": modified, "operator": "LTE", "value": str(until)},
    ]
    if last_id is not None:
        filters.append({"propertyName": OBJECT_ID, "operator": "GT", "value": last_id})
    return {
        "filterGroups": [{"filters": filters}],
        "sorts": [{"propertyName": OBJECT_ID, "direction": "ASCENDING"}],
        "properties": list(plan.properties),
        "limit": SEARCH_LIMIT,
    }


def archived_at_ms(raw: Mapping[str, Any]) -> int | None:
    """An archived object's ``archivedAt`` in epoch milliseconds."""
    value = raw.get("archivedAt")
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def _iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


# --- responses ---------------------------------------------------------------------------


def parse_error(status: int, text: str) -> tuple[str | None, str]:
    """(code, message) of ``{status: "error", message, category | errorType, policyName}``:
    the code is the category (MISSING_SCOPES, VALIDATION_ERROR, ...) or RATE_LIMIT, with the
    rate-limit policy (DAILY, TEN_SECONDLY_ROLLING, ...) after a colon."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict) or "message" not in body:
        return None, one_line(text)
    code = body.get("errorType") or body.get("category")
    policy = body.get("policyName")
    if isinstance(code, str) and isinstance(policy, str):
        code = f"{code}:{policy}"
    return (code if isinstance(code, str) else None), one_line(str(body.get("message") or ""))


def wait_hint(response: HttpResponse) -> float | None:
    """Seconds a 429 without Retry-After asks to wait: none helps against the daily limit
    (math.inf); a spent rolling window (``X-HubSpot-RateLimit-Remaining: 0``) refills within
    ``X-HubSpot-RateLimit-Interval-Milliseconds``."""
    if response.status != 429:
        return None
    if "DAILY" in (parse_error(response.status, response.text)[0] or ""):
        return math.inf
    headers = response.headers
    interval = headers.get("X-HubSpot-RateLimit-Interval-Milliseconds", "")
    if headers.get("X-HubSpot-RateLimit-Remaining") == "0" and interval.isdigit():
        return int(interval) / 1000
    return None


def daily_usage(headers: Mapping[str, str]) -> tuple[int, int] | None:
    """(used, limit) of the account's daily calls, from the X-HubSpot-RateLimit-Daily pair."""
    limit = headers.get("X-HubSpot-RateLimit-Daily", "")
    left = headers.get("X-HubSpot-RateLimit-Daily-Remaining", "")
    if limit.isdigit() and left.isdigit():
        return int(limit) - int(left), int(limit)
    return None
