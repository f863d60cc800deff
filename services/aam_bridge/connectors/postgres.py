"""The PostgreSQL tables source (``type: postgres``): keyset pages, one snapshot per read.

A table with a ``cursor`` column is read incrementally, in ``(cursor, key...)`` order with
``WHERE (cursor, key...) > (last row's values)``: rows sharing one cursor value are split
across pages by their key, never lost or read twice. A table without one is read in full on
every run, in key order. Each ``read()`` is one REPEATABLE READ read-only transaction held
across its pages, so a read sees one consistent state of the table.

Cursors are compact JSON; position values are PostgreSQL's own text of the columns (TimeZone
UTC, DateStyle ISO), cast back to the column's type, so every type round-trips exactly::

    {"v":1,"by":"updated_at","key":["id"],"after":["2025-11-04 10:15:00.5+00","42"]}
        a page: the next read starts strictly after this row
    {"v":1,"by":"updated_at","key":["id"],"after":[...],"mark":[...]}
        a page inside a run's look-back: the run ends at ``mark`` at least
    {"v":1,"by":"updated_at","key":["id"],"end":["2025-11-04 10:15:00.5+00","42"]}
        a run's end: the next run reads rows whose cursor is at least ``lookback_s`` before
        it (timestamp and date cursors; integer and numeric cursors start right after it)
    {"v":1,"by":null,"key":["code"],"end":null}
        a run's end that starts the next run at the beginning (full refresh, empty table)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg
import orjson
import structlog

from aam_bridge.connectors.base import (
    Connector,
    ConnectorConfig,
    Page,
    TableSpec,
    reject_unknown_options,
)
from aam_bridge.connectors.postgres_catalog import Choice, TablePlan, load_plans
from aam_dcl.errors import ConfigError, ConnectorError
from aam_dcl.logs import MASK, redact_urls_in, redacted_url

log = structlog.get_logger("aam_bridge.connectors.postgres")

CURSOR_VERSION = 1
CONNECT_TIMEOUT_S = 10.0
ACQUIRE_TIMEOUT_S = 60.0  # a read waiting this long for a connection fails instead of hanging
CLOSE_GRACE_S = 5.0  # close() waits this long for reads to hand their connection back
POOL_MAX_SIZE = 4  # reads of one connector run one after another; spares for abandoned ones
_SERVER_SETTINGS = {
    "application_name": "aam-bridge",
    "TimeZone": "UTC",  # position text of timestamptz values: +00
    "DateStyle": "ISO, MDY",
    "extra_float_digits": "1",  # float text round-trips exactly (a role default of 0 rounds)
}
_TABLE_OPTIONS = ("cursor", "key")
_OPTIONS: dict[str, str] = {
    "dsn": "a URL postgresql://user:password@host:5432/database",
    "schema": "a schema name",
    "tables": "a list of table names, or a mapping of table names to {cursor: column, "
    "key: [columns]}; omit it for every table of the schema",
    "lookback_s": "a number of seconds >= 0",
    "page_size": "an integer >= 1",
}
_QUERY_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)  # TimeoutError too


class PostgresConnector(Connector):
    """Tables of one PostgreSQL schema (``type: postgres``).

    Options: ``dsn`` (required), ``schema`` (public), ``tables`` (every table of the schema,
    read in full; or a list of names, read in full; or a mapping of names to ``{cursor,
    key}``), ``lookback_s`` (5), ``page_size`` (5000). The constructor only validates them.
    """

    type_name = "postgres"

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__(config)
        opts = config.options
        reject_unknown_options(self.type_name, opts, _OPTIONS)
        self._dsn = _dsn_option(opts.get("dsn"))
        self._secrets = _secrets_of(self._dsn)
        schema = opts.get("schema", "public")
        if not isinstance(schema, str) or not schema:
            _bad("schema", schema)
        self.schema: str = schema
        self.choices = _tables_option(opts.get("tables"))
        self.lookback_s = _number_option(opts, "lookback_s", 5.0)
        page_size = opts.get("page_size", 5000)
        if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size < 1:
            _bad("page_size", page_size)
        self.page_size: int = page_size
        self._pool: asyncpg.Pool | None = None
        self._plans: dict[str, TablePlan] = {}

    @property
    def dsn(self) -> str:
        """The DSN with its password masked: what messages and logs may show."""
        return redacted_url(self._dsn)

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=POOL_MAX_SIZE,
                timeout=CONNECT_TIMEOUT_S,
                server_settings=_SERVER_SETTINGS,
                init=_init_connection,
            )
        except (*_QUERY_ERRORS, ValueError) as exc:
            raise self._error(f"cannot connect to {self.dsn}", exc) from self._chained(exc)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), CLOSE_GRACE_S)
        except TimeoutError:  # a read still holds its connection: end it
            pool.terminate()

    async def tables(self) -> list[TableSpec]:
        async with self._connection("read the catalog") as conn:
            try:
                plans = await load_plans(conn, self.schema, self.choices, self.page_size)
            except _QUERY_ERRORS as exc:
                raise self._error("cannot read the catalog", exc) from exc
        self._plans = {plan.name: plan for plan in plans}
        return [TableSpec(p.name, p.key, p.column_types) for p in plans]

    def reads_in_full(self, table: TableSpec, cursor: str | None) -> bool:
        """A read from None, from a full-refresh table's end cursor, or from a cursor made
        for another cursor column or key (read again from the start) yields every row."""
        try:
            start = _start(cursor, self._cursor_column(table.name), table.primary_key, False)
        except ConnectorError:
            return False
        return start.from_beginning

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        plan = await self._plan(table.name)
        by = plan.cursor.name if plan.cursor is not None else None
        where = f"{self.schema}.{plan.name}"
        try:
            start = _start(cursor, by, plan.key, plan.time_cursor and self.lookback_s > 0)
        except ConnectorError as exc:
            raise ConnectorError(f"{where}: {exc}") from None
        if start.reset:
            log.warning(
                "postgres_cursor_reset",
                connector=self.config.name,
                table=plan.name,
                by=by,
                key=list(plan.key),
                reason="the saved cursor was made for another cursor column or key: "
                "reading the table from the start",
            )
        async with self._connection(f"read {where}") as conn:
            transaction = conn.transaction(isolation="repeatable_read", readonly=True)
            try:
                await transaction.start()
            except _QUERY_ERRORS as exc:
                raise self._error(f"cannot read {where}", exc) from exc
            try:
                async for page in self._pages(conn, plan, start):
                    yield page
            finally:
                # Read-only, so nothing is lost if this fails on a broken connection: the
                # pool resets or discards the connection when it is released.
                with contextlib.suppress(*_QUERY_ERRORS):
                    await transaction.rollback()

    async def _pages(
        self, conn: asyncpg.Connection, plan: TablePlan, start: _Start
    ) -> AsyncIterator[Page]:
        """Keyset pages from ``start`` until a short page; the last page's cursor is an end."""
        after, since, mark, last = start.after, start.since, start.mark, start.after
        while True:
            query, args = plan.query(
                after=after, since=since, lookback_s=self.lookback_s, mark=mark
            )
            try:
                rows = await conn.fetch(query, *args)
            except _QUERY_ERRORS as exc:
                raise self._error(f"cannot read {self.schema}.{plan.name}", exc) from exc
            since = None
            if rows:
                tail = rows[-1]
                last = after = list(tail[0])
                if mark is not None and tail[1]:  # past where the previous run ended
                    mark = None
            records = [plan.record(row) for row in rows]
            if len(rows) < plan.page_size:
                yield Page(records, self._cursor_text(plan, end=mark or last))
                return
            yield Page(records, self._cursor_text(plan, after=last, mark=mark))

    def _cursor_text(
        self,
        plan: TablePlan,
        *,
        after: list[str] | None = None,
        mark: list[str] | None = None,
        end: list[str] | None = None,
    ) -> str:
        body: dict[str, Any] = {
            "v": CURSOR_VERSION,
            "by": plan.cursor.name if plan.cursor is not None else None,
            "key": list(plan.key),
        }
        if after is not None:
            body["after"] = after
            if mark is not None:
                body["mark"] = mark
        else:
            body["end"] = end if plan.cursor is not None else None  # full refresh: start over
        return orjson.dumps(body).decode()

    async def _plan(self, table: str) -> TablePlan:
        if table not in self._plans:
            await self.tables()
        try:
            return self._plans[table]
        except KeyError:
            raise ConnectorError(
                f"postgres connector {self.config.name!r} has no table {table!r}; "
                f"its tables: {', '.join(self._plans)}"
            ) from None

    def _cursor_column(self, table: str) -> str | None:
        plan = self._plans.get(table)
        if plan is not None:
            return plan.cursor.name if plan.cursor is not None else None
        return self.choices[table].cursor if self.choices and table in self.choices else None

    @contextlib.asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; failing to get one is a ConnectorError saying what failed."""
        if self._pool is None:
            raise ConnectorError(
                f"postgres connector {self.config.name!r} is not open: call open() first"
            )
        pool = self._pool
        try:
            conn = await pool.acquire(timeout=ACQUIRE_TIMEOUT_S)
        except _QUERY_ERRORS as exc:
            raise self._error(f"cannot {doing}", exc) from exc
        try:
            yield conn
        finally:
            await pool.release(conn)

    def _error(self, doing: str, exc: BaseException) -> ConnectorError:
        detail = self._scrub(f"{type(exc).__name__}: {exc}")
        return ConnectorError(f"postgres connector {self.config.name!r}: {doing}: {detail}")

    def _chained(self, exc: BaseException) -> BaseException | None:
        """``exc`` to chain, unless its text holds a secret (a traceback would print it)."""
        return exc if self._scrub(str(exc)) == str(exc) else None

    def _scrub(self, text: str) -> str:
        """``text`` with the DSN's password and secret parameters masked wherever they are."""
        text = text.replace(self._dsn, self.dsn)
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return redact_urls_in(text)


