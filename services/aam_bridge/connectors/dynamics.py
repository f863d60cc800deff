"""The Dynamics 365 / Dataverse Web API connector (``type: dynamics``): entity sets read with
change tracking (deletes included) where the table tracks changes, else incrementally on
``modifiedon`` (without deletes).

A table is an entity set (``accounts``), keyed by the entity's PrimaryIdAttribute
(``accountid``), with a column per readable attribute typed as its AttributeType says
(lookups as ``_<name>_value`` GUIDs). Tokens come from Entra ID's client-credentials grant and
are renewed before the ``expires_in`` they announce (and on a 401).

- Change tracking (EntityMetadata.ChangeTrackingEnabled): the first read GETs the entity set
  with ``Prefer: odata.track-changes``: every row, page by page (``@odata.nextLink``), the last
  page carrying ``@odata.deltaLink``. Later reads GET that delta link: new and changed rows,
  then ``$deletedEntity`` rows, which become deletes. A delta link the server no longer knows
  (its token expired) starts a full read again.
- Otherwise: ``$filter=modifiedon ge <last modifiedon read>`` ordered by (modifiedon, key);
  deletes are not seen (logged once per entity).

Every link is followed verbatim, with the same Prefer header. Cursors are compact JSON
(``dynamics_schema.Cursor``); every page's cursor resumes right after it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import structlog

from aam_bridge.connectors import dynamics_schema as ds
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
    Token,
    json_body,
)
from aam_bridge.connectors.base import ConnectorConfig, Page, TableSpec
from aam_dcl.errors import ConfigError, ConnectorError

log = structlog.get_logger("aam_bridge.dynamics")

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
MAX_PAGE_SIZE = 5000  # odata.maxpagesize: Dataverse's default and maximum
_OPTIONS = ("url", "authority", "tenant_id", "client_id", "client_secret", "entities")
_TENANT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
_ENTITIES_RULE = (
    "use a list of entity set names like [accounts, opportunities], or a mapping of names to "
    "column lists like {accounts: [name, revenue]} (null: every column)"
)
_ODATA = {"OData-Version": "4.0", "OData-MaxVersion": "4.0"}
_PAGES = {**_ODATA, "Prefer": f"odata.maxpagesize={MAX_PAGE_SIZE}"}
_CHANGES = {**_ODATA, "Prefer": f"odata.track-changes,odata.maxpagesize={MAX_PAGE_SIZE}"}


class EntraAuth:
    """An Entra ID app's token for the organization, by the client-credentials grant (which
    grants no refresh token): asked again before the ``expires_in`` it announces."""

    def __init__(
        self, authority: str, tenant_id: str, client_id: str, client_secret: str, org_url: str
    ) -> None:
        self.token_url = f"{authority}/{quote(tenant_id, safe='')}/oauth2/v2.0/token"
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
            "scope": f"{org_url}/.default",
        }
        self._org_url = org_url

    async def fetch(self, http: HttpClient) -> Token:
        try:
            response = await http.request(
                "POST", self.token_url, data=self._form, authenticated=False
            )
        except HttpStatusError as exc:
            if 400 <= exc.status < 500 and exc.status != 429:
                raise AuthError(
                    f"{exc}: check options.tenant_id, options.client_id and "
                    "options.client_secret (the secret's value, not its id)"
                ) from exc
            raise
        body = json_body("dynamics", response, "token response")
        token = body.get("access_token") if isinstance(body, dict) else None
        lifetime = body.get("expires_in") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ConnectorError("dynamics token response has no access_token")
        http.add_secret(token)
        expires_at = None
        if isinstance(lifetime, int | str) and str(lifetime).isdigit():
            expires_at = time.monotonic() + int(lifetime)
        return Token(token, base_url=self._org_url, expires_at=expires_at)


class DynamicsConnector(HttpConnector):
    """Dataverse entity sets over the Web API v9.2 (``type: dynamics``; docs/connectors.md).

    Options: ``url`` (the organization), ``authority`` (https://login.microsoftonline.com),
    ``tenant_id``, ``client_id``, ``client_secret``, ``entities``, and the HTTP options of
    ``_http.HttpOptions``. The constructor only validates them.
    """

    type_name = "dynamics"

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__(config)
        opts = config.options
        reject_unknown(self.type_name, opts, _OPTIONS)
        self.url = base_url_option(
            opts, "url", None, "the organization's https:// URL, e.g. https://org.crm.dynamics.com"
        )
        authority = base_url_option(
            opts, "authority", DEFAULT_AUTHORITY, f"the https:// Entra ID host, {DEFAULT_AUTHORITY}"
        )
        tenant_id = text_option(opts, "tenant_id")
        if tenant_id is None or not set(tenant_id) <= _TENANT_CHARS:
            raise ConfigError(
                "options.tenant_id is invalid: use the directory (tenant) id, a GUID, or its "
                "domain like contoso.onmicrosoft.com"
            )
        secrets = {}
        for name in ("client_id", "client_secret"):
            value = text_option(opts, name)
            if value is None:
                raise ConfigError(f"options.{name} is required: the app registration's {name}")
            secrets[name] = value
        self.entities = name_lists(
            "entities", opts.get("entities"), ds.is_name, kind="an entity set name",
            rule=_ENTITIES_RULE,
            lists="a list of column names like [name, revenue], or null for every column",
        )  # fmt: skip
        self.http_options = HttpOptions.from_options(opts)
        self._auth = EntraAuth(
            authority, tenant_id, secrets["client_id"], secrets["client_secret"], self.url
        )
        self._secret = secrets["client_secret"]
        self._plans: dict[str, ds.EntityPlan] = {}  # made by tables(), for the next read
        self._full_reads: set[tuple[str, str]] = set()  # (table, cursor) reads that fell back
        self._warned: set[str] = set()  # entity sets whose untracked deletes were logged

    async def tables(self) -> list[TableSpec]:
        """Reads every entity's definition and attributes, so each table declares its key and
        columns' types; the next read of each table uses them."""
        self._plans = {name: await self._plan(name) for name in self.entities}
        return [
            TableSpec(name, (plan.key,), plan.column_types) for name, plan in self._plans.items()
        ]

    def reads_in_full(self, table: TableSpec, cursor: str | None) -> bool:
        """From no cursor, or from the cursor of an empty table read by modifiedon, every row
        is read; so is a read whose delta link had expired (it started again)."""
        if cursor is None or (table.name, cursor) in self._full_reads:
            return True
        at = ds.parse_cursor(cursor)
        return at.by_modified and at.since is None and at.next is None

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        name = self._entity_of(table.name)
        at = ds.parse_cursor(cursor) if cursor is not None else None
        plan = self._plans.pop(name, None) or await self._plan(name)
        if plan.change_tracking:
            if at is not None and at.by_modified:  # change tracking was turned on since
                log.info("dynamics_change_tracking_started", entity=name)
                self._full_reads.add((table.name, cursor or ""))
                at = None
            pages = self._read_changes(plan, table.name, cursor, at)
        else:
            if name not in self._warned:
                self._warned.add(name)
                log.warning(
                    "dynamics_deletes_not_tracked", entity=name,
                    hint="the table has no change tracking: rows are read by modifiedon and "
                    "deletes are not seen; enable Track changes on the table to see them",
                )  # fmt: skip
            if at is not None and not at.by_modified:  # a delta link, but no change tracking
                log.warning("dynamics_change_tracking_gone", entity=name)
                self._full_reads.add((table.name, cursor or ""))
                at = None
            pages = self._read_modified(plan, at)
        async for page in pages:
            yield page

    async def _read_changes(
        self, plan: ds.EntityPlan, table: str, cursor: str | None, at: ds.Cursor | None
    ) -> AsyncIterator[Page]:
        """The whole entity set (no delta link yet) or what changed since the delta link."""
        first = f"{ds.API_PATH}/{plan.entity_set}"
        url: str = first
        params: dict[str, str] | None = {"$select": plan.select}
        if at is not None:
            url, params = at.delta or at.next or first, None
        restarted = False
        while True:
            try:
                body = await self._get(url, plan.entity_set, params=params, headers=_CHANGES)
            except HttpStatusError as exc:
                if at is None or at.delta is None or restarted or not _expired(exc):
                    raise
                # The delta token expired (Organization.ExpireChangeTrackingInDays): read all.
                log.warning("dynamics_delta_expired", entity=plan.entity_set, error=str(exc))
                restarted = True
                self._full_reads.add((table, cursor or ""))
                url, params = first, {"$select": plan.select}
                continue
            records, deleted = ds.split_changes(plan, _rows(plan, body))
            next_link, delta = body.get("@odata.nextLink"), body.get("@odata.deltaLink")
            if isinstance(next_link, str):
                yield Page(records, ds.Cursor(next=self._link(next_link)).encode(), deleted)
                url, params = next_link, None
            elif isinstance(delta, str):
                yield Page(records, ds.Cursor(delta=self._link(delta)).encode(), deleted)
                return
            else:
                raise ConnectorError(
                    f"dynamics {plan.entity_set}: a change-tracking page with neither "
                    "@odata.nextLink nor @odata.deltaLink"
                )

    async def _read_modified(
        self, plan: ds.EntityPlan, at: ds.Cursor | None
    ) -> AsyncIterator[Page]:
        """The rows modified at the cursor's modifiedon or later, in (modifiedon, key) order."""
        since = at.since if at is not None else None
        url = at.next if at is not None and at.next else f"{ds.API_PATH}/{plan.entity_set}"
        params = None if at is not None and at.next else ds.modified_query(plan, since)
        while True:
            body = await self._get(url, plan.entity_set, params=params, headers=_PAGES)
            rows = _rows(plan, body)
            records = [plan.record(row) for row in rows]
            if records:
                last = records[-1].get(ds.MODIFIED)
                if not isinstance(last, str):
                    raise ConnectorError(f"dynamics {plan.entity_set}: a row without modifiedon")
                since = last
            next_link = body.get("@odata.nextLink")
            if not isinstance(next_link, str):
                yield Page(records, ds.Cursor(since=since, by_modified=True).encode())
                return
            cursor = ds.Cursor(next=self._link(next_link), since=since, by_modified=True)
            yield Page(records, cursor.encode())
            url, params = next_link, None

    # --- requests ------------------------------------------------------------------------

    def _new_client(self) -> HttpClient:
        return HttpClient(
            vendor="dynamics",
            connector=self.config.name,
            options=self.http_options,
            auth=self._auth,
            secrets=[self._secret],
            parse_error=ds.parse_error,
        )

    def _entity_of(self, table: str) -> str:
        if table not in self.entities:
            raise self._no_table(table, self.entities)
        return table

    def _link(self, link: str) -> str:
        """A link the server sent, checked to be of this organization's Web API (a cursor
        holding it is followed with the token later)."""
        if not link.lower().startswith(f"{self.url}{ds.API_PATH}/".lower()):  # hosts ignore case
            raise ConnectorError(f"dynamics sent a link outside {self.url}{ds.API_PATH}: refused")
        return link

    async def _plan(self, name: str) -> ds.EntityPlan:
        definitions = await self._get(
            f"{ds.API_PATH}/EntityDefinitions",
            name,
            params={
                "$select": "LogicalName,EntitySetName,PrimaryIdAttribute,ChangeTrackingEnabled",
                "$filter": f"EntitySetName eq '{name}'",  # the name matched is_name: no quote
            },
        )
        entity = ds.entity_of(name, definitions)
        attributes = await self._get(
            f"{ds.API_PATH}/EntityDefinitions(LogicalName='{entity['LogicalName']}')/Attributes",
            name,
            params={"$select": "LogicalName,AttributeType,AttributeOf,IsValidForRead"},
        )
        plan = ds.plan_entity(name, entity, attributes, self.entities[name])
        if plan.missing:
            log.warning(
                "dynamics_columns_missing", entity=name, columns=list(plan.missing),
                hint="the entity has no such columns (any more): they are not read",
            )  # fmt: skip
        log.debug("dynamics_described", entity=name, columns=len(plan.columns))
        return plan

    async def _get(
        self,
        url: str,
        name: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] = _ODATA,
    ) -> Any:
        link = "://" in url  # a link the server sent: followed as it is
        if link:
            self._link(url)
        return await self._client().request_json(
            "GET",
            url,
            what=f"response for {name}",
            refine=lambda exc: _read_error(name, exc),
            params=params,
            headers=headers,
            verbatim=link,
        )


def _read_error(name: str, exc: HttpStatusError) -> ConnectorError:
    """The error to raise for a refused request about entity set ``name``: ``exc`` itself
    unless there is more to say."""
    if exc.status == 401:
        return AuthError(
            f"{exc}: the token was refused twice: check that the app is an application user of "
            "this environment"
        )
    if exc.status == 403:
        return AuthError(
            f"{exc}: give the application user a security role with read on {name} "
            "(organization-level read for change tracking)"
        )
    if exc.status == 404:
        return ConnectorError(
            f"{exc}: check that {name} in options.entities is an entity set name of the "
            "environment (plural: accounts, opportunities)"
        )
    return exc


def _expired(exc: HttpStatusError) -> bool:
    """Whether a refused delta link means its token expired: then only a full read helps
    ("Version stamp associated with the client has expired. Please perform a full sync.")."""
    text = str(exc).lower()
    return 400 <= exc.status < 500 and "expired" in text and "full sync" in text


def _rows(plan: ds.EntityPlan, body: Any) -> list[Any]:
    rows = body.get("value", []) if isinstance(body, dict) else None
    if not isinstance(rows, list):
        raise ConnectorError(f"dynamics {plan.entity_set}: a response without a value list")
    return rows
