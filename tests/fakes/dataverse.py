"""A fake Dataverse (Dynamics 365) on 127.0.0.1 that tests start: Entra ID's token endpoint on
an authority port and the Web API v9.2 on an organization port, as Microsoft documents them:

- ``POST /{tenant}/oauth2/v2.0/token`` (form, client credentials, ``scope={org}/.default``) ->
  ``{token_type, expires_in, ext_expires_in, access_token}``, or ``{error, error_description}``
  with the AADSTS code of a wrong tenant, client id, secret or scope;
- ``GET /api/data/v9.2/EntityDefinitions?$select=...&$filter=EntitySetName eq '<set>'`` and
  ``GET /api/data/v9.2/EntityDefinitions(LogicalName='<name>')/Attributes?$select=...``;
- ``GET /api/data/v9.2/<set>?$select=&$filter=modifiedon ge|gt <iso>&$orderby=modifiedon
  asc,<key> asc`` paged by ``Prefer: odata.maxpagesize=N`` (``page_size`` overrides it for small
  tests) with ``@odata.nextLink`` (a ``$skiptoken`` that holds the position: replayable);
- with ``Prefer: odata.track-changes`` (refused with $filter, $orderby, $expand or $top, and on
  a table without change tracking): every row, then ``@odata.deltaLink`` on the last page; the
  delta link (``$deltatoken=<version>!<date>``, percent-encoded) yields the rows changed since,
  in version order, then ``{"@odata.context": ".../$metadata#<set>/$deletedEntity", "id",
  "reason": "deleted"}`` rows;
- errors as ``{error: {code, message}}``; 429 service-protection errors with Retry-After.

Faults on demand: tokens that expire (``expires_in`` is enforced), throttling, 5xx blips,
delta tokens that expire ("Version stamp associated with the client has expired"; the error
code of that one is not documented, so the fake sends none). Writes stamp modifiedon from a
clock that ticks one second per write unless told ``at``, and bump a version (the change
tracking order).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from tests.fakes._serving import Ports

TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "9f3c2b1a-0000-4000-8000-00000000c11e"
START = dt.datetime(2025, 1, 6, 9, 0, tzinfo=dt.UTC)
MAX_PAGE = 5000
_NUMERIC = frozenset({"Money", "Decimal", "Double"})
_CHOICES = frozenset({"Picklist", "State", "Status"})
_LOOKUPS = frozenset({"Lookup", "Customer", "Owner"})


@dataclass
class FakeAttribute:
    name: str  # LogicalName
    type: str  # AttributeType
    attribute_of: str | None = None
    readable: bool = True

    @property
    def column(self) -> str:
        """The name a query selects and a row carries: ``_<name>_value`` for a lookup."""
        return f"_{self.name}_value" if self.type in _LOOKUPS else self.name


@dataclass
class FakeEntity:
    entity_set: str
    logical_name: str
    key: str
    attributes: dict[str, FakeAttribute]
    change_tracking: bool
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> column values
    events: list[tuple[int, str, bool]] = field(default_factory=list)  # (version, key, deleted)

    def column(self, name: str) -> FakeAttribute | None:
        return next((a for a in self.attributes.values() if a.column == name), None)


@dataclass
class Logged:
    method: str
    path: str
    status: int
    query: dict[str, str]
    raw: str  # the path and query as sent
    prefer: str | None = None


def standard_attributes(key: str, *extra: FakeAttribute) -> list[FakeAttribute]:
    return [
        FakeAttribute(key, "Uniqueidentifier"),
        *extra,
        FakeAttribute("createdon", "DateTime"),
        FakeAttribute("modifiedon", "DateTime"),
        FakeAttribute("versionnumber", "BigInt"),
    ]


class FakeDataverse:
    """Start with ``async with FakeDataverse(client_secret=...) as dv``; ``dv.authority`` and
    ``dv.url`` are the options."""

    def __init__(
        self, *, client_secret: str, page_size: int | None = None, expires_in: int = 3599
    ) -> None:
        self.client_secret = client_secret
        self.page_size = page_size  # test-only: smaller pages than maxpagesize asks for
        self.expires_in = expires_in
        self.entities: dict[str, FakeEntity] = {}
        self.now = START
        self.version = 1000
        self.log: list[Logged] = []
        self.issued: list[str] = []
        self.delay_s = 0.0
        self.expired_before = 0  # delta tokens of older versions have expired
        self.denied: set[str] = set()  # entity sets the application user may not read
        self._tokens: dict[str, float] = {}  # access token -> monotonic expiry
        self._throttle: list[str] = []
        self._fail_next: list[int] = []
        self._ids = itertools.count(1)
        self._ports = Ports()
        self.authority = ""
        self.url = ""

    def reserve(self) -> None:
        """Bind both ports now (the URLs are known), serve them on ``async with``."""
        self.authority, self.url = self._ports.reserve(2)

    @property
    def serving(self) -> bool:
        return self._ports.serving

    async def __aenter__(self) -> FakeDataverse:
        login = web.Application()
        login.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        api = web.Application(middlewares=[self._middleware])
        api.router.add_get("/api/data/v9.2/{rest:.+}", self._api)
        self.authority, self.url = await self._ports.serve(login, api)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._ports.stop()

    # --- data ---------------------------------------------------------------------------

    def add_entity(
        self, entity_set: str, logical_name: str, attributes: list[FakeAttribute], *,
        change_tracking: bool,
    ) -> FakeEntity:  # fmt: skip
        key = attributes[0].name
        entity = FakeEntity(
            entity_set, logical_name, key, {a.name: a for a in attributes}, change_tracking
        )
        self.entities[entity_set] = entity
        return entity

    def tick(self, at: dt.datetime | None = None) -> dt.datetime:
        if at is not None:
            self.now = max(self.now, at)
            return at
        self.now += dt.timedelta(seconds=1)
        return self.now

    def insert(self, entity_set: str, at: dt.datetime | None = None, **values: Any) -> str:
        entity = self.entities[entity_set]
        ident = str(uuid.UUID(int=(next(self._ids) << 64) | 0x4000_8000_0000_0000))
        stamp = self.tick(at)
        row = dict.fromkeys(a.column for a in entity.attributes.values() if a.readable)
        row |= {entity.key: ident, "createdon": stamp, **values}
        entity.rows[ident] = row
        self._changed(entity, ident, stamp)
        return ident

    def update(
        self, entity_set: str, ident: str, at: dt.datetime | None = None, **values: Any
    ) -> None:
        entity = self.entities[entity_set]
        entity.rows[ident] |= values
        self._changed(entity, ident, self.tick(at))

    def delete(self, entity_set: str, ident: str) -> None:
        entity = self.entities[entity_set]
        del entity.rows[ident]
        self.version += 1
        entity.events.append((self.version, ident, True))

    def _changed(self, entity: FakeEntity, ident: str, stamp: dt.datetime) -> None:
        self.version += 1
        row = entity.rows[ident]
        row["modifiedon"], row["versionnumber"] = stamp, self.version
        entity.events.append((self.version, ident, False))

    # --- faults -------------------------------------------------------------------------

    def expire_tokens(self) -> None:
        self._tokens.clear()

    def expire_delta_tokens(self) -> None:
        """Every delta link handed out so far is too old now."""
        self.expired_before = self.version + 1

    def throttle_next(self, count: int, retry_after: str = "1") -> None:
        self._throttle += [retry_after] * count

    def fail_next(self, count: int, status: int = 503) -> None:
        self._fail_next += [status] * count

    def requests_to(self, fragment: str) -> list[Logged]:
        return [e for e in self.log if fragment in e.raw]

    # --- Entra ID -----------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.log.append(Logged("POST", request.path, 0, {}, request.path_qs))
        if request.match_info["tenant"] != TENANT:
            return self._aad(400, "invalid_request", "AADSTS90002: Tenant not found.")
        if form.get("grant_type") != "client_credentials":
            return self._aad(400, "unsupported_grant_type", "AADSTS70003: grant type")
        if form.get("client_id") != CLIENT_ID:
            return self._aad(
                400, "unauthorized_client", "AADSTS700016: Application with identifier was "
                "not found in the directory.",
            )  # fmt: skip
        if form.get("client_secret") != self.client_secret:
            return self._aad(
                401, "invalid_client", "AADSTS7000215: Invalid client secret provided. Ensure "
                "the secret being sent in the request is the client secret value, not the "
                "client secret ID.",
            )  # fmt: skip
        if form.get("scope") != f"{self.url}/.default":
            return self._aad(400, "invalid_scope", "AADSTS70011: The provided scope is invalid.")
        token = f"eyJ0eXAiOiJKV1Qi.{secrets.token_urlsafe(32)}"
        self._tokens[token] = time.monotonic() + self.expires_in
        self.issued.append(token)
        self.log[-1].status = 200
        body = {
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "ext_expires_in": self.expires_in,
            "access_token": token,
        }
        return web.json_response(body)

    def _aad(self, status: int, code: str, description: str) -> web.Response:
        self.log[-1].status = status
        body = {
            "error": code,
            "error_description": f"{description} Trace ID: {uuid.uuid4()}",
            "error_codes": [int(description[6:].split(":")[0])],
            "trace_id": str(uuid.uuid4()),
        }
        return web.json_response(body, status=status)

    # --- Web API ------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        response = await self._answer(request, handler)
        self.log.append(
            Logged(
                request.method, request.path, response.status, dict(request.query),
                request.raw_path, request.headers.get("Prefer"),
            )
        )  # fmt: skip
        return response

    async def _answer(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._fail_next:
            return web.Response(status=self._fail_next.pop(0), text="Service Unavailable")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expiry = self._tokens.get(token) if scheme == "Bearer" else None
        if expiry is None or time.monotonic() >= expiry:
            return _error(401, "", "The access token is expired or invalid.")
        if self._throttle:
            response = _error(
                429, "0x80072322", "Number of requests exceeded the limit of 6000 over time "
                "window of 300 seconds.",
            )  # fmt: skip
            response.headers["Retry-After"] = self._throttle.pop(0)
            return response
        try:
            result: web.StreamResponse = await handler(request)
        except _ApiError as exc:
            return exc.response
        return result

    async def _api(self, request: web.Request) -> web.Response:
        rest = request.match_info["rest"]
        if rest == "EntityDefinitions":
            return self._definitions(request)
        if rest.startswith("EntityDefinitions(LogicalName='") and rest.endswith("')/Attributes"):
            return self._attributes(rest.split("'")[1])
        entity = self.entities.get(rest)
        if rest in self.denied:
            raise _ApiError(
                403, "0x80040220", "Principal user (Id=5f3c, type=8, roleCount=1) is missing "
                f"prvRead{rest} privilege on OTC=1 for entity '{rest}'.",
            )  # fmt: skip
        if entity is None:
            raise _ApiError(404, "0x80060888", f"Resource not found for the segment '{rest}'.")
        prefer = _prefer(request.headers.get("Prefer", ""))
        size = min(prefer.get("odata.maxpagesize", MAX_PAGE), MAX_PAGE)
        size = min(size, self.page_size or size)
        if "odata.track-changes" in prefer:
            return self._changes(request, entity, size)
        return self._query(request, entity, size)

    def _definitions(self, request: web.Request) -> web.Response:
        wanted = request.query.get("$filter", "").removeprefix("EntitySetName eq ").strip("'")
        value = [
            {
                "LogicalName": e.logical_name,
                "EntitySetName": e.entity_set,
                "PrimaryIdAttribute": e.key,
                "ChangeTrackingEnabled": e.change_tracking,
                "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, e.logical_name)),
            }
            for e in self.entities.values()
            if e.entity_set == wanted
        ]
        return self._json({"@odata.context": self._context("EntityDefinitions"), "value": value})

    def _attributes(self, logical_name: str) -> web.Response:
        entity = next((e for e in self.entities.values() if e.logical_name == logical_name), None)
        if entity is None:
            raise _ApiError(404, "0x80040217", f"Could not find entity '{logical_name}'.")
        value = [
            {
                "@odata.type": f"#Microsoft.Dynamics.CRM.{a.type}AttributeMetadata",
                "LogicalName": a.name,
                "AttributeType": a.type,
                "AttributeOf": a.attribute_of,
                "IsValidForRead": a.readable,
                "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{logical_name}.{a.name}")),
            }
            for a in entity.attributes.values()
        ]
        return self._json({"@odata.context": self._context("Attributes"), "value": value})

    def _query(self, request: web.Request, entity: FakeEntity, size: int) -> web.Response:
        query = request.query
        columns = self._select(entity, query)
        rows = list(entity.rows.values())
        where = query.get("$filter")
        if where is not None:
            name, op, value = where.split(" ", 2)
            if name != "modifiedon" or op not in ("ge", "gt"):
                raise _ApiError(400, "0x80060888", f"this fake cannot filter by {where!r}")
            since = dt.datetime.fromisoformat(value)
            rows = [
                r
                for r in rows
                if r["modifiedon"] >= since and (op == "ge" or r["modifiedon"] > since)
            ]
        order = [part.split(" ")[0] for part in query.get("$orderby", entity.key).split(",")]
        rows.sort(key=lambda r: tuple(_sortable(r[n]) for n in order))
        start = 0
        token = query.get("$skiptoken")
        if token is not None:
            after = _untoken(token)["after"]
            start = next(
                (i for i, r in enumerate(rows) if [_sortable(r[n]) for n in order] > after),
                len(rows),
            )
        page = rows[start : start + size]
        body: dict[str, Any] = {
            "@odata.context": self._context(f"{entity.entity_set}({','.join(columns)})"),
            "value": [self._row(entity, r, columns) for r in page],
        }
        if start + size < len(rows):
            position = [_sortable(page[-1][n]) for n in order]
            body["@odata.nextLink"] = self._link(
                request, {"$skiptoken": _token({"after": position})}
            )
        return self._json(body, prefer=f"odata.maxpagesize={size}")

    def _changes(self, request: web.Request, entity: FakeEntity, size: int) -> web.Response:
        query = request.query
        for option in ("$filter", "$orderby", "$expand", "$top"):
            if option in query:
                raise _ApiError(
                    400, "0x80060888",
                    f'The "{option}" query parameter isn\'t supported when Change Tracking is '
                    "enabled.",
                )  # fmt: skip
        if not entity.change_tracking:
            raise _ApiError(
                400, "0x80048419", f"Change tracking is not enabled on {entity.logical_name}."
            )
        columns = self._select(entity, query)
        state = _untoken(query["$skiptoken"]) if "$skiptoken" in query else None
        if state is None:
            since = None
            if "$deltatoken" in query:
                since = int(query["$deltatoken"].split("!")[0])
                if since < self.expired_before:
                    raise _ApiError(
                        400, None,
                        "Version stamp associated with the client has expired. Please perform "
                        "a full sync.",
                    )  # fmt: skip
            state = {"since": since, "upto": self.version, "offset": 0}
        items = self._items(entity, state["since"], state["upto"])
        offset = state["offset"]
        page = items[offset : offset + size]
        suffix = "/$delta" if state["since"] is not None else ""
        body: dict[str, Any] = {
            "@odata.context": self._context(f"{entity.entity_set}({','.join(columns)}){suffix}"),
            "value": [
                self._row(entity, entity.rows[k], columns) if not gone else self._deleted(entity, k)
                for k, gone in page
            ],
        }
        if offset + size < len(items):
            link = {"$skiptoken": _token({**state, "offset": offset + size})}
            body["@odata.nextLink"] = self._link(request, link)
        else:
            stamp = (START + dt.timedelta(seconds=state["upto"])).strftime("%m/%d/%Y %H:%M:%S")
            body["@odata.deltaLink"] = self._link(
                request, {"$deltatoken": f"{state['upto']}!{stamp}"}
            )
        return self._json(body, prefer=f"odata.track-changes,odata.maxpagesize={size}")

    def _items(self, entity: FakeEntity, since: int | None, upto: int) -> list[tuple[str, bool]]:
        """(key, deleted) of a change-tracking read: every row by key when ``since`` is None;
        else each key's last change in (since, upto]: new and changed rows in version order,
        then deletes."""
        if since is None:
            return [(k, False) for k in sorted(entity.rows)]
        last: dict[str, tuple[int, bool]] = {}
        for version, key, gone in entity.events:
            if since < version <= upto:
                last[key] = (version, gone)
        ordered = sorted(last.items(), key=lambda item: item[1][0])
        changed = [(k, False) for k, (_, gone) in ordered if not gone and k in entity.rows]
        return changed + [(k, True) for k, (_, gone) in ordered if gone]

    def _select(self, entity: FakeEntity, query: Any) -> list[str]:
        columns = query.get("$select", "").split(",") if "$select" in query else None
        if columns is None:
            return [a.column for a in entity.attributes.values() if a.readable]
        for name in columns:
            if entity.column(name) is None:
                raise _ApiError(
                    400, "0x80060888",
                    f"Could not find a property named '{name}' on type "
                    f"'Microsoft.Dynamics.CRM.{entity.logical_name}'.",
                )  # fmt: skip
        return columns

    def _row(self, entity: FakeEntity, row: dict[str, Any], columns: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.etag": f'W/"{row["versionnumber"]}"'}
        for name in dict.fromkeys([*columns, entity.key]):
            out[name] = row.get(name)
        return out

    def _deleted(self, entity: FakeEntity, key: str) -> dict[str, Any]:
        context = self._context(f"{entity.entity_set}/$deletedEntity")
        return {"@odata.context": context, "id": key, "reason": "deleted"}

    def _context(self, what: str) -> str:
        return f"{self.url}/api/data/v9.2/$metadata#{what}"

    def _link(self, request: web.Request, extra: dict[str, str]) -> str:
        """A next or delta link: the request's own query options plus ``extra``,
        percent-encoded as Dataverse does (``!`` as %21, ``/`` as %2f)."""
        kept = {k: v for k, v in request.query.items() if k not in ("$skiptoken", "$deltatoken")}
        parts = [f"{k}={quote(v, safe=',')}" for k, v in {**kept, **extra}.items()]
        return f"{self.url}{request.path}?{'&'.join(parts)}".replace("%2F", "%2f")

    def _json(self, body: Any, prefer: str | None = None) -> web.Response:
        headers = {"OData-Version": "4.0"}
        if prefer is not None:
            headers["Preference-Applied"] = prefer
        raw = orjson.dumps(body, default=_wire, option=orjson.OPT_PASSTHROUGH_DATETIME)
        return web.Response(body=raw, content_type="application/json", headers=headers)


class _ApiError(Exception):
    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.response = _error(status, code, message)


def _error(status: int, code: str | None, message: str) -> web.Response:
    error: dict[str, Any] = {"message": message}
    if code is not None:
        error = {"code": code, **error}
    return web.json_response({"error": error}, status=status)


def _prefer(header: str) -> dict[str, int]:
    """Prefer preferences: name -> value (0 when it has none)."""
    out: dict[str, int] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name:
            out[name] = int(value) if value.isdigit() else 0
    return out


def _token(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state).encode()).decode()


def _untoken(token: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token.encode()))
    return state


def _sortable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def _wire(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(type(value).__name__)


# --- a small CRM ---------------------------------------------------------------------------


def add_crm_entities(dv: FakeDataverse, *, opportunities_tracked: bool = False) -> None:
    """accounts (change tracking on) and opportunities (off unless told)."""
    dv.add_entity(
        "accounts",
        "account",
        standard_attributes(
            "accountid",
            FakeAttribute("name", "String"),
            FakeAttribute("accountnumber", "String"),
            FakeAttribute("revenue", "Money"),
            FakeAttribute("exchangerate", "Decimal"),
            FakeAttribute("numberofemployees", "Integer"),
            FakeAttribute("industrycode", "Picklist"),
            FakeAttribute("creditonhold", "Boolean"),
            FakeAttribute("description", "Memo"),
            FakeAttribute("parentaccountid", "Lookup"),
            FakeAttribute("parentaccountidname", "String", attribute_of="parentaccountid"),
            FakeAttribute("entityimage", "Virtual"),
        ),
        change_tracking=True,
    )
    dv.add_entity(
        "opportunities",
        "opportunity",
        standard_attributes(
            "opportunityid",
            FakeAttribute("name", "String"),
            FakeAttribute("estimatedvalue", "Money"),
            FakeAttribute("estimatedclosedate", "DateTime"),
            FakeAttribute("closeprobability", "Integer"),
            FakeAttribute("parentaccountid", "Lookup"),
            FakeAttribute("statecode", "State"),
            FakeAttribute("stepname", "String"),
        ),
        change_tracking=opportunities_tracked,
    )


def account(n: int) -> dict[str, Any]:
    return {
        "name": f"Account {n}",
        "accountnumber": f"AC-{n:05d}",
        "revenue": Decimal(f"{250000 + 1000 * n}.50") if n % 5 else None,
        "exchangerate": Decimal("1.0000000000"),
        "numberofemployees": 10 * n + 1,
        "industrycode": 1 + n % 7,
        "creditonhold": n % 4 == 0,
        "description": None if n % 3 else f"Note {n}",
    }


def opportunity(n: int, account_id: str | None = None) -> dict[str, Any]:
    return {
        "name": f"Opportunity {n}",
        "estimatedvalue": Decimal(f"{1000 + 37 * n}.{(25 * n) % 100:02d}"),
        "estimatedclosedate": dt.datetime(2025, 1 + n % 12, 1 + n % 28, tzinfo=dt.UTC),
        "closeprobability": (10 * n) % 100,
        "_parentaccountid_value": account_id,
        "statecode": n % 3,
        "stepname": f"{1 + n % 3}-Qualify",
    }


def seed(dv: FakeDataverse, accounts: int = 0, opportunities: int = 0) -> None:
    ids = [dv.insert("accounts", **account(n)) for n in range(accounts)]
    for n in range(opportunities):
        dv.insert("opportunities", **opportunity(n, ids[n % len(ids)] if ids else None))


def expected_record(
    entity: FakeEntity, row: dict[str, Any], columns: list[str] | None = None
) -> dict[str, Any]:
    """What the connector yields for a row: the key, then every readable column (or
    ``columns``): amounts as Decimal, choices as their option value's text, datetimes as the
    Web API writes them."""
    if columns is None:
        columns = [
            a.column
            for a in entity.attributes.values()
            if a.readable and a.type not in ("Virtual",) and a.attribute_of is None
        ]
    out: dict[str, Any] = {}
    for name in dict.fromkeys([entity.key, *columns]):
        attribute = entity.column(name)
        assert attribute is not None
        value = row.get(name)
        if value is not None and attribute.type in _NUMERIC:
            value = Decimal(str(value))
        elif value is not None and attribute.type in _CHOICES:
            value = str(value)
        elif isinstance(value, dt.datetime):
            value = _wire(value)
        out[name] = value
    return out
