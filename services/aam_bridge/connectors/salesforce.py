"""The Salesforce REST connector (``type: salesforce``): objects read with queryAll, incremental
on (SystemModstamp, Id), soft deletes reported as deletes.

A table is an object's API name in lower case (``Opportunity`` -> ``opportunity``,
``Invoice__c`` -> ``invoice__c``; the store names it ``{connector}__{table}``): the stores
compare names ignoring ASCII case, as Salesforce does, so lower case is the one spelling.
Its primary key is ``Id``, its column types those of the object's describe (made by
``tables()``, used by the next read, made again if a field went away). A read pages through
``SELECT <fields> FROM <object> WHERE <after the cursor> ORDER BY SystemModstamp, Id``; each
page's cursor is the (SystemModstamp, Id) of its last row, so any page's cursor resumes
exactly after it, and rows sharing a SystemModstamp across a page or run boundary are
neither lost nor read twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog

from aam_bridge.connectors import salesforce_query as q
from aam_bridge.connectors._common import HttpConnector, reject_unknown, text_option, url_problem
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

log = structlog.get_logger("aam_bridge.salesforce")

DEFAULT_API_VERSION = "62.0"
BATCH_SIZES = (200, 2000)  # Sforce-Query-Options batchSize: minimum, maximum (the default)
LOCATOR_RESTARTS = 3  # expired query locators in a row before a read gives up
_OPTIONS = (
    "login_url",
    "client_id",
    "client_secret",
    "refresh_token",
    "api_version",
    "objects",
    "batch_size",
)
_OBJECTS_RULE = (
    "use a list of object API names like [Opportunity, Account], or a mapping of names to "
    "field lists like {Opportunity: [Id, Name, Amount]} (null: every field)"
)


class SalesforceAuth:
    """The token of a connected app: the client-credentials grant, or the refresh-token
    grant when a refresh token is given. The token response names the instance to call."""

    def __init__(
        self, login_url: str, client_id: str, client_secret: str | None, refresh_token: str | None
    ) -> None:
        self.token_url = f"{login_url}/services/oauth2/token"
        self._client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token

    async def fetch(self, http: HttpClient) -> Token:
        form = {"client_id": self._client_id}
        if self._refresh_token is not None:
            form |= {"grant_type": "refresh_token", "refresh_token": self._refresh_token}
            fix = "check options.refresh_token and options.client_id (and client_secret)"
        else:
            form["grant_type"] = "client_credentials"
            fix = (
                "check options.client_id and options.client_secret, and that the connected "
                "app enables the client credentials flow with a run-as user"
            )
        if self._client_secret is not None:
            form["client_secret"] = self._client_secret
        try:
            response = await http.request("POST", self.token_url, data=form, authenticated=False)
        except HttpStatusError as exc:
            if 400 <= exc.status < 500:
                raise AuthError(f"{exc}: {fix}") from exc
            raise
        body = json_body("salesforce", response, "token response")
        token = body.get("access_token") if isinstance(body, dict) else None
        instance = body.get("instance_url") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token or not isinstance(instance, str):
            raise ConnectorError("salesforce token response has no access_token and instance_url")
        http.add_secret(token)
        if url_problem(instance):
            raise ConnectorError(
                f"salesforce token response: instance_url={instance!r} {url_problem(instance)}"
            )
        return Token(token, base_url=instance.rstrip("/"))


class SalesforceConnector(HttpConnector):
    """Salesforce objects over the REST API (``type: salesforce``; docs/connectors.md).

    Options: ``login_url``, ``client_id``, ``client_secret``, ``refresh_token`` (optional),
    ``api_version`` ("62.0"), ``objects``, ``batch_size`` (2000), and the HTTP options of
    ``_http.HttpOptions``. The constructor only validates them.
    """

    type_name = "salesforce"

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__(config)
        opts = config.options
        reject_unknown(self.type_name, opts, _OPTIONS)
        login_url = opts.get("login_url")
        if not isinstance(login_url, str) or url_problem(login_url):
            raise ConfigError(
                f"options.login_url={login_url!r} is invalid: use the https:// base URL of the "
                "login host, e.g. https://login.salesforce.com or "
                "https://MyDomain.my.salesforce.com (the token path is added)"
            )
        client_id = text_option(opts, "client_id")
        client_secret = text_option(opts, "client_secret")
        refresh_token = text_option(opts, "refresh_token")
        if client_id is None:
            raise ConfigError("options.client_id is required: the connected app's consumer key")
        if client_secret is None and refresh_token is None:
            raise ConfigError(
                "options.client_secret is required for the client credentials flow "
                "(or give options.refresh_token for the refresh-token flow)"
            )
        api_version = opts.get("api_version", DEFAULT_API_VERSION)
        if not isinstance(api_version, str) or not _is_version(api_version):
            raise ConfigError(
                f"options.api_version={api_version!r} is invalid: use a quoted version like "
                f'"{DEFAULT_API_VERSION}"'
            )
        batch_size = opts.get("batch_size", BATCH_SIZES[1])
        if type(batch_size) is not int or not BATCH_SIZES[0] <= batch_size <= BATCH_SIZES[1]:
            raise ConfigError(
                f"options.batch_size={batch_size!r} is invalid: use an integer from "
                f"{BATCH_SIZES[0]} to {BATCH_SIZES[1]}"
            )
        self.objects = _objects(opts.get("objects"))
        self.http_options = HttpOptions.from_options(opts)
        self.batch_size = batch_size
        self._query_headers = {"Sforce-Query-Options": f"batchSize={batch_size}"}
        self._data_path = f"/services/data/v{api_version}"
        self._auth = SalesforceAuth(login_url.rstrip("/"), client_id, client_secret, refresh_token)
        self._secrets = [s for s in (client_secret, refresh_token) if s]
        self._tables = {name.lower(): name for name in self.objects}
        self._plans: dict[str, q.FieldPlan] = {}  # described by tables(), for the next read

    async def tables(self) -> list[TableSpec]:
        """Describes every object, so each table declares its columns' types; the next
        read of each table uses that describe."""
        self._plans = {name: await self._plan(name) for name in self.objects}
        return [
            TableSpec(table, (q.KEY_FIELD,), self._plans[name].column_types)
            for table, name in self._tables.items()
        ]

    def reads_in_full(self, table: TableSpec, cursor: str | None) -> bool:
        """From no cursor, or from the cursor of a table that was empty, every row is read."""
        return q.parse_cursor(cursor) is None

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        name = self._object_of(table.name)
        after = q.parse_cursor(cursor)
        plan = self._plans.pop(name, None) or await self._plan(name)
        redescribed = False
        restarts = 0  # expired query locators since the last page
        next_url: str | None = None
        while True:
            try:
                if next_url is None:
                    path, params = f"{self._data_path}/queryAll", {"q": q.soql(plan, after)}
                else:
                    path, params = next_url, None
                body = await self._get(path, name, params=params, headers=self._query_headers)
            except HttpStatusError as exc:
                if exc.code == "INVALID_FIELD" and not redescribed:
                    # A field went away after the describe: describe again, query again.
                    redescribed, next_url = True, None
                    log.info("salesforce_redescribe", object=name, error=str(exc))
                    plan = await self._plan(name)
                    continue
                if exc.code == "INVALID_QUERY_LOCATOR" and next_url and restarts < LOCATOR_RESTARTS:
                    # The server forgot the query: run it again from the last page's cursor.
                    restarts, next_url = restarts + 1, None
                    log.info("salesforce_query_restarted", object=name, reason=exc.code)
                    continue
                raise
            page, after = self._page(plan, body, after)
            restarts = 0
            yield page
            next_url = _next_records_url(body, self._data_path)
            if next_url is None:
                return

    def _new_client(self) -> HttpClient:
        return HttpClient(
            vendor="salesforce",
            connector=self.config.name,
            options=self.http_options,
            auth=self._auth,
            secrets=self._secrets,
            parse_error=q.parse_error,
            quota=q.api_usage,
        )

    def _object_of(self, table: str) -> str:
        try:
            return self._tables[table]
        except KeyError:
            raise self._no_table(table, self._tables) from None

    async def _plan(self, name: str) -> q.FieldPlan:
        describe = await self._get(f"{self._data_path}/sobjects/{name}/describe", name)
        plan = q.plan_fields(name, describe, self.objects[name])
        if plan.missing:
            log.warning(
                "salesforce_fields_missing", object=name, fields=list(plan.missing),
                hint="the object has no such fields (any more): they are not read",
            )  # fmt: skip
        log.debug("salesforce_described", object=name, fields=len(plan.select))
        return plan

    async def _get(
        self,
        path: str,
        name: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        return await self._client().request_json(
            "GET",
            path,
            what=f"response for {name}",
            refine=lambda exc: _read_error(name, exc),
            params=params,
            headers=headers,
        )

    def _page(
        self, plan: q.FieldPlan, body: Any, after: q.Position | None
    ) -> tuple[Page, q.Position | None]:
        rows = body.get("records") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise ConnectorError(f"salesforce query of {plan.object_name} returned no records list")
        records, deleted = [], []
        last = after
        for raw in rows:
            if not isinstance(raw, dict):
                raise ConnectorError(f"salesforce query of {plan.object_name}: a non-object row")
            position = q.position_of(plan.object_name, raw)
            if last is not None and position <= last:  # would loop or repeat: never trust it
                raise ConnectorError(
                    f"salesforce query of {plan.object_name} returned rows out of "
                    f"(SystemModstamp, Id) order at Id {position.id}"
                )
            last = position
            if plan.sees_deletes and raw.get(q.DELETED_FIELD) is True:
                deleted.append({q.KEY_FIELD: position.id})
            else:
                records.append(plan.record(raw))
        return Page(records, q.encode_cursor(last), deleted), last


def _read_error(name: str, exc: HttpStatusError) -> ConnectorError:
    """The error to raise for a refused request about object ``name``: ``exc`` itself unless
    there is more to say."""
    if exc.code == "REQUEST_LIMIT_EXCEEDED":
        usage = q.api_usage(exc.headers)
        used = f" (api-usage {usage[0]}/{usage[1]})" if usage else ""
        return ConnectorError(
            f"salesforce {name}: the org's API request limit is exceeded{used}: the run "
            "stops at its last checkpoint and the bridge retries it later"
        )
    if exc.status == 414:
        return ConnectorError(
            f"{exc}: the query of {name} is too long for a URL: list the fields to read in "
            "options.objects"
        )
    if exc.status == 404 or exc.code in ("NOT_FOUND", "INVALID_TYPE"):
        return ConnectorError(
            f"{exc}: check that {name} in options.objects exists and that the "
            "integration user may read it"
        )
    return exc


def _next_records_url(body: dict[str, Any], data_path: str) -> str | None:
    if body.get("done") is not False:
        return None
    url = body.get("nextRecordsUrl")
    if not isinstance(url, str) or not url.startswith(f"{data_path}/"):
        raise ConnectorError(f"salesforce query is not done but nextRecordsUrl is {url!r}")
    return url


def _objects(value: Any) -> dict[str, tuple[str, ...] | None]:
    """Object API name -> the fields to read (None: all), from options.objects."""
    if not isinstance(value, list | dict) or not value:
        raise ConfigError(f"options.objects={value!r} is invalid: {_OBJECTS_RULE}")
    if isinstance(value, list):
        if not all(isinstance(name, str) for name in value):
            raise ConfigError(f"options.objects={value!r} is invalid: {_OBJECTS_RULE}")
        value = dict.fromkeys(value)
    objects: dict[str, tuple[str, ...] | None] = {}
    seen: set[str] = set()
    for name, fields in value.items():
        if not q.is_api_name(name):
            raise ConfigError(f"options.objects: {name!r} is not an object API name")
        if name.lower() in seen:
            raise ConfigError(f"options.objects: {name!r} is given twice (names ignore case)")
        seen.add(name.lower())
        if fields is None:
            objects[name] = None
        elif isinstance(fields, list) and fields and all(map(q.is_api_name, fields)):
            objects[name] = tuple(fields)
        else:
            raise ConfigError(
                f"options.objects.{name}={fields!r} is invalid: use a list of field API "
                "names like [Id, Name, Amount], or null for every field"
            )
    return objects


def _is_version(value: str) -> bool:
    major, dot, minor = value.partition(".")
    return bool(dot) and major.isdigit() and minor.isdigit()
