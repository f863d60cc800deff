"""``null://``: a sink that stores nothing, for measuring the transport alone.

It keeps the inbox (ids and fingerprints) in memory, so a batch is still applied at most
once per process, and a reused id with other content is still refused. Every write is
planned as the SQL stores plan it (``_sql``), against the tables as they would be: a batch
that they refuse (too many columns, two spellings of one name, a name that cannot be an
identifier) is refused here too, and nothing of its write is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

from aam_dcl.messages import Batch
from dcl_worker.sinks._sql import (
    DEFAULT_MAX_COLUMNS,
    TableInfo,
    TableWrite,
    check_fingerprints,
    fold,
    plan_table,
    plan_writes,
    table_collision,
    unique_batches,
)
from dcl_worker.sinks.base import Sink


class NullSink(Sink):
    scheme = "null"

    def __init__(self, url: str, tenant: str, *, max_columns: int = DEFAULT_MAX_COLUMNS) -> None:
        super().__init__(url, tenant, max_columns=max_columns)
        self._inbox: dict[str, str | None] = {}  # batch id -> fingerprint
        self._rows: dict[str, int] = {}
        self._tables: dict[str, TableInfo] = {}  # each table as a store would hold it
        self._folded: dict[str, str] = {}  # fold(table) -> table

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
        tables = {tw.table: self._plan(tw) for tw in writes}
        self._tables.update(tables)
        for tw in writes:
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
        """Rows each table would hold (appends; no primary-key merging)."""
        return dict(self._rows)