@dataclass(frozen=True, slots=True)
class _Start:
    """Where a read starts: strictly after position ``after``, or at cursor values from
    ``lookback_s`` before ``since``; ``mark`` is the previous run's end while not passed.
    ``reset``: the cursor was made for another cursor column or key, so it is not used."""

    after: list[str] | None = None
    since: str | None = None
    mark: list[str] | None = None
    reset: bool = False

    @property
    def from_beginning(self) -> bool:
        return self.after is None and self.since is None


def _start(cursor: str | None, by: str | None, key: tuple[str, ...], lookback: bool) -> _Start:
    """Where a read from ``cursor`` starts, for a table read by cursor column ``by`` (None:
    in full) and ``key``; ``lookback``: an end cursor starts lookback_s before its end.
    ConnectorError if ``cursor`` is no cursor of this connector."""
    if cursor is None:
        return _Start()
    body = _decode_cursor(cursor)
    if body is None:
        raise ConnectorError(
            f"cursor {cursor[:200]!r} is not a postgres connector cursor: "
            "run `aam-dcl sync CONNECTOR --full` to read the tables from the start"
        )
    if body["by"] != by or body["key"] != list(key):
        return _Start(reset=True)
    if "after" in body:
        return _Start(after=body["after"], mark=body.get("mark"))
    end = body["end"]
    if by is None or end is None:
        return _Start()
    return _Start(since=end[0], mark=end) if lookback else _Start(after=end)


