"""The connector interface: what aam-bridge needs from any source.

A connector lists its tables and reads one table as pages of records. Each page carries a
cursor; reading again from that cursor yields exactly the records after the page, so the
bridge can checkpoint after every chunk and resume a killed run without a gap or a re-send.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aam_dcl.errors import ConfigError
from aam_dcl.messages import Record


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    """One entry of the connectors file."""

    name: str  # unique per tenant; the stream is aam:dcl:{tenant}:{name}
    type: str  # registry key: demo, salesforce, hubspot, dynamics, postgres, singer, file
    connector_config_id: str
    schedule_s: float | None = 300.0  # seconds between runs; None = run once
    options: dict[str, Any] = field(default_factory=dict)  # masked in repr when from a file


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A table the connector reads. ``column_types`` are the source's own types (a catalog,
    a describe call), in the message format's names; columns not in it are inferred from
    the records' values. A declared type keeps a column's type right in a chunk where the
    column happens to be all null."""

    name: str
    primary_key: tuple[str, ...] = ()
    column_types: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Page:
    """Records read from a table, and the cursor that resumes right after them.

    ``deleted`` holds the primary-key objects (``{key column: value}``) of rows the source
    reports deleted since the cursor the read started from; the store marks them deleted.
    """

    records: list[Record]
    cursor: str | None
    deleted: list[Record] = field(default_factory=list)


class Connector(ABC):
    """Base class of every connector. Subclasses set ``type_name`` and implement the reads."""

    type_name: ClassVar[str]

    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config

    async def open(self) -> None:  # noqa: B027 - optional hook: most connectors need no setup
        """Acquire clients and sessions. Raise ConnectorError (or ConfigError) on failure."""

    async def close(self) -> None:  # noqa: B027 - optional hook, like open()
        """Release what open() acquired. Must be safe to call more than once."""

    @abstractmethod
    async def tables(self) -> list[TableSpec]:
        """The tables this connector syncs, in a stable order."""

    def reads_in_full(self, table: TableSpec, cursor: str | None) -> bool:
        """True if ``read(table, cursor)`` yields every row the table holds, so that a row it
        does not yield no longer exists at the source.

        A cursor cannot see deletes; a read in full can: the bridge marks such a run of the
        table as a full refresh, and the store deletes the rows the run did not write. Ask
        with the cursor the table's run started from (a resumed run keeps it), not a page
        cursor. Default: only a read from no cursor. A connector that re-reads a table from
        the start on every run (no change cursor) says True for that table's end cursors.
        """
        return cursor is None

    @abstractmethod
    def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        """Yield the records changed after ``cursor`` (None: everything), in a stable order,
        and the keys of rows deleted after it, if the source reports deletes.

        Reading twice from the same cursor must yield the same records while the source is
        unchanged. The last page's cursor becomes the table's cursor for the next run. A
        cursor is an opaque string to the bridge: a connector may keep more in it than a
        position (a compound key, a delta link), as long as it fits one Redis hash value.
        """


def reject_unknown_options(
    type_name: str, options: Mapping[str, Any], names: Iterable[str]
) -> None:
    """ConfigError naming the first option (sorted) that ``names`` does not have; connectors'
    constructors call it before checking each option."""
    known = list(names)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"options.{unknown[0]} is unknown: the {type_name} connector takes " + ", ".join(known)
        )


async def close_read(pages: AsyncIterator[Page]) -> None:
    """Release what a read left part-way holds (a snapshot transaction, a connection, a
    subprocess) now, not when the generator is collected. An error while closing is not the
    caller's: it is dropped."""
    close = getattr(pages, "aclose", None)  # async generators have it; other iterators not
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
