"""The write sequence of the SQL stores, written once (``SqlSink``).

PostgreSQL and DuckDB implement the hooks: their connection and transaction, the inbox
insert, catalog reads, DDL, how rows are staged, one probe, their locks, and the one mapping
of their driver's exceptions. One write() is one transaction:

1. ``_claim_batches`` records the inbox rows of the batches not applied yet and returns the
   stored fingerprints of those that were (a reused id with other content is PoisonBatch);
2. ``plan_writes`` groups the fresh batches' tables (``_sql``: every poison check);
3. per table, under its refresh lock: what the store knows of it (the last full refresh,
   pending markers, tombstones: ``_deletes``); a change that the cached schema does not
   cover is decided again on the store's catalog, under the DDL lock, applied, and recorded
   in the registry and the history (``_registry``) — never for a write of markers only;
4. the rows go in straight (``_load_direct``) or are staged (``_stage``) and merged by one
   ``INSERT ... SELECT`` (``_merge.merge_sql``): appended, or upserted so that an older
   version never replaces a newer row; then the deleted keys (soft or hard), then the
   markers: a run whose chunks are all in the inbox deletes the rows it did not write;
5. after the commit, the tables' schemas are cached, the schema changes logged and counted.

open() settles the tenant's schema once for both (``_settle_schema``, ``_claim``) and creates
the sink's own tables. The read-only reports are ``_reports``'.

Driver exceptions leave through ``_boundary`` as our errors (``raise ... from exc``); a
merge that the store rejects is probed one cast column at a time, to name the culprit.
Cancellation passes untouched.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

from aam_dcl.errors import AamDclError, SinkDataError
from aam_dcl.messages import Batch
from dcl_worker.sinks._claim import choose_schema, claim_schema
from dcl_worker.sinks._deletes import (
    HARD,
    SOFT,
    TableState,
    applied_chunks_sql,
    deleted_write,
    deletes_ddl,
    drop_stale,
    forget_pending_sql,
    hard_delete_sql,
    key_exprs,
    parse_state,
    pending_sql,
    reconcile_sql,
    refreshed_sql,
    relevant,
    soft_delete_sql,
    state_sql,
    tombstone_filter,
    tombstone_sql,
)
from dcl_worker.sinks._merge import Staged, first_line, merge_sql, order_by
from dcl_worker.sinks._registry import (
    HISTORY_TABLE,
    SchemaChange,
    announce,
    change_sql,
    history_sql,
    key_difference,
    key_noted_sql,
    registry_ddl,
    schema_changes,
    touch_sql,
)
from dcl_worker.sinks._reports import (
    column_reports,
    counts_sql,
    history_reports,
    registry_sql,
    store_types_sql,
    table_report,
)
from dcl_worker.sinks._reports import history_sql as report_history_sql
from dcl_worker.sinks._sql import (
    Refresh,
    TableChange,
    TableInfo,
    TableWrite,
    check_deleted_keys,
    check_fingerprints,
    plan_change,
    plan_table,
    plan_writes,
    qualified,
    table_collision,
    unique_batches,
)
from dcl_worker.sinks._tenancy import tenant_schema
from dcl_worker.sinks.base import SchemaReport, Sink, TableReport

C = TypeVar("C")  # the dialect's handle of one connection, held for one call


class SqlSink(Sink, Generic[C]):
    """A store written with SQL: ``write``, ``ping`` and ``count_rows`` over dialect hooks."""

    store: str  # the store's name in messages
    default_schema: str  # the store's own schema, tenant ``default``'s
    types: Mapping[str, str]  # logical type -> the store's type, as the history names them
    float_type: str  # numeric's type before it was exact

    def _setup(self) -> None:
        schema = self._parse_url(self.url)
        self._explicit_schema = schema  # DCL_SINK_URL's ?schema=
        # The rule's schema; open() may settle on another: an older store's default schema,
        # or DuckDB's stored spelling of this one.
        self.schema = schema or tenant_schema(self.tenant, self.default_schema)
        self._tables: dict[str, TableInfo] = {}  # committed knowledge only
        self._noted: set[tuple[str, str | None]] = set()  # key differences in the history

    # --- the tenant's schema, at open() -------------------------------------------------------

    async def _settle_schema(self, con: C) -> str:
        """Choose the tenant's schema and claim it (in the caller's transaction), with the
        inbox, the registry and the other tables of the sink (``_claim``); returns the stored
        spelling (DuckDB's ``dcl_tx`` is a ``dcl_TX`` made before)."""
        stored = await claim_schema(self, con, await choose_schema(self, con))
        for sql in [*registry_ddl(stored), *deletes_ddl(stored)]:
            await self._execute(con, sql)
        return stored

    # --- the sequence -----------------------------------------------------------------------

    async def write(self, batches: Sequence[Batch]) -> set[str]:
        todo = unique_batches(batches)
        if not todo:
            return set()
        known: dict[str, TableInfo] = {}
        changes: list[SchemaChange] = []
        with self._boundary(f"writing batches {_ids([b.batch_id for b in todo])}"):
            async with self._connection() as con, self._transaction(con):
                stored = await self._claim_batches(con, todo)
                check_fingerprints(todo, stored)
                fresh = [b for b in todo if b.batch_id not in stored]
                for n, tw in enumerate(plan_writes(fresh, self.max_columns)):
                    info = await self._apply(con, tw, n, changes)
                    if info is not None:
                        known[tw.table] = info
        self._tables.update(known)
        self._noted.update((c.table, c.detail) for c in changes if c.kind == "key_differs")
        announce(self.tenant, changes)
        return set(stored)

    async def _apply(
        self, con: C, tw: TableWrite, n: int, changes: list[SchemaChange]
    ) -> TableInfo | None:
        """One table of a write: under its refresh lock, what the store knows of it (the last
        full refresh, pending markers, tombstones); the DDL it needs (recorded in the registry
        and the history); its rows, then its deleted keys; then its markers. Returns the table
        as it is now (None: only markers, for a table the store does not have)."""
        self._adapt(tw)
        await self._lock_refresh(con, tw.table, exclusive=bool(tw.refreshes))
        state = parse_state(await self._rows(con, state_sql(self._name, tw.table)))
        drop_stale(tw, state.refreshed_version)
        tw.tombstoned = state.tombstones
        info = await (self._shape(con, tw, changes) if tw.shaped else self._known(con, tw.table))
        if info is not None:
            await self._note_key(con, tw, info.primary_key, changes)
            if tw.parts:
                await self._load(con, tw, info, n)
            if tw.deletes:
                await self._delete(con, tw, info, n)
        await self._refresh(con, tw, info, state)
        if info is not None:
            await self._execute(con, self._touch_sql(tw.table, tw.batch_ids[-1]))
        return info

    async def _shape(self, con: C, tw: TableWrite, changes: list[SchemaChange]) -> TableInfo:
        """The DDL the write needs; a change the cached schema does not cover is decided on the
        catalog, under the DDL lock (another worker may have changed the table)."""
        cached = self._tables.get(tw.table)
        change = None if cached is None else plan_table(cached, tw, self.max_columns)
        if change is None or change.needed:
            await self._lock_table(con, tw.table)
            stored = await self._read_table(con, tw.table)
            if stored is None:
                other = await self._table_of_other_case(con, tw.table)
                if other is not None:
                    raise table_collision(tw, other)
            change = plan_table(stored, tw, self.max_columns)
            if change.needed:
                await self._alter_table(con, tw.table, change)
            await self._record_change(con, tw, change, first_sight=cached is None, into=changes)
        return change.info

    async def _known(self, con: C, table: str) -> TableInfo | None:
        """The table as it is, without changing it (a write of markers only)."""
        cached = self._tables.get(table)
        return cached if cached is not None else await self._read_table(con, table)

    async def _record_change(
        self,
        con: C,
        tw: TableWrite,
        change: TableChange,
        *,
        first_sight: bool,
        into: list[SchemaChange],
    ) -> None:
        """The registry row (a table this process has not seen yet may be from before the
        registry) and the history rows of ``change``."""
        found = schema_changes(tw, change, self.types, self.float_type)
        for sql in change_sql(self._name, self.tenant, tw, change, found, first_sight):
            await self._execute(con, sql)
        into.extend(found)

    async def _note_key(
        self, con: C, tw: TableWrite, stored_key: list[str], into: list[SchemaChange]
    ) -> None:
        """A batch key that differs from the stored one, in the history once."""
        differs = key_difference(tw, stored_key)
        if differs is None or (tw.table, differs.detail) in self._noted:
            return
        if await self._scalar(con, key_noted_sql(self._name, differs)):
            self._noted.add((tw.table, differs.detail))
            return
        await self._execute(con, history_sql(self._name(HISTORY_TABLE), [differs]))
        into.append(differs)

    def _touch_sql(self, table: str, batch_id: str) -> str:
        """The registry's last batch and write of ``table``."""
        return touch_sql(self._name, table, batch_id)

    async def _load(self, con: C, tw: TableWrite, info: TableInfo, n: int) -> None:
        """The write's rows into the table: straight in where the dialect can, else merged."""
        columns = dict.fromkeys([*tw.columns, *info.primary_key])
        logical = {c: info.columns.get(c, "string") for c in columns}
        if await self._load_direct(con, tw, logical, info.primary_key):
            return
        staged = await self._stage(con, tw, logical, str(n))
        try:
            await self._merge(con, tw, staged, info.primary_key)
        except Exception as exc:
            if not isinstance(self._translate(exc, "merging rows"), SinkDataError):
                raise  # the store is unusable, or no driver error: the boundary decides
            raise await self._rejected(con, tw, staged, exc) from exc

    def _merge_sql(self, tw: TableWrite, staged: Staged, primary_key: list[str]) -> str:
        """``merge_sql`` into the table, skipping keys a newer tombstone says are deleted."""
        where = None
        if tw.tombstoned and primary_key:
            keys = key_exprs(staged.exprs, primary_key)
            where = tombstone_filter(self._name, tw.table, self._key_text(keys))
        return merge_sql(self._name(tw.table), staged, primary_key, where)

    async def _delete(self, con: C, tw: TableWrite, info: TableInfo, n: int) -> None:
        """The write's deleted keys, after its rows: marked (soft) or removed with a tombstone
        (hard), where the key's stored version is not newer."""
        pk = info.primary_key
        for part in tw.deletes:  # the stored key decides (a batch may name another)
            check_deleted_keys(tw, part.records, pk, part.batch_id)
        logical = {c: info.columns.get(c, "string") for c in pk}
        staged = await self._stage(con, deleted_write(tw, pk), logical, f"{n}d")
        keys, order = key_exprs(staged.exprs, pk), order_by(staged, pk)
        target = self._name(tw.table)
        if self.delete_mode == HARD:
            await self._execute(con, hard_delete_sql(target, staged.source, keys, order, pk))
            tombstones = tombstone_sql(
                self._name, tw.table, staged.source, self._key_text(keys), staged.tiebreak
            )
            await self._execute(con, tombstones)
        else:
            await self._execute(con, soft_delete_sql(target, staged.source, keys, order, pk))

    async def _refresh(
        self, con: C, tw: TableWrite, info: TableInfo | None, state: TableState
    ) -> None:
        """The write's markers, and the pending ones its chunks may complete: a run whose
        chunks of the table are all in the inbox is reconciled; one that is not, waits."""
        markers = relevant(tw, state.pending)
        if any(m not in tw.refreshes for m in markers):
            # Completing another write's marker: one writer at a time checks, and reads the
            # markers again (the one before may have reconciled them).
            await self._lock_refresh_check(con, tw.table)
            state = parse_state(await self._rows(con, state_sql(self._name, tw.table)))
            markers = relevant(tw, state.pending)
        floor = state.refreshed_version
        for marker in markers:
            if marker.version <= floor:  # this run, or a newer one, is reconciled already
                await self._execute(con, forget_pending_sql(self._name, tw.table, marker))
            elif await self._applied(con, marker) < marker.chunks:
                if marker in tw.refreshes:
                    await self._execute(con, pending_sql(self._name, tw.table, marker))
            elif info is None:  # a run that wrote no rows into a table the store lacks
                await self._execute(con, forget_pending_sql(self._name, tw.table, marker))
            else:
                await self._reconcile(con, tw.table, info, marker)
                floor = marker.version

    async def _applied(self, con: C, marker: Refresh) -> int:
        return int(await self._scalar(con, applied_chunks_sql(self._name, marker)))

    async def _reconcile(self, con: C, table: str, info: TableInfo, marker: Refresh) -> None:
        """The rows the run did not write, deleted; the table's floor raised."""
        if self.delete_mode == SOFT and not info.deletable:  # a table no write has touched
            change = plan_change(info, {}, info.primary_key)  # since deletes: only the column
            await self._alter_table(con, table, change)
            info.deletable = True
        await self._execute(con, reconcile_sql(self._name(table), marker, self.delete_mode))
        for sql in refreshed_sql(self._name, table, marker.version):
            await self._execute(con, sql)

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
        return {report.table: report.live_rows for report in await self.tables_report()}

    async def tables_report(self) -> list[TableReport]:
        with self._boundary("reading the tables"):
            async with self._connection() as con:
                registry = {r[0]: r for r in await self._rows(con, registry_sql(self._name))}
                reports = []
                for table in await self._data_tables(con):
                    info = await self._read_table(con, table)
                    if info is not None:  # dropped meanwhile
                        counts = await self._rows(con, counts_sql(self._name(table), info))
                        reports.append(table_report(table, info, counts[0], registry))
                return reports

    async def schema_report(self, table: str) -> SchemaReport | None:
        with self._boundary(f"reading table {table}"):
            async with self._connection() as con:
                if table not in await self._data_tables(con):
                    return None
                info = await self._read_table(con, table)
                if info is None:
                    return None
                registry = {r[0]: r for r in await self._rows(con, registry_sql(self._name))}
                counts = await self._rows(con, counts_sql(self._name(table), info))
                types = await self._rows(con, store_types_sql(self.schema, table))
                history = await self._rows(con, report_history_sql(self._name, table))
        return SchemaReport(
            table_report(table, info, counts[0], registry),
            column_reports(info, types),
            history_reports(history),
        )

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
    def _parse_url(self, url: str) -> str | None:
        """Read DCL_SINK_URL into the dialect's attributes; returns its ``?schema=``."""

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

    async def _lock_refresh(self, con: C, table: str, *, exclusive: bool) -> None:
        """Order this write of ``table`` against full-refresh markers: a marker's write holds it
        exclusively, others shared (by default the transaction alone does)."""

    async def _lock_refresh_check(self, con: C, table: str) -> None:
        """Let one write at a time check whether pending markers of ``table`` are complete."""

    @abstractmethod
    def _key_text(self, keys: list[str]) -> str:
        """A key's values (SQL expressions) as one text, a tombstone's ``key``."""

    @abstractmethod
    async def _rows(self, con: C, sql: str) -> list[tuple[Any, ...]]:
        """The rows of ``sql``."""

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
    async def _stage(self, con: C, tw: TableWrite, logical: dict[str, str], tag: str) -> Staged:
        """Bulk-load the rows (columns of ``logical`` types) where ``merge_sql`` reads them;
        ``tag`` tells the stages of one write apart."""

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
    def _translate(self, exc: Exception, what: str, *, opening: bool = False) -> AamDclError | None:
        """The driver's one mapping: our error for ``exc``, None if it is not the driver's."""


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
