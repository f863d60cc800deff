"""The bridge publishes what a source says was deleted, and marks reads that cover a table.

- a page's deleted keys go out in the entries of that table, after its records;
- a read in full (``Connector.reads_in_full``) ends with a completion marker naming the run's
  first chunk of the table and how many chunks it took, also when the run was resumed;
- an incremental read has no marker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from aam_bridge.connectors.base import Connector, ConnectorConfig, Page, TableSpec
from aam_bridge.sync import SyncRunner
from aam_dcl import keys, messages
from aam_dcl.config import Settings
from aam_dcl.errors import ConnectorError


class Source(Connector):
    """Two tables of ``rows`` records each, in pages of 4; reads from a cursor report the
    rows listed in ``deleted`` as deleted (and yield no records)."""

    type_name = "test-source"

    def __init__(self, rows: int, deleted: list[int], fail_at_page: int | None = None) -> None:
        super().__init__(ConnectorConfig("src", "test-source", "src-1", None, {}))
        self.rows, self.deleted, self.fail_at_page = rows, deleted, fail_at_page
        self.pages_read = 0

    async def tables(self) -> list[TableSpec]:
        return [TableSpec("a", ("id",)), TableSpec("b", ("id",))]

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        if cursor == "end":
            yield Page([], "end", deleted=[{"id": i} for i in self.deleted])
            return
        start = int(cursor) if cursor else 0
        for first in range(start, self.rows, 4):
            self.pages_read += 1
            if self.pages_read == self.fail_at_page:
                raise ConnectorError("injected: the source went away")
            last = min(first + 4, self.rows)
            records = [{"id": i, "t": table.name} for i in range(first, last)]
            yield Page(records, "end" if last == self.rows else str(last))


async def entries(client: aioredis.Redis) -> list[messages.Batch]:
    rows = await client.xrange(keys.stream("default", "src"))
    return [messages.decode(fields, 2**30) for _, fields in rows]


def chunk_of(batch: messages.Batch) -> int:
    parsed = keys.parse_batch_id(batch.batch_id)
    assert parsed is not None
    return parsed[2]


@pytest.fixture
def small(settings: Settings) -> Settings:
    return settings.model_copy(update={"batch_chunk_size": 3})


async def test_a_full_read_ends_each_table_with_a_marker_naming_its_chunks(
    small: Settings, redis: aioredis.Redis
) -> None:
    await SyncRunner(small, redis, Source(rows=7, deleted=[])).run_once()
    batches = await entries(redis)
    # Per table: 7 records in chunks of 3 -> 3 chunks, then the marker.
    markers = [(b, t) for b in batches for t in b.tables if t.full_refresh is not None]
    assert [(t.name, chunk_of(b)) for b, t in markers] == [("a", 4), ("b", 8)]
    run = keys.parse_batch_id(batches[0].batch_id)
    assert run is not None
    assert [t.full_refresh for _, t in markers] == [
        messages.FullRefresh(run[1], 1, 3),
        messages.FullRefresh(run[1], 5, 3),
    ]
    assert all(not t.records and not t.schema.columns for _, t in markers)


async def test_a_resumed_full_read_still_names_the_tables_first_chunk(
    small: Settings, redis: aioredis.Redis
) -> None:
    with pytest.raises(ConnectorError):  # dies on table b's second page
        await SyncRunner(small, redis, Source(rows=7, deleted=[], fail_at_page=4)).run_once()
    await SyncRunner(small, redis, Source(rows=7, deleted=[])).run_once()
    markers = [t.full_refresh for b in await entries(redis) for t in b.tables if t.full_refresh]
    assert [(m.first_chunk, m.chunks) for m in markers] == [(1, 3), (5, 3)]


async def test_deleted_keys_are_published_with_their_table_and_an_incremental_read_has_no_marker(
    small: Settings, redis: aioredis.Redis
) -> None:
    await SyncRunner(small, redis, Source(rows=2, deleted=[])).run_once()
    before = len(await entries(redis))
    await SyncRunner(small, redis, Source(rows=2, deleted=[0, 1, 5, 6])).run_once()
    later = (await entries(redis))[before:]
    assert [(t.name, t.deleted) for b in later for t in b.tables] == [
        ("a", [{"id": 0}, {"id": 1}, {"id": 5}]),  # chunks of 3 items
        ("a", [{"id": 6}]),
        ("b", [{"id": 0}, {"id": 1}, {"id": 5}]),
        ("b", [{"id": 6}]),
    ]
    assert all(t.full_refresh is None and t.records == [] for b in later for t in b.tables)