async def _init_connection(conn: asyncpg.Connection) -> None:
    """json and jsonb values arrive parsed (asyncpg's default is their text)."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, schema="pg_catalog", encoder=_json_text, decoder=orjson.loads, format="text"
        )


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _decode_cursor(cursor: str) -> dict[str, Any] | None:
    """The cursor's JSON if it has the shape ``_cursor_text`` writes, else None."""
    try:
        body = orjson.loads(cursor)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("v") != CURSOR_VERSION:
        return None
    width = len(body.get("key") or ()) + (body.get("by") is not None)

    def position(value: Any) -> bool:
        return (
            isinstance(value, list)
            and len(value) == width
            and all(isinstance(v, str) for v in value)
        )

    shaped = (
        (body.get("by") is None or isinstance(body["by"], str))
        and isinstance(body.get("key"), list)
        and all(isinstance(k, str) for k in body["key"])
        and (
            (
                "after" in body
                and position(body["after"])
                and position(body.get("mark", body["after"]))
            )
            or ("end" in body and (body["end"] is None or position(body["end"])))
        )
    )
    return body if shaped else None


def _secrets_of(dsn: str) -> list[str]:
    """The DSN's password (as written and decoded) and secret query values, longest first."""
    rest = dsn.partition("://")[2]
    userinfo, at, _ = rest.rpartition("@")
    found: set[str] = set()
    if at and ":" in userinfo:
        password = userinfo.split(":", 1)[1]
        found |= {password, unquote(password)}
    for name, value in parse_qsl(urlsplit(dsn).query, keep_blank_values=True):
        if any(word in name.lower() for word in ("pass", "pwd", "secret", "token")):
            found |= {value}
    return sorted((s for s in found if s), key=len, reverse=True)


