"""A fake Salesforce on 127.0.0.1 that tests start: the OAuth token endpoint (client
credentials and refresh token grants) on a login port, and the REST API on an instance port
(the token response's ``instance_url``), as Salesforce documents them:

- ``POST /services/oauth2/token`` (form-encoded) -> ``{access_token, instance_url, id,
  token_type, issued_at, signature, scope}``, or 400 ``{error, error_description}``;
- ``GET /services/data/vNN.N/sobjects/{Object}/describe`` -> ``{name, fields[{name, type,
  compoundFieldName, ...}]}``;
- ``GET /services/data/vNN.N/queryAll?q=<SOQL>`` (and ``/query``, without deleted rows) ->
  ``{totalSize, done, nextRecordsUrl?, records[{attributes{type,url}, ...}]}``, paged by
  ``Sforce-Query-Options: batchSize=N`` (200-2000; ``page_size`` overrides it for small tests)
  and continued with ``GET /services/data/vNN.N/query/<locator>-<offset>``; a user holds
  at most 10 open locators (an 11th releases the oldest);
- errors as JSON arrays ``[{message, errorCode}]``; ``Sforce-Limit-Info: api-usage=n/limit``
  on every API response.

Faults on demand: tokens that expire after N requests or at once (401 INVALID_SESSION_ID),
403 REQUEST_LIMIT_EXCEEDED storms, 5xx blips (optionally with Retry-After), a field removed
right after a describe (400 INVALID_FIELD), expired query locators (INVALID_QUERY_LOCATOR).
Writes stamp SystemModstamp from a clock that ticks one second per write unless told ``at``;
a delete sets IsDeleted and bumps SystemModstamp (the row stays in the Recycle Bin), a purge
removes the row for good.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import soql
from tests.fakes._serving import Ports

CLIENT_ID = "3MVG9fake.client.id"
START = dt.datetime(2025, 1, 6, 9, 0, tzinfo=dt.UTC)
API_LIMIT = 100_000
MAX_LOCATORS = 10
_KEY_PREFIXES = {"Account": "001", "Contact": "003", "Opportunity": "006"}


@dataclass
class FakeField:
    name: str
    type: str
    compound: str | None = None  # compoundFieldName: the compound field this one is part of


@dataclass
class FakeObject:
    name: str
    fields: dict[str, FakeField]  # in describe order
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # Id -> values (Python)
    prefix: str = "a00"

    def field_named(self, name: str) -> FakeField | None:
        return next((f for f in self.fields.values() if f.name.lower() == name.lower()), None)


@dataclass
class Logged:
    method: str
    path: str
    status: int
    query: str | None = None
    batch_size: str | None = None


def standard_fields(*extra: FakeField) -> list[FakeField]:
    """Fields every object has, then ``extra``."""
    return [
        FakeField("Id", "id"),
        FakeField("IsDeleted", "boolean"),
        *extra,
        FakeField("CreatedDate", "datetime"),
        FakeField("SystemModstamp", "datetime"),
    ]


class FakeSalesforce:
    """Start with ``async with FakeSalesforce(...) as sf``; ``sf.login_url`` is the option."""

    def __init__(
        self,
        *,
        client_secret: str,
        refresh_token: str | None = None,
        client_id: str = CLIENT_ID,
        page_size: int | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.page_size = page_size  # test-only: the real minimum batch size is 200
        self.objects: dict[str, FakeObject] = {}
        self.now = START
        self.log: list[Logged] = []
        self.grants: list[str] = []
        self.api_requests = 0
        # faults
        self.token_lifetime_requests: int | None = None
        self.limit_storm = False  # every API request gets 403 REQUEST_LIMIT_EXCEEDED
        self.storm_after: int | None = None  # ... after this many more API requests
        self.delay_s = 0.0  # each API request takes this long
        self.max_url_chars: int | None = None  # a longer request URL gets 414 URI Too Long
        self.in_flight = 0
        self.max_in_flight = 0
        self.issued: list[str] = []  # every access token handed out
        self._fail_next: list[tuple[int, str | None]] = []
        self._remove_after_describe: dict[str, str] = {}
        self._tokens: dict[str, int] = {}  # token -> API requests it may still serve
        self._locators: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._ids = itertools.count(1)
        self._ports = Ports()
        self.login_url = ""
        self.instance_url = ""

    def reserve(self) -> None:
        """Bind both ports now, without a running loop, so that ``login_url`` is known
        before the fake serves (``async with`` then serves on them)."""
        self.login_url, self.instance_url = self._ports.reserve(2)

    async def __aenter__(self) -> FakeSalesforce:
        login = web.Application()
        login.router.add_post("/services/oauth2/token", self._token)
        api = web.Application(middlewares=[self._api_middleware])
        api.router.add_get(
            r"/services/data/v{version:\d+\.\d}/sobjects/{name}/describe", self._describe
        )
        api.router.add_get(r"/services/data/v{version:\d+\.\d}/queryAll", self._query_all)
        api.router.add_get(r"/services/data/v{version:\d+\.\d}/query", self._query)
        api.router.add_get(
            r"/services/data/v{version:\d+\.\d}/query/{locator}-{offset:\d+}", self._more
        )
        self.login_url, self.instance_url = await self._ports.serve(login, api)
        return self

    @property
    def serving(self) -> bool:
        return self._ports.serving

    async def __aexit__(self, *exc_info: object) -> None:
        await self._ports.stop()

    # --- data ---------------------------------------------------------------------------

    def add_object(self, name: str, fields: list[FakeField]) -> FakeObject:
        obj = FakeObject(name, {f.name: f for f in fields}, prefix=_KEY_PREFIXES.get(name, "a00"))
        self.objects[name] = obj
        return obj

    def tick(self, at: dt.datetime | None = None) -> dt.datetime:
        if at is not None:
            self.now = max(self.now, at)
            return at
        self.now += dt.timedelta(seconds=1)
        return self.now

    def insert(self, object_name: str, at: dt.datetime | None = None, **values: Any) -> str:
        obj = self.objects[object_name]
        ident = f"{obj.prefix}5g0000{next(self._ids):06d}AAA"  # 18 characters, in creation order
        stamp = self.tick(at)
        row = dict.fromkeys(obj.fields)
        row |= {"Id": ident, "IsDeleted": False, "CreatedDate": stamp, "SystemModstamp": stamp}
        row |= values
        obj.rows[ident] = row
        return ident

    def update(
        self, object_name: str, ident: str, at: dt.datetime | None = None, **values: Any
    ) -> None:
        row = self.objects[object_name].rows[ident]
        row |= values
        row["SystemModstamp"] = self.tick(at)

    def delete(self, object_name: str, ident: str, at: dt.datetime | None = None) -> None:
        """Soft delete: to the Recycle Bin, still seen by queryAll."""
        self.update(object_name, ident, at, IsDeleted=True)

    def purge(self, object_name: str, ident: str) -> None:
        """Hard delete (emptied from the Recycle Bin): no endpoint returns it any more."""
        del self.objects[object_name].rows[ident]

    def remove_field(self, object_name: str, name: str) -> None:
        obj = self.objects[object_name]
        del obj.fields[name]
        for row in obj.rows.values():
            row.pop(name, None)

    def live_rows(self, object_name: str) -> list[dict[str, Any]]:
        return [r for r in self.objects[object_name].rows.values() if not r["IsDeleted"]]

    # --- faults -------------------------------------------------------------------------

    def expire_tokens(self) -> None:
        self._tokens.clear()

    def fail_next(self, count: int, status: int = 503, retry_after: str | None = None) -> None:
        self._fail_next += [(status, retry_after)] * count

    def remove_field_after_describe(self, object_name: str, name: str) -> None:
        """The next describe of the object still lists the field; then it is deleted."""
        self._remove_after_describe[object_name] = name

    def expire_locators(self) -> None:
        self._locators.clear()

    def requests_to(self, fragment: str) -> list[Logged]:
        return [entry for entry in self.log if fragment in entry.path]

    # --- token endpoint -----------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return self._oauth_error(request, "invalid_request", "must use HTTP POST with form")
        form = await request.post()
        grant = form.get("grant_type")
        if form.get("client_id") != self.client_id:
            return self._oauth_error(request, "invalid_client_id", "client identifier invalid")
        if grant == "client_credentials":
            if form.get("client_secret") != self.client_secret:
                return self._oauth_error(request, "invalid_client", "invalid client credentials")
        elif grant == "refresh_token":
            secret = form.get("client_secret")
            if secret is not None and secret != self.client_secret:
                return self._oauth_error(request, "invalid_client", "invalid client credentials")
            if self.refresh_token is None or form.get("refresh_token") != self.refresh_token:
                return self._oauth_error(request, "invalid_grant", "expired access/refresh token")
        else:
            return self._oauth_error(request, "unsupported_grant_type", "grant type not supported")
        self.grants.append(str(grant))
        token = f"00D5g000000FAKE!AQ{secrets.token_urlsafe(24)}"
        self._tokens[token] = self.token_lifetime_requests or 10**9
        self.issued.append(token)
        body = {
            "access_token": token,
            "instance_url": self.instance_url,
            "id": f"{self.login_url}/id/00D5g000000FAKE/0055g000000USER",
            "token_type": "Bearer",
            "issued_at": str(int(self.now.timestamp() * 1000)),  # milliseconds, as in samples
            "signature": "ZmFrZS1zaWduYXR1cmU=",
            "scope": "api",
        }
        self._logged(request, 200)
        return web.json_response(body)

    def _oauth_error(self, request: web.Request, code: str, description: str) -> web.Response:
        self._logged(request, 400)
        return web.json_response({"error": code, "error_description": description}, status=400)

    # --- API ----------------------------------------------------------------------------

    @web.middleware
    async def _api_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Faults and authentication before any API handler; the limit header after it."""
        self.api_requests += 1
        if self.storm_after is not None:
            self.storm_after -= 1
            self.limit_storm = self.limit_storm or self.storm_after < 0
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            response = await self._answer(request, handler)
        finally:
            self.in_flight -= 1
        response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_requests}/{API_LIMIT}"
        self._logged(request, response.status)
        return response

    async def _answer(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse
        if self.max_url_chars is not None and len(str(request.rel_url)) > self.max_url_chars:
            response = web.Response(status=414, text="URI Too Long")
        elif self._fail_next:
            status, retry_after = self._fail_next.pop(0)
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            response = _errors(status, "SERVER_UNAVAILABLE", "Service Unavailable", headers)
        elif not self._authorized(request):
            response = _errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
        elif self.limit_storm:
            response = _errors(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        else:
            try:
                response = await handler(request)
            except web.HTTPNotFound:
                response = _errors(404, "NOT_FOUND", "The requested resource does not exist")
        return response

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        left = self._tokens.get(token) if scheme == "Bearer" else None
        if not left:
            self._tokens.pop(token, None)
            return False
        self._tokens[token] = left - 1
        return True

    async def _describe(self, request: web.Request) -> web.Response:
        obj = self._object(request.match_info["name"])
        if obj is None:
            raise web.HTTPNotFound()
        fields = [
            {
                "name": f.name,
                "type": f.type,
                "label": f.name,
                "nillable": f.name not in ("Id", "IsDeleted", "SystemModstamp"),
                "compoundFieldName": f.compound,
            }
            for f in obj.fields.values()
        ]
        body = {"name": obj.name, "label": obj.name, "queryable": True, "fields": fields}
        removed = self._remove_after_describe.pop(obj.name, None)
        if removed is not None:
            self.remove_field(obj.name, removed)
        return _json(body)

    async def _query_all(self, request: web.Request) -> web.Response:
        return self._run_query(request, deleted=True)

    async def _query(self, request: web.Request) -> web.Response:
        return self._run_query(request, deleted=False)

    def _run_query(self, request: web.Request, *, deleted: bool) -> web.Response:
        text = request.query.get("q", "")
        try:
            query = soql.parse(text)
        except soql.SoqlError as exc:
            return _errors(400, "MALFORMED_QUERY", str(exc))
        obj = self._object(query.object_name)
        if obj is None:
            return _errors(
                400, "INVALID_TYPE", f"sObject type '{query.object_name}' is not supported."
            )
        for name in [*query.fields, *query.where_fields, *query.order_by]:
            if obj.field_named(name) is None:
                return _errors(
                    400, "INVALID_FIELD", f"{text}\nNo such column '{name}' on entity '{obj.name}'."
                )
        selected = [obj.field_named(n) for n in query.fields]
        rows = [r for r in obj.rows.values() if deleted or not r["IsDeleted"]]
        lowered = [({k.lower(): v for k, v in r.items()}, r) for r in rows]
        if query.where is not None:
            lowered = [pair for pair in lowered if query.where(pair[0])]
        if query.order_by:
            lowered.sort(key=lambda pair: soql.sort_key(query.order_by)(pair[0]))
        version = request.match_info["version"]
        records = [self._record(obj, r, selected, version) for _, r in lowered][: query.limit]
        locator = "01g5g" + secrets.token_hex(5).upper()
        self._locators[locator] = records
        while len(self._locators) > MAX_LOCATORS:
            self._locators.popitem(last=False)
        return self._page(records, locator, 0, version, request)

    async def _more(self, request: web.Request) -> web.Response:
        records = self._locators.get(request.match_info["locator"])
        if records is None:
            return _errors(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        offset = int(request.match_info["offset"])
        return self._page(
            records, request.match_info["locator"], offset, request.match_info["version"], request
        )

    def _page(
        self,
        records: list[dict[str, Any]],
        locator: str,
        offset: int,
        version: str,
        request: web.Request,
    ) -> web.Response:
        size = self.page_size or _batch_size(request.headers.get("Sforce-Query-Options"))
        end = min(offset + size, len(records))
        body: dict[str, Any] = {"totalSize": len(records), "done": end >= len(records)}
        if end < len(records):
            body["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{end}"
        else:
            self._locators.pop(locator, None)
        body["records"] = records[offset:end]
        return _json(body)

    def _record(
        self, obj: FakeObject, row: dict[str, Any], selected: list[FakeField | None], version: str
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attributes": {
                "type": obj.name,
                "url": f"/services/data/v{version}/sobjects/{obj.name}/{row['Id']}",
            }
        }
        for f in selected:
            assert f is not None
            out[f.name] = (
                _compound(obj, f, row) if f.type in ("address", "location") else row.get(f.name)
            )
        return out

    def _object(self, name: str) -> FakeObject | None:
        return next((o for o in self.objects.values() if o.name.lower() == name.lower()), None)

    def _logged(self, request: web.Request, status: int) -> None:
        query = request.query.get("q") if request.method == "GET" else None
        options = request.headers.get("Sforce-Query-Options")
        self.log.append(Logged(request.method, request.path, status, query, options))


def _compound(obj: FakeObject, compound: FakeField, row: dict[str, Any]) -> dict[str, Any] | None:
    """An address/location value from its component fields: BillingCity -> {"city": ...}."""
    prefix = compound.name.removesuffix("Address").removesuffix("__c")
    parts = {
        f.name[len(prefix)].lower() + f.name[len(prefix) + 1 :]: row.get(f.name)
        for f in obj.fields.values()
        if f.compound == compound.name and f.name.startswith(prefix)
    }
    return parts if any(v is not None for v in parts.values()) else None


def expected_record(
    obj: FakeObject, row: dict[str, Any], fields: list[str] | None = None
) -> dict[str, Any]:
    """What the connector should yield for ``row``: ``fields`` (every field but compound ones
    other than Name when None), amounts as Decimal, datetimes in ISO 8601 with a colon offset,
    dates as ISO dates, addresses as objects."""
    compounds = {f.compound for f in obj.fields.values() if f.compound}
    if fields is None:
        fields = [n for n in obj.fields if n not in compounds or n == "Name"]
    out: dict[str, Any] = {}
    for name in fields:
        kind, value = obj.fields[name].type, row.get(name)
        if kind in ("address", "location"):
            value = _compound(obj, obj.fields[name], row)
        elif isinstance(value, dt.datetime):
            value = value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+00:00"
        elif isinstance(value, dt.date):
            value = value.isoformat()
        elif kind in ("currency", "percent", "double") and isinstance(value, int):
            value = Decimal(value)
        out[name] = value
    return out


def _batch_size(header: str | None) -> int:
    """batchSize from Sforce-Query-Options, within the documented 200..2000 (default 2000)."""
    for part in (header or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "batchSize" and value.isdigit():
            return min(2000, max(200, int(value)))
    return 2000


def _wire(value: Any) -> Any:
    """orjson's fallback: datetimes as Salesforce writes them, Decimals as their digits."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
            f"{value.microsecond // 1000:03d}+0000"
        )
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(type(value).__name__)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, default=_wire, option=orjson.OPT_PASSTHROUGH_DATETIME),
        status=status,
        content_type="application/json",
        charset="UTF-8",
        headers=headers,
    )


def _errors(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return _json([{"message": message, "errorCode": code}], status, headers)


# --- a small CRM ---------------------------------------------------------------------------

STAGES = ("Prospecting", "Qualification", "Proposal/Price Quote", "Closed Won", "Closed Lost")


def add_crm_objects(sf: FakeSalesforce) -> None:
    """Opportunity, Account (with a compound BillingAddress) and Contact (compound Name)."""
    sf.add_object(
        "Opportunity",
        standard_fields(
            FakeField("AccountId", "reference"),
            FakeField("Name", "string"),
            FakeField("StageName", "picklist"),
            FakeField("Amount", "currency"),
            FakeField("Probability", "percent"),
            FakeField("CloseDate", "date"),
            FakeField("IsClosed", "boolean"),
            FakeField("TotalOpportunityQuantity", "double"),
            FakeField("Description", "textarea"),
        ),
    )
    billing = [
        FakeField(f"Billing{part}", kind, compound="BillingAddress")
        for part, kind in (
            ("Street", "textarea"),
            ("City", "string"),
            ("PostalCode", "string"),
            ("Country", "string"),
            ("Latitude", "double"),
            ("Longitude", "double"),
        )
    ]
    sf.add_object(
        "Account",
        standard_fields(
            FakeField("Name", "string"),
            FakeField("NumberOfEmployees", "int"),
            FakeField("AnnualRevenue", "currency"),
            *billing,
            FakeField("BillingAddress", "address"),
            FakeField("Website", "url"),
        ),
    )
    sf.add_object(
        "Contact",
        standard_fields(
            FakeField("FirstName", "string", compound="Name"),
            FakeField("LastName", "string", compound="Name"),
            FakeField("Name", "string"),
            FakeField("Email", "email"),
            FakeField("Birthdate", "date"),
        ),
    )


def opportunity(n: int) -> dict[str, Any]:
    """Row n's values. Amounts are whole quarters: exact in binary floating point too, so a
    payload read back as floats (orjson) still equals the Decimal."""
    return {
        "Name": f"Deal {n}",
        "StageName": STAGES[n % len(STAGES)],
        "Amount": Decimal(f"{1000 + 37 * n}.{25 * (n % 4):02d}") if n % 7 else None,
        "Probability": Decimal(10 * (n % 10)),
        "CloseDate": dt.date(2025, 1 + n % 12, 1 + n % 28),
        "IsClosed": n % len(STAGES) >= 3,
        "TotalOpportunityQuantity": Decimal(f"{n}.5"),
        "Description": None if n % 3 else f"Note {n}",
    }


def account(n: int) -> dict[str, Any]:
    return {
        "Name": f"Account {n}",
        "NumberOfEmployees": 10 * n + 1,
        "AnnualRevenue": Decimal(f"{250000 + 1000 * n}.50"),
        "BillingStreet": f"{n} Main St",
        "BillingCity": "Lyon" if n % 2 else "Porto",
        "BillingPostalCode": f"{69000 + n}",
        "BillingCountry": "FR" if n % 2 else "PT",
        "BillingLatitude": Decimal("45.75") if n % 2 else None,
        "BillingLongitude": Decimal("4.5") if n % 2 else None,
        "Website": f"https://a{n}.example",
    }


def contact(n: int) -> dict[str, Any]:
    return {
        "FirstName": f"Ana{n}",
        "LastName": f"Silva{n}",
        "Name": f"Ana{n} Silva{n}",
        "Email": f"ana{n}@example.com",
        "Birthdate": dt.date(1980 + n % 20, 1 + n % 12, 1 + n % 28) if n % 4 else None,
    }


def seed(sf: FakeSalesforce, opportunities: int, accounts: int = 0, contacts: int = 0) -> None:
    for n in range(accounts):
        sf.insert("Account", **account(n))
    for n in range(opportunities):
        sf.insert("Opportunity", **opportunity(n))
    for n in range(contacts):
        sf.insert("Contact", **contact(n))
