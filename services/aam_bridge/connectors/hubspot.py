"""The HubSpot CRM v3 connector (``type: hubspot``): objects read in full by the list endpoint,
then incrementally by the search endpoint over a window fixed at each run's start, with
archived objects reported as deletes.

A table is an object type (``deals``), keyed by ``id``, with a column per property typed as
the properties API says (every value arrives as a string and is converted). The first read
lists every object (``GET /crm/v3/objects/{type}``, properties split over several requests
per page when the list would make the URL too long). Later reads search the window
[last end - LOOKBACK_S, run start] on the modified-date property in ``hs_object_id`` order,
each page past the last id read (keyset: no ``after``, so the 10 000-result cap and any
number of objects sharing a modified time neither stop nor loop a read), then list the
archived objects (archiving leaves the modified date alone) whose ``archivedAt`` falls in the
window. Cursors are compact JSON (``hubspot_schema.Cursor``); every page's cursor resumes
right after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog

from aam_bridge.connectors import hubspot_schema as hs
from aam_bridge.connectors._common import (
    HttpConnector,
    base_url_option,
    name_lists,
    reject_unknown,
    text_option,
)
from aam_bridge.connectors._http import (
    AuthError,
    HttpClient,
    HttpOptions,
    HttpStatusError,
    Pacer,
    StaticToken,
)
from aam_bridge.connectors.base import ConnectorConfig, Page, TableSpec
from aam_dcl.errors import ConfigError, ConnectorError

log = structlog.get_logger("aam_bridge.hubspot")

DEFAULT_BASE_URL = "https://api.hubapi.com"
LIST_LIMIT = 100  # the list endpoint's maximum page
LOOKBACK_S = 60.0  # a window starts this long before the last one ended: search indexes lag
_OPTIONS = ("base_url", "access_token", "objects")
_OBJECTS_RULE = (
    "use a list of object types like [deals, contacts, companies], or a mapping of types to "
    "property lists like {deals: [dealname, amount]} (null: every property)"
)


class HubSpotConnector(HttpConnector):
    """HubSpot CRM objects over the v3 API (``type: hubspot``; docs/connectors.md).

    Options: ``base_url`` (https://api.hubapi.com), ``access_token`` (a private app's),
    ``objects``, and the HTTP options of ``_http.HttpOptions``. The constructor only
    validates them.
    """

    type_name = "hubspot"
    search_requests_per_second = 4.0  # HubSpot's limit of search calls per token

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__(config)
        opts = config.options
        reject_unknown(self.type_name, opts, _OPTIONS)
        self.base_url = base_url_option(
            opts,
            "base_url",
            DEFAULT_BASE_URL,
            f"the https:// base URL of the API: {DEFAULT_BASE_URL}",
        )
        token = text_option(opts, "access_token")
        if token is None:
            raise ConfigError("options.access_token is required: the private app's access token")
        self.objects = name_lists(
            "objects", opts.get("objects"), hs.is_name, kind="an object type", rule=_OBJECTS_RULE,
            lists="a list of property names like [dealname, amount], or null for every property",
        )  # fmt: skip
        self.http_options = HttpOptions.from_options(opts)
        self._auth = StaticToken(token, self.base_url)
        self._token = token
        self._plans: dict[str, hs.PropertyPlan] = {}  # made by tables(), for the next read
        self._search_pacer = Pacer(self.search_requests_per_second)

    async def tables(self) -> list[TableSpec]:
        """Reads every object type's properties, so each table declares its columns' types;
        the next read of each table uses them."""
        self._plans = {name: await self._plan(name) for name in self.objects}
        return [TableSpec(name, (hs.KEY,), plan.column_types) for name, plan in self._plans.items()]

    def reads_in_full(self, table: TableSpec, cursor: str | None) -> bool:
        """A read from no cursor lists every object (a resumed one too)."""
        return cursor is None or hs.parse_cursor(cursor).full

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        name = self._object_of(table.name)
        at = hs.parse_cursor(cursor) if cursor is not None else None
        plan = self._plans.pop(name, None) or await self._plan(name)
        if at is None or at.full:
            start = at.since if at is not None else _now_ms() - int(LOOKBACK_S * 1000)
            async for page in self._list_all(plan, start, at.after if at is not None else None):
                yield page
            return
        # A read's end starts a window that ends now; a page cursor holds its window.
        until = at.until if at.until is not None else max(at.since, _now_ms())
        if not at.deletes:
            async for page in self._search(plan, at.since, until, at.last_id):
                yield page
        async for page in self._archived(plan, at.since, until, at.archived):
            yield page

    # --- the three passes ----------------------------------------------------------------

    async def _list_all(
        self, plan: hs.PropertyPlan, start: int, after: str | None
    ) -> AsyncIterator[Page]:
        """Every live object in id order; a page's properties from one request per chunk."""
        chunks = plan.property_chunks()
        while True:
            rows, after = await self._list_page(plan, chunks, after)
            records = [plan.record(row) for row in rows]
            if after is None or not rows:
                yield Page(records, hs.Cursor(since=start).encode())
                return
            yield Page(records, hs.Cursor(since=start, after=after).encode())

    async def _list_page(
        self, plan: hs.PropertyPlan, chunks: list[tuple[str, ...]], after: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One list page: the first chunk's objects and paging token, each object merged with
        its properties from the other chunks (asked with the same ``after``). An object a later
        chunk no longer returns was archived meanwhile: it is left out (the next run's archived
        pass reports it)."""
        answers = await asyncio.gather(
            *(self._list(plan, chunk, after) for chunk in chunks), return_exceptions=True
        )
        for answer in answers:  # every request has ended: none is left running on failure
            if isinstance(answer, BaseException):
                raise answer
        bodies = list(answers)
        rows = _results(plan.object_type, bodies[0])
        for body in bodies[1:]:
            more = {row["id"]: row for row in _results(plan.object_type, body)}
            kept = []
            for row in rows:
                other = more.get(row["id"])
                if other is not None:
                    row["properties"] = {**row.get("properties", {}), **other.get("properties", {})}
                    kept.append(row)
            if len(kept) < len(rows):
                log.debug("hubspot_archived_meanwhile", object=plan.object_type)
            rows = kept
        return rows, _next_after(bodies[0])

    async def _list(self, plan: hs.PropertyPlan, chunk: tuple[str, ...], after: str | None) -> Any:
        params = {"limit": str(LIST_LIMIT), "archived": "false"}
        if chunk:
            params["properties"] = ",".join(chunk)
        if after is not None:
            params["after"] = after
        return await self._call("GET", f"/crm/v3/objects/{plan.object_type}", plan, params=params)

    async def _search(
        self, plan: hs.PropertyPlan, since: int, until: int, last: str | None
    ) -> AsyncIterator[Page]:
        """The objects modified in [since, until], in id order, one keyset page at a time."""
        while True:
            await self._search_pacer.wait()
            body = await self._call(
                "POST",
                f"/crm/v3/objects/{plan.object_type}/search",
                plan,
                json=hs.search_body(plan, since, until, last),
            )
            rows = _results(plan.object_type, body)
            for row in rows:
                if not row["id"].isdigit() or (last is not None and int(row["id"]) <= int(last)):
                    raise ConnectorError(
                        f"hubspot search of {plan.object_type} returned objects out of id order "
                        f"at id {row['id']!r}"
                    )
                last = row["id"]
            if not rows:
                return
            cursor = hs.Cursor(since, until, last_id=last)
            yield Page([plan.record(row) for row in rows], cursor.encode())
            if _next_after(body) is None:
                return

    async def _archived(
        self, plan: hs.PropertyPlan, since: int, until: int, after: str | None
    ) -> AsyncIterator[Page]:
        """The objects archived in [since, until], as deletes; the last page's cursor starts
        the next run's window."""
        path = f"/crm/v3/objects/{plan.object_type}"
        while True:
            params = {"limit": str(LIST_LIMIT), "archived": "true", "properties": hs.OBJECT_ID}
            if after is not None:
                params["after"] = after
            body = await self._call("GET", path, plan, params=params)
            rows = _results(plan.object_type, body)
            deleted = [
                {hs.KEY: row["id"]}
                for row in rows
                if since <= (hs.archived_at_ms(row) or -1) <= until
            ]
            after = _next_after(body)
            if after is None or not rows:
                end = max(since, until - int(LOOKBACK_S * 1000))
                yield Page([], hs.Cursor(since=end).encode(), deleted)
                return
            if deleted:
                cursor = hs.Cursor(since, until, archived=after, deletes=True)
                yield Page([], cursor.encode(), deleted)

    # --- requests ------------------------------------------------------------------------

    def _new_client(self) -> HttpClient:
        return HttpClient(
            vendor="hubspot",
            connector=self.config.name,
            options=self.http_options,
            auth=self._auth,
            secrets=[self._token],
            parse_error=hs.parse_error,
            wait_hint=hs.wait_hint,
            quota=hs.daily_usage,
        )

    def _object_of(self, table: str) -> str:
        if table not in self.objects:
            raise self._no_table(table, self.objects)
        return table

    async def _plan(self, name: str) -> hs.PropertyPlan:
        body = await self._call("GET", f"/crm/v3/properties/{name}", None, object_type=name)
        plan = hs.plan_properties(name, body, self.objects[name])
        if plan.missing:
            log.warning(
                "hubspot_properties_missing", object=name, properties=list(plan.missing),
                hint="the object has no such properties (any more): they are not read",
            )  # fmt: skip
        log.debug("hubspot_properties", object=name, properties=len(plan.properties))
        return plan

    async def _call(
        self,
        method: str,
        path: str,
        plan: hs.PropertyPlan | None,
        *,
        object_type: str | None = None,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> Any:
        name = plan.object_type if plan is not None else object_type or "?"
        return await self._client().request_json(
            method,
            path,
            what=f"response for {name}",
            refine=lambda exc: _read_error(name, exc),
            params=params,
            json=json,
        )


def _read_error(name: str, exc: HttpStatusError) -> ConnectorError:
    """The error to raise for a refused request about object type ``name``: ``exc`` itself
    unless there is more to say."""
    if exc.status == 401:
        return AuthError(f"{exc}: check options.access_token (a private app's access token)")
    if exc.status == 403:
        custom = name.startswith("p_") or name[:1].isdigit()  # p_<name>, 2-<id>
        scope = "custom" if custom else name
        return AuthError(
            f"{exc}: give the private app the scopes crm.objects.{scope}.read and "
            f"crm.schemas.{scope}.read"
        )
    if exc.status == 429 and (exc.code or "").endswith(":DAILY"):
        usage = hs.daily_usage(exc.headers)
        used = f" ({usage[0]}/{usage[1]} calls today)" if usage else ""
        return ConnectorError(
            f"hubspot {name}: the account's daily API limit is reached{used}: the run stops at "
            "its last checkpoint and the bridge retries it later"
        )
    if exc.status == 404 or "infer object type" in str(exc):  # HubSpot's 400 for a bad type
        return ConnectorError(
            f"{exc}: check that {name} in options.objects is an object type of the account "
            "(deals, contacts, companies, tickets, or a custom object's p_<name>)"
        )
    if exc.status == 414:
        return ConnectorError(f"{exc}: list fewer properties of {name} in options.objects")
    return exc


def _results(object_type: str, body: Any) -> list[dict[str, Any]]:
    rows = body.get("results") if isinstance(body, dict) else None
    if not isinstance(rows, list) or not all(
        isinstance(row, dict) and isinstance(row.get("id"), str) for row in rows
    ):
        raise ConnectorError(f"hubspot {object_type}: a response without a results list of ids")
    return rows


def _next_after(body: Any) -> str | None:
    paging = body.get("paging") if isinstance(body, dict) else None
    after = paging.get("next", {}).get("after") if isinstance(paging, dict) else None
    return after if isinstance(after, str) and after else None


def _now_ms() -> int:
    return int(time.time() * 1000)
