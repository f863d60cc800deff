"""The sink interface: the DCL store that batches are written into, exactly once.

A sink writes a group of batches in one transaction that also records every batch id in
the store's own inbox. A batch whose id is already in the inbox is skipped, so a batch
redelivered after a crash, a reclaim race or a lost Redis mark is never applied twice.
Each tenant writes into a schema of its own (``_tenancy``), which records its owner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from aam_dcl.messages import Batch
from dcl_worker.sinks._sql import DEFAULT_MAX_COLUMNS


class Sink(ABC):
    """Base class of every DCL store. ``url`` is DCL_SINK_URL; ``tenant`` picks the schema and
    scopes the inbox; ``max_columns`` is DCL_MAX_COLUMNS (a wider table is poison)."""

    scheme: str

    def __init__(self, url: str, tenant: str, *, max_columns: int = DEFAULT_MAX_COLUMNS) -> None:
        self.url = url
        self.tenant = tenant
        self.max_columns = max_columns

    @abstractmethod
    async def open(self) -> None:
        """Connect, claim the tenant's schema and create the inbox.

        Raise SinkUnavailable if the store cannot be reached (retry), ConfigError if it can
        never work: a schema another tenant owns, a DuckDB path that is a directory or cannot
        be written.
        """

    @abstractmethod
    async def close(self) -> None:
        """Release connections. Safe to call more than once."""

    @abstractmethod
    async def ping(self) -> None:
        """Cheap readiness check; raise SinkUnavailable when the store is not usable."""

    @abstractmethod
    async def write(self, batches: Sequence[Batch]) -> set[str]:
        """Apply ``batches`` (stream order) in one transaction with their inbox rows.

        Returns the ids that were already in the inbox and therefore skipped. Raises
        SinkUnavailable (connection problems: retry later) or SinkDataError (the store
        rejected a batch's data: the caller retries batches one by one to find the poison);
        PoisonBatch, a SinkDataError naming the batch, for one that can never be stored (too
        many columns, a name collision, an applied id with other content). Nothing of a write
        that raises is applied. Schema-only tables (records None) create or widen the table
        and write no rows.
        """

    @abstractmethod
    async def count_rows(self) -> dict[str, int]:
        """Rows per data table (the inbox excluded): for the CLI, the demo and tests."""
