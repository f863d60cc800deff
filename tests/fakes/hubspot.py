"""A fake HubSpot CRM v3 API on 127.0.0.1 that tests start, speaking the documented endpoints:

- ``GET /crm/v3/properties/{objectType}`` -> ``{results: [{name, label, type, fieldType, ...}]}``;
- ``GET /crm/v3/objects/{objectType}?limit=&after=&properties=a,b&archived=`` -> ``{results:
  [{id, properties{...}, createdAt, updatedAt, archived, archivedAt?}], paging?: {next:
  {after, link}}}`` in id order, at most 100 a page; ``archived=true`` lists only archived
  objects; every property value is a string (or null);
- ``POST /crm/v3/objects/{objectType}/search`` with ``{filterGroups, sorts, properties, limit,
  after}`` -> ``{total, results, paging?}``, limit <= 200, filters compare datetimes in epoch
  milliseconds; paging past ``search_cap`` results (HubSpot: 10 000) is HTTP 400; archived
  objects are never found;
- errors as ``{status: "error", message, correlationId, category}``; 429s as HubSpot sends
  them (``errorType: RATE_LIMIT``, ``policyName``, the X-HubSpot-RateLimit-* headers,
  Retry-After when told); a request URL over ``max_url_chars`` is 414.

Writes stamp the modified-date properties from a clock in epoch milliseconds that follows the
wall clock and never repeats, unless told ``at``. Archiving keeps the modified date (as HubSpot
does) and sets ``archivedAt``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

from tests.fakes._serving import Ports

CAP = 10_000
DAILY_LIMIT = 250_000
_NUMBER_OPS = {"GT", "GTE", "LT", "LTE", "EQ", "NEQ"}


@dataclass
class FakeProperty:
    name: str
    type: str  # string, number, bool, datetime, date, enumeration, phone_number
    field_type: str = "text"


@dataclass
class FakeObject:
    name: str
    properties: dict[str, FakeProperty]
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> Python values
    archived_at: dict[int, int] = field(default_factory=dict)  # id -> epoch ms

    @property
    def modified(self) -> str:
        return "lastmodifieddate" if self.name == "contacts" else "hs_lastmodifieddate"


@dataclass
class Logged:
    method: str
    path: str
    status: int
    query: dict[str, str]
    body: Any = None


def standard_properties(*extra: FakeProperty) -> list[FakeProperty]:
    return [
        FakeProperty("hs_object_id", "number", "number"),
        FakeProperty("createdate", "datetime", "date"),
        FakeProperty("hs_lastmodifieddate", "datetime", "date"),
        *extra,
    ]


class FakeHubSpot:
    """Start with ``async with FakeHubSpot(token=...) as hub``; ``hub.base_url`` is the option."""

    def __init__(
        self,
        *,
        token: str,
        page_size: int | None = None,
        search_cap: int = CAP,
        max_url_chars: int = 16_000,
    ) -> None:
        self.tokens = {token}
        self.page_size = page_size  # test-only: pages smaller than the limit asked for
        self.search_cap = search_cap
        self.max_url_chars = max_url_chars
        self.objects: dict[str, FakeObject] = {}
        self.log: list[Logged] = []
        self.denied: set[str] = set()  # object types the token has no scope for
        self.daily_left = DAILY_LIMIT
        self._ids = itertools.count(101)
        self._throttle: list[tuple[str, str | None, bool]] = []
        self._fail_next: list[int] = []
        self._ports = Ports()
        self.base_url = ""

    def reserve(self) -> None:
        """Bind the port now (``base_url`` is known), serve it on ``async with``."""
        (self.base_url,) = self._ports.reserve(1)

    @property
    def serving(self) -> bool:
        return self._ports.serving

    async def __aenter__(self) -> FakeHubSpot:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/crm/v3/properties/{type}", self._properties)
        app.router.add_get("/crm/v3/objects/{type}", self._list)
        app.router.add_post("/crm/v3/objects/{type}/search", self._search)
        (self.base_url,) = await self._ports.serve(app)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._ports.stop()

    # --- data ---------------------------------------------------------------------------

    def add_object(self, name: str, properties: list[FakeProperty]) -> FakeObject:
        if name == "contacts":
            properties = [*properties, FakeProperty("lastmodifieddate", "datetime", "date")]
        obj = FakeObject(name, {p.name: p for p in properties})
        self.objects[name] = obj
        return obj

    def now_ms(self) -> int:
        """Wall-clock milliseconds (writes in the same millisecond share it, as at HubSpot)."""
        return int(time.time() * 1000)

    def insert(self, object_type: str, at: int | None = None, **values: Any) -> str:
        obj = self.objects[object_type]
        ident = next(self._ids)
        stamp = at if at is not None else self.now_ms()
        row: dict[str, Any] = dict.fromkeys(obj.properties)
        row |= {"hs_object_id": Decimal(ident), "createdate": _datetime(stamp)}
        row |= values
        obj.rows[ident] = row
        self._stamp(obj, row, stamp)
        return str(ident)

    def update(self, object_type: str, ident: str, at: int | None = None, **values: Any) -> None:
        obj = self.objects[object_type]
        row = obj.rows[int(ident)]
        row |= values
        self._stamp(obj, row, at if at is not None else self.now_ms())

    def archive(self, object_type: str, ident: str, at: int | None = None) -> None:
        """DELETE: archived (restorable for 90 days); the modified date stays as it was."""
        self.objects[object_type].archived_at[int(ident)] = at if at is not None else self.now_ms()

    def live_rows(self, object_type: str) -> dict[str, dict[str, Any]]:
        obj = self.objects[object_type]
        return {str(i): r for i, r in sorted(obj.rows.items()) if i not in obj.archived_at}

    def _stamp(self, obj: FakeObject, row: dict[str, Any], stamp: int) -> None:
        row["hs_lastmodifieddate"] = _datetime(stamp)
        if obj.name == "contacts":
            row["lastmodifieddate"] = _datetime(stamp)

    # --- faults -------------------------------------------------------------------------

    def throttle_next(
        self, count: int, policy: str = "TEN_SECONDLY_ROLLING", retry_after: str | None = None,
        *, window_spent: bool = False,
    ) -> None:  # fmt: skip
        """The next ``count`` requests get 429 for ``policy``; with ``Retry-After`` when given,
        with ``X-HubSpot-RateLimit-Remaining: 0`` (and a 200 ms interval) if ``window_spent``."""
        self._throttle += [(policy, retry_after, window_spent)] * count

    def fail_next(self, count: int, status: int = 502) -> None:
        self._fail_next += [status] * count

    def revoke(self, token: str) -> None:
        self.tokens.discard(token)

    def requests_to(self, fragment: str, method: str | None = None) -> list[Logged]:
        return [
            e for e in self.log if fragment in e.path and (method is None or e.method == method)
        ]

    # --- HTTP ---------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        response = await self._answer(request, handler)
        self.daily_left = max(0, self.daily_left - 1)
        response.headers["X-HubSpot-RateLimit-Daily"] = str(DAILY_LIMIT)
        response.headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(self.daily_left)
        self.log.append(
            Logged(request.method, request.path, response.status, dict(request.query), body)
        )
        return response

    async def _answer(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if len(str(request.rel_url)) > self.max_url_chars:
            return web.Response(status=414, text="URI Too Long")
        if self._fail_next:
            status = self._fail_next.pop(0)
            return web.Response(status=status, text="<html>Bad Gateway</html>")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or token not in self.tokens:
            return _error(
                401,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication and you can find more details at https://developers.hubspot.com",
            )
        if self._throttle:
            return self._throttled(*self._throttle.pop(0))
        if request.match_info["type"] in self.denied:
            return _error(
                403,
                "MISSING_SCOPES",
                "This app hasn't been granted all required scopes to make this call.",
            )
        if request.match_info["type"] not in self.objects:
            return _error(
                400,
                "VALIDATION_ERROR",
                f"Unable to infer object type from: {request.match_info['type']}",
            )
        response: web.StreamResponse = await handler(request)
        return response

    def _throttled(self, policy: str, retry_after: str | None, spent: bool) -> web.Response:
        what = "daily" if policy == "DAILY" else policy.lower()
        response = web.json_response(
            {
                "status": "error",
                "message": f"You have reached your {what} limit.",
                "errorType": "RATE_LIMIT",
                "correlationId": str(uuid.uuid4()),
                "policyName": policy,
                "groupName": "api-calls",
            },
            status=429,
        )
        response.headers["X-HubSpot-RateLimit-Max"] = "100"
        response.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] = "200"
        response.headers["X-HubSpot-RateLimit-Remaining"] = "0" if spent else "5"
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    async def _properties(self, request: web.Request) -> web.Response:
        obj = self.objects[request.match_info["type"]]
        results = [
            {
                "name": p.name,
                "label": p.name.replace("_", " ").title(),
                "type": p.type,
                "fieldType": p.field_type,
                "groupName": f"{obj.name}information",
                "hidden": False,
                "calculated": False,
                "hubspotDefined": not p.name.startswith("custom_"),
                "options": [],
            }
            for p in obj.properties.values()
        ]
        return web.json_response({"results": results})

    async def _list(self, request: web.Request) -> web.Response:
        obj = self.objects[request.match_info["type"]]
        query = request.query
        limit = int(query.get("limit", "10"))
        if not 1 <= limit <= 100:
            return _error(400, "VALIDATION_ERROR", "limit must be between 1 and 100")
        archived = query.get("archived", "false") == "true"
        start = int(query.get("after", "0"))
        ids = [i for i in sorted(obj.rows) if i >= start and (i in obj.archived_at) == archived]
        size = min(limit, self.page_size or limit)
        names = _names(obj, query.get("properties"))
        body: dict[str, Any] = {"results": [self._object(obj, i, names) for i in ids[:size]]}
        if len(ids) > size:
            after = str(ids[size])
            link = f"{self.base_url}{request.path}?after={after}"
            body["paging"] = {"next": {"after": after, "link": link}}
        return web.json_response(body)

    async def _search(self, request: web.Request) -> web.Response:
        obj = self.objects[request.match_info["type"]]
        search = await request.json()
        limit = search.get("limit", 10)
        if not isinstance(limit, int) or not 1 <= limit <= 200:
            return _error(400, "VALIDATION_ERROR", "limit must be at most 200")
        groups = search.get("filterGroups") or []
        if len(groups) > 5 or sum(len(g.get("filters", [])) for g in groups) > 25:
            return _error(400, "VALIDATION_ERROR", "too many filters")
        offset = int(search.get("after") or 0)
        size = min(limit, self.page_size or limit)
        if offset + size > self.search_cap:
            return _error(
                400,
                "VALIDATION_ERROR",
                f"There was a problem with the request. Paging beyond {self.search_cap} "
                "results is not supported.",
            )
        ids = [
            i
            for i in obj.rows
            if i not in obj.archived_at
            and (not groups or any(_matches(obj, obj.rows[i], g) for g in groups))
        ]
        for sort in reversed(search.get("sorts") or [{"propertyName": "hs_object_id"}]):
            name = sort["propertyName"]
            ids.sort(
                key=lambda i, n=name: _comparable(obj, n, obj.rows[i].get(n)) or 0,
                reverse=sort.get("direction") == "DESCENDING",
            )
        names = _names(obj, None if "properties" not in search else ",".join(search["properties"]))
        page = ids[offset : offset + size]
        body: dict[str, Any] = {
            "total": len(ids),
            "results": [self._object(obj, i, names) for i in page],
        }
        if offset + size < len(ids):
            body["paging"] = {"next": {"after": str(offset + size)}}
        return web.json_response(body)

    def _object(self, obj: FakeObject, ident: int, names: list[str]) -> dict[str, Any]:
        row = obj.rows[ident]
        out: dict[str, Any] = {
            "id": str(ident),
            "properties": {n: wire(row.get(n)) for n in names},
            "createdAt": wire(row["createdate"]),
            "updatedAt": wire(row["hs_lastmodifieddate"]),
            "archived": ident in obj.archived_at,
        }
        if ident in obj.archived_at:
            out["archivedAt"] = wire(_datetime(obj.archived_at[ident]))
        return out


def _names(obj: FakeObject, listed: str | None) -> list[str]:
    """Requested properties that exist (HubSpot ignores unknown ones); a few by default."""
    if listed is None:
        return [n for n in ("createdate", obj.modified, "hs_object_id") if n in obj.properties]
    return [n for n in listed.split(",") if n in obj.properties]


def _matches(obj: FakeObject, row: dict[str, Any], group: dict[str, Any]) -> bool:
    for f in group.get("filters", []):
        name, op = f["propertyName"], f["operator"]
        if op not in _NUMBER_OPS:
            raise web.HTTPBadRequest(text=f"operator {op} is not supported by this fake")
        have = _comparable(obj, name, row.get(name))
        want = Decimal(str(f["value"]))
        if have is None:
            return False
        ok = {
            "GT": have > want,
            "GTE": have >= want,
            "LT": have < want,
            "LTE": have <= want,
            "EQ": have == want,
            "NEQ": have != want,
        }[op]
        if not ok:
            return False
    return True


def _comparable(obj: FakeObject, name: str, value: Any) -> Decimal | None:
    """A value as search compares it: datetimes in epoch milliseconds, numbers as numbers."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return Decimal(int(value.timestamp() * 1000))
    return Decimal(str(value))


