"""``null://``: a sink that stores nothing, for measuring the transport alone.

It keeps the inbox (ids and fingerprints) in memory, so a batch is still applied at most
once per process, and a reused id with other content is still refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from aam_dcl.messages import Batch
from dcl_worker.sinks._sql import (
    DEFAULT_MAX_COLUMNS,
    check_fingerprints,
    store_table_name,
    unique_batches,
)
from dcl_worker.sinks.base import Sink


class NullSink(Sink):
    scheme = "null"

    def __init__(self, url: str, tenant: str, *, max_columns: int = DEFAULT_MAX_COLUMNS) -> None:
        super().__init__(url, tenant, max_columns=max_columns)
        self._inbox: dict[str, str | None] = {}  # batch id -> fingerprint
        self._rows: dict[str, int] = {}

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release; the in-memory inbox is kept so a reopen stays exactly once."""

    async def ping(self) -> None:
        """Always ready."""

    async def write(self, batches: Sequence[Batch]) -> set[str]:
        todo = unique_batches(batches)
        check_fingerprints(todo, self._inbox)  # before anything is recorded: all or nothing
        duplicates: set[str] = set()
        for batch in todo:
            if batch.batch_id in self._inbox:
                duplicates.add(batch.batch_id)
                continue
            self._inbox[batch.batch_id] = batch.fingerprint
            for table in batch.tables:
                name = store_table_name(batch.connector, table.name)
                self._rows[name] = self._rows.get(name, 0) + len(table.records or ())
        return duplicates

    async def count_rows(self) -> dict[str, int]:
        """Rows each table would hold (appends; no primary-key merging)."""
        return dict(self._rows)
