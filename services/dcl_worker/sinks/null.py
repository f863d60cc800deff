"""``null://``: a sink that stores nothing, for measuring the transport alone.

It keeps the inbox in memory, so a batch is still applied at most once per process.
"""

from __future__ import annotations

from collections.abc import Sequence

from aam_dcl.messages import Batch
from dcl_worker.sinks._sql import store_table_name, unique_batches
from dcl_worker.sinks.base import Sink


class NullSink(Sink):
    scheme = "null"

    def __init__(self, url: str, tenant: str) -> None:
        super().__init__(url, tenant)
        self._inbox: set[str] = set()
        self._rows: dict[str, int] = {}

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release; the in-memory inbox is kept so a reopen stays exactly once."""

    async def ping(self) -> None:
        """Always ready."""

    async def write(self, batches: Sequence[Batch]) -> set[str]:
        duplicates: set[str] = set()
        for batch in unique_batches(batches):
            if batch.batch_id in self._inbox:
                duplicates.add(batch.batch_id)
                continue
            self._inbox.add(batch.batch_id)
            for table in batch.tables:
                name = store_table_name(batch.connector, table.name)
                self._rows[name] = self._rows.get(name, 0) + len(table.records or ())
        return duplicates

    async def count_rows(self) -> dict[str, int]:
        """Rows each table would hold (appends; no primary-key merging)."""
        return dict(self._rows)
