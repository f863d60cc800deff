"""From a table's pages to stream entries: chunks cut with their resume point, then numbered
and encoded, a chunk over AAM_MAX_PAYLOAD_BYTES split until each piece fits.

A resume point is a page cursor and how many items after it are already published. A
page's items are its records, then the keys of the rows it reports deleted (``Deleted``);
an entry carries its table's records and deleted keys (the store applies the deletes after
the upserts of the same entry). A read that covers the whole table ends with a completion
marker (``Encoder.marker``): the store then deletes the rows that run did not write.
Chunks are cut every ``AAM_BATCH_CHUNK_SIZE`` records from where a run (or its resumption)
starts, and whether and where a chunk is split depends only on its records and its number,
never on the clock: so a run resumed from any checkpoint cuts, splits and numbers exactly as
the interrupted attempt did, and a re-sent entry has the id and the content it had.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
import structlog

from aam_bridge import metrics
from aam_bridge.connectors.base import ConnectorConfig, Page, TableSpec
from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.messages import Batch, FullRefresh, Record, TableBatch, encode
from aam_dcl.schema import table_batch

log = structlog.get_logger("aam_bridge.chunks")

# The longest JSON of a float (sign, 17 digits, point, exponent): a payload is measured with
# its emitted_at this long, so that whether it fits never depends on the time of encoding.
STAMP_MAX_BYTES = 24


@dataclass(frozen=True, slots=True)
class Position:
    """Where reading a table resumes: from ``cursor``, skipping ``skip`` records after it."""

    cursor: str | None = None
    skip: int = 0


@dataclass(frozen=True, slots=True)
class Deleted:
    """A page item: the primary key of a row deleted at the source."""

    key: Record


Item = Record | Deleted


@dataclass(frozen=True, slots=True)
class Chunk:
    items: list[Item]
    start: Position  # reading from here cuts this chunk again
    end: Position  # where reading resumes once the chunk is published


class Chunker:
    """Cuts one table's pages into chunks of at most ``chunk_size`` items, from ``start`` on
    (the items a resumed run published already are skipped); a page's last chunk may be
    shorter."""

    def __init__(self, start: Position, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.cursor = start.cursor  # the table's cursor after the pages so far
        self.taken = 0  # items the last page added (a resumed run skips some)
        self._skip = start.skip
        self._base, self._since = start.cursor, start.skip  # the next chunk's end: base + since
        self._start = start  # the next chunk's start
        self._buffer: list[Item] = []

    def cut(self, page: Page) -> list[Chunk]:
        """The chunks this page completes."""
        records: list[Item] = [*page.records, *map(Deleted, page.deleted)]
        if self._skip:
            dropped = min(self._skip, len(records))
            records = records[dropped:]
            self._skip -= dropped
        self.taken = len(records)
        self._buffer.extend(records)
        if page.cursor is not None:
            self.cursor = page.cursor
        full = len(self._buffer) - len(self._buffer) % self.chunk_size
        chunks = [
            self._chunk(self._buffer[i : i + self.chunk_size])
            for i in range(0, full, self.chunk_size)
        ]
        self._buffer = self._buffer[full:]
        if self._buffer and page.cursor is not None and self._skip == 0:
            # A chunk never spans pages: a resumed run re-reads from the last page cursor and
            # skips what it published of that one page, never a run's worth of pages (a
            # re-read from further back skips rows that changed at the source meanwhile).
            chunks.append(self._chunk(self._buffer))
            self._buffer = []
        if not self._buffer and self._skip == 0:
            # Everything up to this page is cut: later chunks resume from its cursor.
            self._base, self._since = self.cursor, 0
            self._start = Position(self.cursor, 0)
        return chunks

    def rest(self) -> list[Chunk]:
        """After the last page: the records left over, as one shorter chunk (if any)."""
        chunks = [self._chunk(self._buffer)] if self._buffer else []
        self._buffer = []
        return chunks

    def _chunk(self, records: list[Item]) -> Chunk:
        self._since += len(records)
        chunk = Chunk(records, self._start, Position(self._base, self._since))
        self._start = chunk.end
        return chunk


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry to publish, and the checkpoint that goes with it."""

    payload: bytes
    records: int  # records (deleted keys not counted)
    resume: Position  # where the run resumes once this entry is published ...
    next_chunk: int  # ... numbering on from here


