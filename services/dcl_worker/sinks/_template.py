"""The write sequence of the SQL stores, written once (``SqlSink``), and the merge SQL it runs.

PostgreSQL and DuckDB implement the hooks: their connection and transaction, the inbox
insert, catalog reads, DDL, how rows are staged, one probe, and the one mapping of their
driver's exceptions. One write() is one transaction:

1. ``_claim_batches`` records the inbox rows of the batches not applied yet and returns the
   stored fingerprints of those that were (a reused id with other content is PoisonBatch);
2. ``plan_writes`` groups the fresh batches' tables (``_sql``: every poison check);
3. per table, a change that the cached schema does not cover is decided again on the store's
   catalog, under the dialect's DDL lock, and applied;
4. the rows go in straight (``_load_direct``) or are staged (``_stage``) and merged by one
   ``INSERT ... SELECT`` (``merge_sql``): appended, or upserted so that an older version
   never replaces a newer row;
5. after the commit, the tables' schemas are cached.

open() settles the tenant's schema once for both (``_settle_schema``): the rule's or
``?schema=``, an older store's default schema its tenant adopted, the owner record (the
decisions are ``_tenancy``'s).

Driver exceptions leave through ``_boundary`` as SinkUnavailable (retry) or SinkDataError,
``raise ... from exc``; a merge that the store rejects is probed one cast column at a time,
to name the culprit. Cancellation passes untouched.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aam_dcl.errors import SinkDataError, SinkError
from aam_dcl.messages import Batch
from dcl_worker.sinks._sql import (
    BATCH_ID_COLUMN,
    DEFAULT_MAX_COLUMNS,
    INBOX_TABLE,
    INGESTED_AT_COLUMN,
    VERSION_COLUMN,
    TableChange,
    TableInfo,
    TableWrite,
    check_fingerprints,
    plan_table,
    plan_writes,
    qualified,
    quote_ident,
    quote_literal,
    table_collision,
    unique_batches,
)
from dcl_worker.sinks._tenancy import OWNER_TABLE, adopt_legacy, check_owner, tenant_schema
from dcl_worker.sinks.base import Sink

C = TypeVar("C")  # the dialect's handle of one connection, held for one call
_TARGET = "_dcl_target"  # the INSERT's alias for the data table, for the upsert's WHERE


@dataclass(slots=True)
class Staged:
    """A table's rows where the merge reads them: a temp table, or a spool file read as JSON."""

    source: str  # the FROM item, aliased ``s``
    exprs: dict[str, str]  # column -> its value in ``s``, cast to the table's type where needed
    tiebreak: list[str]  # columns of ``s`` that keep stream order among one version's rows
    casts: dict[str, str]  # column -> store type, where a cast may reject values (the probe's)
    location: str  # the temp table or the file, for the dialect's probe
    new_keys_first: bool = False  # try a plain insert first (PostgreSQL: staged, not COPYed)


def merge_sql(target: str, staged: Staged, primary_key: Sequence[str]) -> str:
    """The ``INSERT ... SELECT`` of staged rows into ``target``: appended without a primary key;
    with one, one row per key (the newest version, then the last in stream order), upserted.

    The upsert never lets an older version replace a newer row. ``>=`` rather than ``>``: a
    re-sent copy of the stored batch (equal version) writes the same values again, and
    version-0 rows (ids of another format) keep last-write-wins among themselves.
    """
    columns = list(staged.exprs)
    meta = [BATCH_ID_COLUMN, VERSION_COLUMN, INGESTED_AT_COLUMN]
    names = ", ".join([*map(quote_ident, columns), *meta])
    values = ", ".join(staged.exprs.values())
    insert = f"INSERT INTO {target} AS {_TARGET} ({names}) SELECT "
    select = f"{values}, s.{BATCH_ID_COLUMN}, s.{VERSION_COLUMN}, now() FROM {staged.source}"
    if not primary_key:
        return insert + select
    keys = ", ".join(staged.exprs[c] for c in primary_key)
    order = ", ".join([keys, *(f"s.{c} DESC" for c in [VERSION_COLUMN, *staged.tiebreak])])
    updates = [c for c in columns if c not in primary_key] + meta
    sets = ", ".join(f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in updates)
    return (
        f"{insert}DISTINCT ON ({keys}) {select} ORDER BY {order} "
        f"ON CONFLICT ({', '.join(map(quote_ident, primary_key))}) DO UPDATE SET {sets} "
        f"WHERE {_TARGET}.{VERSION_COLUMN} <= excluded.{VERSION_COLUMN}"
    )