def _datetime(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def wire(value: Any) -> str | None:
    """A value as HubSpot sends it: always a string (or null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _error(status: int, category: str, message: str) -> web.Response:
    body = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
    }
    return web.json_response(body, status=status)


# --- a small CRM ---------------------------------------------------------------------------

STAGES = ("appointmentscheduled", "qualifiedtobuy", "contractsent", "closedwon", "closedlost")
DAY_MS = 86_400_000


def add_crm_objects(hub: FakeHubSpot) -> None:
    """deals, contacts and companies with a property of every type."""
    hub.add_object(
        "deals",
        standard_properties(
            FakeProperty("dealname", "string"),
            FakeProperty("amount", "number", "number"),
            FakeProperty("dealstage", "enumeration", "radio"),
            FakeProperty("closedate", "datetime", "date"),
            FakeProperty("hs_is_closed_won", "bool", "booleancheckbox"),
            FakeProperty("custom_renewal_date", "date", "date"),
        ),
    )
    hub.add_object(
        "contacts",
        standard_properties(
            FakeProperty("email", "string"),
            FakeProperty("firstname", "string"),
            FakeProperty("phone", "phone_number", "phonenumber"),
            FakeProperty("hs_email_optout", "bool", "booleancheckbox"),
        ),
    )
    hub.add_object(
        "companies",
        standard_properties(
            FakeProperty("name", "string"),
            FakeProperty("numberofemployees", "number", "number"),
            FakeProperty("annualrevenue", "number", "number"),
            FakeProperty("industry", "enumeration", "select"),
        ),
    )


def deal(n: int) -> dict[str, Any]:
    """Deal n's values; amounts keep their digits (a trailing zero too)."""
    return {
        "dealname": f"Deal {n}",
        "amount": Decimal(f"{1000 + 37 * n}.{(25 * n) % 100:02d}") if n % 6 else None,
        "dealstage": STAGES[n % len(STAGES)],
        "closedate": dt.datetime(2025, 1 + n % 12, 1 + n % 28, 17, 0, tzinfo=dt.UTC),
        "hs_is_closed_won": n % len(STAGES) == 3,
        "custom_renewal_date": dt.date(2026, 1 + n % 12, 1) if n % 3 else None,
    }


def contact(n: int) -> dict[str, Any]:
    return {
        "email": f"ana{n}@example.com",
        "firstname": f"Ana{n}",
        "phone": f"+351 21 000 {n:04d}" if n % 2 else None,
        "hs_email_optout": n % 4 == 0,
    }


def company(n: int) -> dict[str, Any]:
    return {
        "name": f"Company {n}",
        "numberofemployees": Decimal(10 * n + 1),
        "annualrevenue": Decimal(f"{250000 + 1000 * n}.50"),
        "industry": "COMPUTER_SOFTWARE" if n % 2 else "BANKING",
    }


def seed(hub: FakeHubSpot, deals: int = 0, contacts: int = 0, companies: int = 0) -> None:
    """Rows modified a day ago, a millisecond apart (well before any read's window)."""
    old = hub.now_ms() - DAY_MS
    for kind, count, values in (("deals", deals, deal), ("contacts", contacts, contact)):
        for n in range(count):
            hub.insert(kind, at=old + n, **values(n))
    for n in range(companies):
        hub.insert("companies", at=old + n, **company(n))


def expected_record(
    obj: FakeObject, ident: str, row: dict[str, Any], names: list[str] | None = None
) -> dict[str, Any]:
    """What the connector yields for a row: ``id``, then every property (``names`` when
    given) in the properties API's order: numbers as Decimal with HubSpot's digits, booleans,
    datetimes as HubSpot's ISO text, dates as ISO dates, the rest as strings."""
    out: dict[str, Any] = {"id": ident}
    for name in names if names is not None else list(obj.properties):
        kind, value = obj.properties[name].type, row.get(name)
        if value is not None and kind == "number":
            value = Decimal(str(value))
        elif value is not None and kind not in ("bool",):
            value = wire(value)
        out[name] = value
    return out