class Encoder:
    """Numbers one table's chunks within a run, from ``next_chunk`` on, and encodes them."""

    def __init__(
        self,
        settings: Settings,
        connector: ConnectorConfig,
        table: TableSpec,
        run_start_ms: int,
        next_chunk: int,
    ) -> None:
        self.settings = settings
        self.connector = connector
        self.table = table
        self.run_start_ms = run_start_ms
        self.next_chunk = next_chunk
        self.max_bytes = settings.max_payload_bytes
        self.rejected = 0  # records left out as oversize

    def encode(self, chunk: Chunk) -> list[Entry]:
        """The chunk's entries: one, or one per piece of a chunk too large for one entry.

        A record too large on its own is rejected: logged, counted, left out. Every piece
        but the last resumes from the chunk's start, so a run always resumes at a whole chunk
        and splits it again just as before, re-sending its pieces under the same ids.
        """
        first = self.next_chunk
        pieces = self._fit(chunk.items, first)
        self.next_chunk = first + len(pieces)
        last = len(pieces) - 1
        return [
            Entry(payload, n, chunk.end, self.next_chunk)
            if i == last
            else Entry(payload, n, chunk.start, first)
            for i, (payload, n) in enumerate(pieces)
        ]

    def marker(self, first_chunk: int, resume: Position) -> Entry:
        """The completion marker of a run that read the table in full: its chunks are
        ``first_chunk`` up to the one before this marker. ``resume`` is where the last chunk
        resumed: a run resumed after the marker re-reads nothing and sends a second marker,
        which covers the first (reconciling twice deletes nothing more)."""
        number = self.next_chunk
        self.next_chunk += 1
        part = table_batch(self.table.name, [], max_samples=0)  # no columns: no DDL
        part.full_refresh = FullRefresh(self.run_start_ms, first_chunk, number - first_chunk)
        return Entry(encode(self._batch(number, part)), 0, resume, self.next_chunk)

    def _fit(self, records: list[Item], number: int) -> list[tuple[bytes, int]]:
        """``records`` as payloads numbered from ``number``, halved until each fits."""
        payload, size = self._payload(records, number)
        if size <= self.max_bytes:
            return [(payload, sum(not isinstance(r, Deleted) for r in records))]
        if len(records) == 1:
            self._reject(records[0], size)
            return []
        half = len(records) // 2
        left = self._fit(records[:half], number)
        return left + self._fit(records[half:], number + len(left))

    def _payload(self, items: list[Item], number: int) -> tuple[bytes, int]:
        """The encoded entry, and its size with the widest emitted_at."""
        records = [r for r in items if not isinstance(r, Deleted)]
        part = table_batch(
            self.table.name,
            records,
            primary_key=self.table.primary_key,
            max_samples=self.settings.max_samples_per_table,
            column_types=self.table.column_types,
        )
        if len(records) < len(items):
            part.deleted = [d.key for d in items if isinstance(d, Deleted)]
        stamp = time.time()
        payload = encode(self._batch(number, part, stamp))
        return payload, len(payload) - len(orjson.dumps(stamp)) + STAMP_MAX_BYTES

    def _batch(self, number: int, part: TableBatch, stamp: float | None = None) -> Batch:
        return Batch(
            batch_id=keys.batch_id(self.connector.name, self.run_start_ms, number),
            connector=self.connector.name,
            connector_config_id=self.connector.connector_config_id,
            tables=[part],
            tenant_id=self.settings.tenant_id,
            emitted_at=stamp,
        )

    def _reject(self, item: Item, size: int) -> None:
        self.rejected += 1
        record = item.key if isinstance(item, Deleted) else item
        key = {column: record.get(column) for column in self.table.primary_key} or None
        metrics.RECORDS_REJECTED.labels(
            self.settings.tenant_id, self.connector.name, "oversize"
        ).inc()
        log.error(
            "record_rejected",
            reason="oversize",
            connector=self.connector.name,
            table=self.table.name,
            primary_key=key,
            error=f"record {key} of {self.connector.name}.{self.table.name} takes {size} bytes "
            f"in a stream entry of its own, over AAM_MAX_PAYLOAD_BYTES={self.max_bytes}: "
            "the worker would dead-letter it, so it is skipped",
        )
