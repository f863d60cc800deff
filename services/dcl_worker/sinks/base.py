"""The sink interface: the DCL store that batches are written into, exactly once.

A sink writes a group of batches in one transaction that also records every batch id in
the store's own inbox. A batch whose id is already in the inbox is skipped, so a batch
redelivered after a crash, a reclaim race or a lost Redis mark is never applied twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from aam_dcl.messages import Batch


class Sink(ABC):
    """Base class of every DCL store. ``url`` is DCL_SINK_URL; ``tenant`` scopes the inbox."""

    scheme: str

    def __init__(self, url: str, tenant: str) -> None:
        self.url = url
        self.tenant = tenant

    @abstractmethod
    async def open(self) -> None:
        """Connect and create the inbox. Raise SinkUnavailable if the store cannot be reached."""

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
        rejected a batch's data: the caller retries batches one by one to find the poison).
        Schema-only tables (records None) create or widen the table and write no rows.
        """

    @abstractmethod
    async def count_rows(self) -> dict[str, int]:
        """Rows per data table (the inbox excluded): for the CLI, the demo and tests."""
