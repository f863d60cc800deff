"""``null://``: a sink that stores nothing, for measuring the transport alone.

It keeps the inbox (ids and fingerprints) in memory, so a batch is still applied at most
once per process, and a reused id with other content is still refused. Every write is
planned as the SQL stores plan it (``_sql``), against the tables as they would be: a batch
that they refuse (too many columns, two spellings of one name, a name that cannot be an
identifier, a deleted key without its primary key) is refused here too, and nothing of its
write is recorded. Deleted keys and full-refresh markers are accepted and change nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from aam_dcl.messages import Batch
from dcl_worker.sinks._sql import (
    TableInfo,
    TableWrite,
    check_deleted_keys,
    check_fingerprints,
    fold,
    plan_table,
    plan_writes,
    table_collision,
    unique_batches,
)
from dcl_worker.sinks.base import ColumnReport, SchemaReport, Sink, TableReport


class NullSink(Sink):
    scheme = "null"

    def _setup(self) -> None:
        self._inbox: dict[str, str | None] = {}  # batch id -> fingerprint
        self._rows: dict[str, int] = {}
        self._tables: dict[str, TableInfo] = {}  # each table as a store would hold it
        self._folded: dict[str, str] = {}  # fold(table) -> table
        self._names: dict[str, tuple[str, str]] = {}  # table -> (connector, source table)
        self._last: dict[str, tuple[str, dt.datetime]] = {}  # table -> last batch, its time

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release; the in-memory inbox is kept so a reopen stays exactly once."""

    async def ping(self) -> None:
        """Always ready."""

    async def write(self, batches: Sequence[Batch]) -> set[str]:
        todo = unique_batches(batches)
        check_fingerprints(todo, self._inbox)  # before anything is recorded: all or nothing
        duplicates = {b.batch_id for b in todo if b.batch_id in self._inbox}
        fresh = [b for b in todo if b.batch_id not in duplicates]
        writes = plan_writes(fresh, self.max_columns)
        tables = {tw.table: self._plan(tw) for tw in writes if tw.shaped}
        for tw in writes:  # deleted keys against the key the table would have
            info = tables.get(tw.table) or self._tables.get(tw.table)
            key = [] if info is None else info.primary_key
            for part in tw.deletes:
                check_deleted_keys(tw, part.records, key, part.batch_id)
        self._tables.update(tables)
        now = dt.datetime.now(dt.UTC)
        for tw in (tw for tw in writes if tw.shaped):
            self._names.setdefault(tw.table, (tw.connector, tw.source))
            self._last[tw.table] = (tw.batch_ids[-1], now)
            self._folded.setdefault(fold(tw.table), tw.table)
            self._rows[tw.table] = self._rows.get(tw.table, 0) + tw.row_count
        self._inbox.update((b.batch_id, b.fingerprint) for b in fresh)
        return duplicates

    def _plan(self, tw: TableWrite) -> TableInfo:
        """The table after this write; PoisonBatch where a store would refuse it."""
        known = self._tables.get(tw.table)
        other = self._folded.get(fold(tw.table)) if known is None else None
        if other is not None:
            raise table_collision(tw, other)
        return plan_table(known, tw, self.max_columns).info

    async def count_rows(self) -> dict[str, int]:
        """Rows each table would hold (appends; no primary-key merging, no deletes)."""
        return dict(self._rows)

    async def tables_report(self) -> list[TableReport]:
        """The tables as planned (rows as count_rows counts them)."""
        return [self._report(table) for table in sorted(self._tables)]

    async def schema_report(self, table: str) -> SchemaReport | None:
        """A planned table's columns (their message types); no history is kept."""
        info = self._tables.get(table)
        if info is None:
            return None
        columns = tuple(ColumnReport(c, kind, kind) for c, kind in info.columns.items())
        return SchemaReport(self._report(table), columns, ())

    async def check(self) -> None:
        """Nothing can be wrong with nothing."""

    def _report(self, table: str) -> TableReport:
        info = self._tables[table]
        connector, source = self._names.get(table, (table, table))
        last = self._last.get(table)
        return TableReport(
            table=table,
            connector=connector,
            source_table=source,
            live_rows=self._rows.get(table, 0),
            deleted_rows=0,
            columns=tuple(info.columns),
            primary_key=tuple(info.primary_key),
            created_at=None,
            last_batch_id=None if last is None else last[0],
            last_write_at=None if last is None else last[1],
        )