def _bad(option: str, value: object) -> None:
    raise ConfigError(f"options.{option}={value!r} is invalid: use {_OPTIONS[option]}")


def _dsn_option(value: Any) -> str:
    if value is None:
        raise ConfigError(f"options.dsn is required: use {_OPTIONS['dsn']}")
    if not isinstance(value, str):
        raise ConfigError(f"options.dsn is invalid: use {_OPTIONS['dsn']}")
    # Only the scheme: asyncpg parses the rest (several hosts, ?host=/socket) when connecting.
    if value.partition("://")[0] not in ("postgresql", "postgres"):
        raise ConfigError(f"options.dsn={redacted_url(value)!r} is invalid: use {_OPTIONS['dsn']}")
    return value


def _number_option(opts: Mapping[str, Any], name: str, default: float) -> float:
    value = opts.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1e9:
        _bad(name, value)
    return float(value)


def _tables_option(value: Any) -> dict[str, Choice] | None:
    """None (every table of the schema) or each named table's Choice, in the given order."""
    if value is None:
        return None
    rule = _OPTIONS["tables"]
    if isinstance(value, list):
        if not value or not all(isinstance(n, str) and n for n in value):
            raise ConfigError(f"options.tables={value!r} is invalid: use {rule}")
        if len(set(value)) != len(value):
            twice = next(n for n in value if value.count(n) > 1)
            raise ConfigError(f"options.tables: {twice!r} is named twice: name it once")
        return {name: Choice() for name in value}
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"options.tables={value!r} is invalid: use {rule}")
    return {_table_name(name): _choice(name, spec) for name, spec in value.items()}


def _table_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"options.tables: {name!r} is no table name: use a non-empty string")
    return name


def _choice(name: str, spec: Any) -> Choice:
    where = f"options.tables.{name}"
    if spec is None:
        return Choice()
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}={spec!r} is invalid: use {{cursor: column, key: [columns]}} or {{}}"
        )
    unknown = sorted(str(k) for k in spec if k not in _TABLE_OPTIONS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is unknown: use cursor, key")
    cursor = spec.get("cursor")
    if cursor is not None and (not isinstance(cursor, str) or not cursor):
        raise ConfigError(f"{where}.cursor={cursor!r} is invalid: use a column name")
    key = spec.get("key")
    if isinstance(key, str):
        key = [key]
    if key is not None and (
        not isinstance(key, list)
        or not key
        or not all(isinstance(k, str) and k for k in key)
        or len(set(key)) != len(key)
    ):
        raise ConfigError(
            f"{where}.key={spec.get('key')!r} is invalid: use a list of distinct column names"
        )
    return Choice(cursor, tuple(key) if key is not None else None)
