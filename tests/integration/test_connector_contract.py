"""The connector contract: what aam-bridge relies on from every connector.

Each test runs once per case in ``connector_cases.CASES``; a connector joins by adding a case.

- full sync: a read from no cursor yields every row of the source once;
- stable order: two reads from the same cursor yield the same records in the same order;
- cursor semantics: a read from any page's cursor yields exactly what followed that page;
- incremental sync: after the source changed, a read from the last cursor yields the changed
  and new rows, and applying them to the full read gives what the source holds;
- resume after interruption: a bridge run that fails part-way and is run again publishes
  every row exactly once, under batch ids that never repeat.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from aam_bridge.connectors.base import Connector, Page, TableSpec
from aam_bridge.sync import SyncRunner
from aam_dcl import keys, messages
from aam_dcl.config import Settings
from aam_dcl.errors import ConnectorError
from aam_dcl.messages import Record
from tests.integration.connector_cases import CASES, ConnectorCase, Rows, Source

MAX_RESUME_POINTS = 6  # page cursors tried per table by the cursor test


@pytest.fixture(params=CASES, ids=[case.id for case in CASES])
async def source(request: pytest.FixtureRequest) -> AsyncIterator[Source]:
    case: ConnectorCase = request.param
    started = case.start()
    await started.connector.open()
    try:
        yield started
    finally:
        await started.close()


async def read_pages(connector: Connector, table: TableSpec, cursor: str | None) -> list[Page]:
    return [page async for page in connector.read(table, cursor)]


def records_of(pages: list[Page]) -> list[Record]:
    return [record for page in pages for record in page.records]


def keyed(table: TableSpec, records: list[Record]) -> Rows:
    """Rows by primary key; fails on a key seen twice (a read yields each row once)."""
    rows: Rows = {}
    for record in records:
        key = tuple(record[k] for k in table.primary_key)
        assert key not in rows, f"{table.name}: row {key} yielded twice"
        rows[key] = record
    return rows


async def test_every_table_has_a_name_and_a_primary_key_present_in_its_rows(
    source: Source,
) -> None:
    tables = await source.connector.tables()
    assert tables
    assert len({t.name for t in tables}) == len(tables)
    for table in tables:
        assert table.primary_key, f"{table.name} declares no primary key"
        for record in records_of(await read_pages(source.connector, table, None))[:50]:
            assert all(record.get(k) is not None for k in table.primary_key), record


async def test_full_sync_yields_every_row_once(source: Source) -> None:
    for table in await source.connector.tables():
        pages = await read_pages(source.connector, table, None)
        assert pages, f"{table.name}: a read yields at least one page (its cursor)"
        assert pages[-1].cursor is not None, f"{table.name}: the last page carries a cursor"
        assert keyed(table, records_of(pages)) == await source.truth(table.name)


async def test_two_reads_from_one_cursor_yield_the_same_records_in_the_same_order(
    source: Source,
) -> None:
    for table in await source.connector.tables():
        first = await read_pages(source.connector, table, None)
        assert records_of(await read_pages(source.connector, table, None)) == records_of(first)
        last = first[-1].cursor
        again = records_of(await read_pages(source.connector, table, last))
        assert records_of(await read_pages(source.connector, table, last)) == again


async def test_a_read_from_any_page_cursor_yields_exactly_what_followed_that_page(
    source: Source,
) -> None:
    for table in await source.connector.tables():
        pages = await read_pages(source.connector, table, None)
        full = records_of(pages)
        step = max(1, len(pages) // MAX_RESUME_POINTS)
        done = 0
        for index, page in enumerate(pages):
            done += len(page.records)
            if index % step:
                continue
            tail = records_of(await read_pages(source.connector, table, page.cursor))
            if index < len(pages) - 1:
                assert tail == full[done:], f"{table.name}: resume after page {index}"


async def test_incremental_sync_yields_the_changes_and_ends_where_the_source_is(
    source: Source,
) -> None:
    tables = await source.connector.tables()
    state: dict[str, Rows] = {}
    cursors: dict[str, str | None] = {}
    for table in tables:
        pages = await read_pages(source.connector, table, None)
        state[table.name] = keyed(table, records_of(pages))
        cursors[table.name] = pages[-1].cursor
    await source.change()
    changed = 0
    for table in tables:
        pages = await read_pages(source.connector, table, cursors[table.name])
        changes = keyed(table, records_of(pages))
        changed += len(changes)
        state[table.name].update(changes)
        assert state[table.name] == await source.truth(table.name), table.name
    assert changed, "the change made no incremental read yield anything"


class FailsAfter(Connector):
    """The case's connector, slowed to a page per 10 ms (so chunks go out as they are cut)
    and failing its read after ``pages`` pages of the run."""

    type_name = "fails-after"

    def __init__(self, inner: Connector, pages: int) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.left = pages

    async def tables(self) -> list[TableSpec]:
        return await self.inner.tables()

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        async for page in self.inner.read(table, cursor):
            if self.left == 0:
                raise ConnectorError("injected: the source went away mid-read")
            self.left -= 1
            yield page
            await asyncio.sleep(0.01)


async def published(client: aioredis.Redis, connector: str) -> list[messages.Batch]:
    entries = await client.xrange(keys.stream("default", connector))
    return [messages.decode(fields, 2**30) for _, fields in entries]


@pytest.mark.parametrize("fail_after_pages", [2, 5])
async def test_a_run_interrupted_part_way_and_run_again_publishes_every_row_exactly_once(
    source: Source, redis: aioredis.Redis, settings: Settings, fail_after_pages: int
) -> None:
    settings = settings.model_copy(update={"batch_chunk_size": 37})
    connector = source.connector
    with pytest.raises(ConnectorError, match="injected"):
        await SyncRunner(settings, redis, FailsAfter(connector, fail_after_pages)).run_once()
    assert await published(redis, connector.config.name), "nothing published before the fault"
    result = await SyncRunner(settings, redis, connector).run_once()
    assert result.resumed

    batches = await published(redis, connector.config.name)
    ids = [b.batch_id for b in batches]
    assert len(set(ids)) == len(ids), "a batch id was published twice"
    tables = {t.name: t for t in await connector.tables()}
    seen: dict[str, list[Record]] = {name: [] for name in tables}
    for batch in batches:
        for part in batch.tables:
            seen[part.name] += part.records or []
    for name, table in tables.items():
        assert keyed(table, seen[name]) == await source.truth(name), name

    await source.change()
    again = await SyncRunner(settings, redis, connector).run_once()
    assert not again.resumed
    fresh = [b for b in await published(redis, connector.config.name) if b.batch_id not in ids]
    state = {name: keyed(t, seen[name]) for name, t in tables.items()}
    for batch in fresh:
        for part in batch.tables:
            state[part.name].update(keyed(tables[part.name], part.records or []))
    for name in tables:
        assert state[name] == await source.truth(name), name