class SqlSink(Sink, Generic[C]):
    """A store written with SQL: ``write``, ``ping`` and ``count_rows`` over dialect hooks."""

    store: str  # the store's name in messages
    default_schema: str  # the store's own schema, tenant ``default``'s

    def __init__(
        self,
        url: str,
        tenant: str,
        *,
        max_columns: int = DEFAULT_MAX_COLUMNS,
        schema: str | None = None,
    ) -> None:
        super().__init__(url, tenant, max_columns=max_columns)
        self._explicit_schema = schema  # DCL_SINK_URL's ?schema=
        # The rule's schema; open() may settle on another: an older store's default schema,
        # or DuckDB's stored spelling of this one.
        self.schema = schema or tenant_schema(tenant, self.default_schema)
        self._tables: dict[str, TableInfo] = {}  # committed knowledge only

    # --- the tenant's schema, at open() -------------------------------------------------------

    async def _settle_schema(self, con: C) -> str:
        """Choose the tenant's schema and claim it (in the caller's transaction); returns the
        stored spelling (DuckDB's ``dcl_tx`` is a ``dcl_TX`` made before)."""
        return await self._claim_schema(con, await self._choose_schema(con))

    async def _choose_schema(self, con: C) -> str:
        """``?schema=``, else the tenant's by rule, unless this is a store from before tenant
        schemas whose default schema this tenant has adopted (or adopts now)."""
        if self._explicit_schema is not None:
            return self._explicit_schema
        default = self.default_schema
        own = tenant_schema(self.tenant, default)
        if own == default or await self._stored_schema(con, own) is not None:
            return own
        if await self._table_exists(con, default, OWNER_TABLE):
            owners = await self._strings(
                con, f"SELECT tenant FROM {qualified(default, OWNER_TABLE)}"
            )
            return default if owners == [self.tenant] else own
        if await self._table_exists(con, default, INBOX_TABLE):
            tenants = await self._strings(
                con,
                f"SELECT DISTINCT tenant FROM {qualified(default, INBOX_TABLE)} "
                "WHERE tenant IS NOT NULL ORDER BY 1",
            )
            if adopt_legacy(default, self.tenant, tenants):
                return default
        return own

    async def _claim_schema(self, con: C, schema: str) -> str:
        """Create the schema, refuse it if another tenant owns it, record the owner, then
        create the inbox (or give an older one its fingerprint column)."""
        stored = await self._stored_schema(con, schema)
        if stored is None:
            await self._execute(con, f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            stored = schema
        owner, inbox = qualified(stored, OWNER_TABLE), qualified(stored, INBOX_TABLE)
        tenant = quote_literal(self.tenant)
        await self._execute(con, f"CREATE TABLE IF NOT EXISTS {owner} (tenant text NOT NULL)")
        owners = await self._strings(con, f"SELECT tenant FROM {owner}")
        had_inbox = await self._table_exists(con, stored, INBOX_TABLE)
        others: list[str] = []
        if not owners and had_inbox:
            others = await self._strings(
                con, f"SELECT DISTINCT tenant FROM {inbox} WHERE tenant <> {tenant} ORDER BY 1"
            )
        if check_owner(stored, self.tenant, owners, others):
            await self._execute(con, f"INSERT INTO {owner} (tenant) VALUES ({tenant})")
        await self._execute(
            con,
            f"CREATE TABLE IF NOT EXISTS {inbox} (batch_id text PRIMARY KEY, tenant text, "
            "connector text, applied_at timestamptz, record_count int, fingerprint text)",
        )
        if had_inbox:
            await self._upgrade_inbox(con, inbox)
        return stored

    # --- the sequence -----------------------------------------------------------------------

    async def write(self, batches: Sequence[Batch]) -> set[str]:
        todo = unique_batches(batches)
        if not todo:
            return set()
        known: dict[str, TableInfo] = {}
        with self._boundary(f"writing batches {_ids([b.batch_id for b in todo])}"):
            async with self._connection() as con, self._transaction(con):
                stored = await self._claim_batches(con, todo)
                check_fingerprints(todo, stored)
                fresh = [b for b in todo if b.batch_id not in stored]
                for n, tw in enumerate(plan_writes(fresh, self.max_columns)):
                    known[tw.table] = await self._apply(con, tw, n)
        self._tables.update(known)
        return set(stored)

    async def _apply(self, con: C, tw: TableWrite, n: int) -> TableInfo:
        """The DDL the table needs, then its rows; returns the table as it is now."""
        self._adapt(tw)
        cached = self._tables.get(tw.table)
        change = None if cached is None else plan_table(cached, tw, self.max_columns)
        if change is None or change.needed:
            # Decide on the current catalog: another worker may have changed the table.
            await self._lock_table(con, tw.table)
            stored = await self._read_table(con, tw.table)
            if stored is None:
                other = await self._table_of_other_case(con, tw.table)
                if other is not None:
                    raise table_collision(tw, other)
            change = plan_table(stored, tw, self.max_columns)
            if change.needed:
                await self._alter_table(con, tw.table, change)
        if tw.parts:
            await self._load(con, tw, change.info, n)
        return change.info

    async def _load(self, con: C, tw: TableWrite, info: TableInfo, n: int) -> None:
        """The write's rows into the table: straight in where the dialect can, else merged."""
        columns = dict.fromkeys([*tw.columns, *info.primary_key])
        logical = {c: info.columns.get(c, "string") for c in columns}
        if await self._load_direct(con, tw, logical, info.primary_key):
            return
        staged = await self._stage(con, tw, logical, n)
        try:
            await self._merge(con, tw, staged, info.primary_key)
        except Exception as exc:
            if not isinstance(self._translate(exc, "merging rows"), SinkDataError):
                raise  # the store is unusable, or no driver error: the boundary decides
            raise await self._rejected(con, tw, staged, exc) from exc

    async def _rejected(
        self, con: C, tw: TableWrite, staged: Staged, exc: Exception
    ) -> SinkDataError:
        """Name the column whose values the store cannot cast (one probe per cast column)."""
        for column, sql_type in staged.casts.items():
            complaint = await self._probe(con, staged, column)
            if complaint is not None:
                return SinkDataError(
                    f"{tw.where(column)}: a value is not a valid {sql_type}: {complaint}"
                )
        return SinkDataError(f"{tw.where()}: {self.store} rejected the rows: {first_line(exc)}")

    async def ping(self) -> None:
        with self._boundary("ping failed"):
            async with self._connection() as con:
                await self._scalar(con, "SELECT 1")

    async def count_rows(self) -> dict[str, int]:
        """Rows per data table of the schema (the inbox and the owner record excluded)."""
        with self._boundary("counting rows"):
            async with self._connection() as con:
                return {
                    table: int(await self._scalar(con, f"SELECT count(*) FROM {self._name(table)}"))
                    for table in await self._data_tables(con)
                }

    def _name(self, table: str) -> str:
        return qualified(self.schema, table)

    @contextlib.contextmanager
    def _boundary(self, what: str, *, opening: bool = False) -> Iterator[None]:
        """Where driver exceptions leave, as our errors by the dialect's one mapping (``raise
        ... from exc``); our own errors and cancellation pass as they are."""
        try:
            yield
        except Exception as exc:
            error = self._translate(exc, what, opening=opening)
            if error is None:
                raise
            raise error from exc

    # --- the dialect's hooks ----------------------------------------------------------------

    @abstractmethod
    async def _stored_schema(self, con: C, schema: str) -> str | None:
        """The stored spelling of ``schema``, or None if there is no such schema."""

    @abstractmethod
    async def _table_exists(self, con: C, schema: str, table: str) -> bool:
        """Whether ``schema`` holds a table ``table``."""

    @abstractmethod
    async def _upgrade_inbox(self, con: C, inbox: str) -> None:
        """Give an inbox from before fingerprints the column (NULL: never compared)."""

    @abstractmethod
    async def _strings(self, con: C, sql: str) -> list[str]:
        """The first column of ``sql``'s rows."""

    @abstractmethod
    async def _execute(self, con: C, sql: str) -> None:
        """Run ``sql``."""

    @abstractmethod
    def _connection(self) -> AbstractAsyncContextManager[C]:
        """One connection, for one call. SinkUnavailable if the sink is not open."""

    @abstractmethod
    def _transaction(self, con: C) -> AbstractAsyncContextManager[None]:
        """A transaction on ``con``: committed if the block ends normally, else rolled back."""

    @abstractmethod
    async def _claim_batches(self, con: C, batches: list[Batch]) -> dict[str, str | None]:
        """Insert the inbox rows of the batches that are not in the inbox; return id ->
        stored fingerprint of those that are."""

    def _adapt(self, tw: TableWrite) -> None:
        """Change the write's column types to what the store can hold exactly (by default
        nothing: DuckDB's numeric has a limit)."""

    async def _lock_table(self, con: C, table: str) -> None:
        """Serialise DDL on ``table`` across writers (by default the transaction alone does)."""

    @abstractmethod
    async def _read_table(self, con: C, table: str) -> TableInfo | None:
        """The stored table's columns, key and metadata columns, or None if there is none."""

    @abstractmethod
    async def _table_of_other_case(self, con: C, table: str) -> str | None:
        """A stored table whose name differs from ``table`` only in case, or None."""

    @abstractmethod
    async def _alter_table(self, con: C, table: str, change: TableChange) -> None:
        """Run the DDL of ``change``."""

    async def _load_direct(
        self, con: C, tw: TableWrite, logical: dict[str, str], primary_key: list[str]
    ) -> bool:
        """Load the rows straight into the table if the dialect can; False: stage them."""
        return False

    @abstractmethod
    async def _stage(self, con: C, tw: TableWrite, logical: dict[str, str], n: int) -> Staged:
        """Bulk-load the rows (columns of ``logical`` types) where ``merge_sql`` reads them;
        ``n`` numbers the tables of one write."""

    @abstractmethod
    async def _merge(self, con: C, tw: TableWrite, staged: Staged, primary_key: list[str]) -> None:
        """Run ``merge_sql``, so that a rejected one leaves ``con`` usable for ``_probe``."""

    @abstractmethod
    async def _probe(self, con: C, staged: Staged, column: str) -> str | None:
        """The store's complaint about ``column``'s staged values, or None if they cast."""

    @abstractmethod
    async def _scalar(self, con: C, sql: str) -> Any:
        """The first value of the first row of ``sql``."""

    @abstractmethod
    async def _data_tables(self, con: C) -> list[str]:
        """The schema's data tables: neither the inbox nor the owner record."""

    @abstractmethod
    def _translate(self, exc: Exception, what: str, *, opening: bool = False) -> SinkError | None:
        """The driver's one mapping: our error for ``exc``, None if it is not the driver's."""


def first_line(exc: BaseException) -> str:
    """The first line of a driver's message (DuckDB's go on with hints and context)."""
    return (str(exc).strip().splitlines() or [repr(exc)])[0]


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
