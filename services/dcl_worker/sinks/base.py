"""The sink interface: the DCL store that batches are written into, exactly once.

A sink writes a group of batches in one transaction that also records every batch id in
the store's own inbox. A batch whose id is already in the inbox is skipped, so a batch
redelivered after a crash, a reclaim race or a lost Redis mark is never applied twice.
Each tenant writes into a schema of its own (``_tenancy``), which records its owner.

Besides writing, a sink answers the operator app, read-only: which tables it holds
(``tables_report``), one table's columns and schema history (``schema_report``), and whether
it can work at all (``check``). The reports are the dataclasses below.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from aam_dcl.errors import ConfigError
from aam_dcl.messages import Batch
from dcl_worker.sinks._deletes import DELETE_MODES, SOFT
from dcl_worker.sinks._sql import DEFAULT_MAX_COLUMNS


@dataclass(frozen=True, slots=True)
class TableReport:
    """One data table of the tenant's schema. ``connector`` and ``source_table`` come from the
    registry (a table from before it: read from the name, ``{connector}__{table}``); the last
    batch and write are None when no write since the registry recorded one."""

    table: str  # the store's name, {connector}__{table}
    connector: str
    source_table: str
    live_rows: int
    deleted_rows: int  # soft-deleted rows, tombstones of keys the store never held included
    columns: tuple[str, ...]  # the data columns (not the sink's own _dcl_ ones)
    primary_key: tuple[str, ...]
    created_at: dt.datetime | None
    last_batch_id: str | None
    last_write_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class ColumnReport:
    name: str
    type: str  # the message type: string, integer, numeric, boolean, datetime, date, json
    store_type: str  # the store's spelling, e.g. numeric / DECIMAL(38,9)


@dataclass(frozen=True, slots=True)
class SchemaChangeReport:
    """One row of the schema history (kinds: table_created, column_added, type_widened,
    key_differs); ``detail`` names the keys of a creation or a key difference."""

    changed_at: dt.datetime
    batch_id: str | None
    kind: str
    column: str | None
    old_type: str | None
    new_type: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class SchemaReport:
    table: TableReport
    columns: tuple[ColumnReport, ...]
    history: tuple[SchemaChangeReport, ...]  # oldest first


class Sink(ABC):
    """Base class of every DCL store. ``url`` is DCL_SINK_URL; ``tenant`` picks the schema and
    scopes the inbox; ``max_columns`` is DCL_MAX_COLUMNS (a wider table is poison);
    ``delete_mode`` is DCL_DELETE_MODE (soft: a deleted row is kept and marked; hard: removed)."""

    scheme: str

    def __init__(
        self,
        url: str,
        tenant: str,
        *,
        max_columns: int = DEFAULT_MAX_COLUMNS,
        delete_mode: str = SOFT,
    ) -> None:
        if delete_mode not in DELETE_MODES:
            raise ConfigError(
                f"DCL_DELETE_MODE={delete_mode!r} is invalid: use {' or '.join(DELETE_MODES)}"
            )
        self.url = url
        self.tenant = tenant
        self.max_columns = max_columns
        self.delete_mode = delete_mode
        self._setup()

    def _setup(self) -> None:  # noqa: B027 - a hook: a sink without state of its own needs none
        """The sink's own state, from ``self.url`` (URL errors: ConfigError); nothing opened.
        A sink sets its attributes here rather than repeating the constructor."""

    @abstractmethod
    async def open(self) -> None:
        """Connect, claim the tenant's schema and create the inbox.

        Raise SinkUnavailable if the store cannot be reached (retry), ConfigError if it can
        never work: a schema another tenant owns, a DuckDB path that is a directory or cannot
        be written or a file that is no DuckDB database, a PostgreSQL database that does not
        exist, a role or password it refuses, a privilege the user lacks (one line naming
        DCL_SINK_URL, its password masked).
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
        many columns, a name collision, an applied id with other content, a deleted key
        without its primary key). Nothing of a write that raises is applied. Schema-only
        tables (records None) create or widen the table and write no rows; a table's
        ``deleted`` keys apply after its records; a ``full_refresh`` marker (a part without
        columns or records, which never creates or alters a table) deletes the rows its run
        did not write once all of the run's chunks of the table are applied.
        """

    @abstractmethod
    async def count_rows(self) -> dict[str, int]:
        """Live rows per data table (the sink's own tables and deleted rows excluded): for the
        CLI, the demo and tests."""

    @abstractmethod
    async def tables_report(self) -> list[TableReport]:
        """Every data table of the tenant's schema, by name (read-only: for ``aam-dcl tables``).
        SinkUnavailable if the store cannot be read."""

    @abstractmethod
    async def schema_report(self, table: str) -> SchemaReport | None:
        """One table's columns, key and schema history, by its store name
        (``{connector}__{table}``); None if the schema has no such table."""

    @abstractmethod
    async def check(self) -> None:
        """Probe, read-only and without opening the sink, whether it can work (``aam-dcl
        config check --connect``): ConfigError for a sink that never can (no such database,
        bad credentials, missing privileges, a schema another tenant owns, a DuckDB path that
        cannot be a database), SinkUnavailable for what may pass (refused, timeout, the server
        starting, the DuckDB file in use). Creates nothing."""
