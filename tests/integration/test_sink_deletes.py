"""Rows deleted at the source, through the sink contract suite's fixtures (``test_sinks``):
``deleted`` keys (soft: the row kept and marked; hard: removed, a tombstone kept) and
full-refresh markers, which delete the rows a run did not write once all of its chunks are
in the store's inbox. Versions decide, as for upserts: an older batch arriving late never
brings back a row a newer one deleted.

Each store runs in both modes (``store_sink``); the contract cases run on null:// too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aam_dcl.errors import PoisonBatch
from aam_dcl.messages import Batch, FullRefresh, Record
from aam_dcl.schema import table_batch
from dcl_worker.sinks.duckdb import DuckDBSink
from dcl_worker.sinks.postgres import PostgresSink
from tests.integration import test_sinks as contract
from tests.integration.test_sinks import TENANT, AnySink, Sink, Store, batch

sink = contract.sink  # the contract suite's fixture: every sink, null:// included

RUN_1, RUN_2, RUN_3 = 1_700_000_000_000, 1_700_000_600_000, 1_700_001_200_000


def version(run: int, chunk: int) -> int:
    return run * 1_000_000 + chunk


@pytest.fixture(
    params=[("duckdb", "soft"), ("duckdb", "hard"), ("postgres", "soft"), ("postgres", "hard")],
    ids=["duckdb-soft", "duckdb-hard", "postgres-soft", "postgres-hard"],
)
async def store_sink(
    request: pytest.FixtureRequest, tmp_path: Path, pg_dsn: str
) -> AsyncIterator[tuple[Sink, Store]]:
    """A fresh store of each kind in each DCL_DELETE_MODE, and a reader of it."""
    kind, mode = request.param
    made: Sink
    if kind == "duckdb":
        made = DuckDBSink(f"duckdb://{tmp_path / 'dcl.duckdb'}", TENANT, delete_mode=mode)
    else:
        schema = f"s_{uuid.uuid4().hex[:10]}"
        made = PostgresSink(f"{pg_dsn}?schema={schema}", TENANT, delete_mode=mode)
    await made.open()
    yield made, Store(made, pg_dsn if kind == "postgres" else None)
    await made.close()


def hard(s: Sink) -> bool:
    return s.delete_mode == "hard"


def with_deletes(b: Batch, deleted: list[Record]) -> Batch:
    b.tables[0].deleted = deleted
    return b


def deletes_only(batch_id: str, keys: list[Any], table: str = "contacts") -> Batch:
    """The bridge's entry of a page that only reports deletes: no columns, no records."""
    tb = table_batch(table, [], primary_key=["id"], max_samples=0)
    tb.deleted = [{"id": k} for k in keys]
    return Batch(batch_id, "crm", "crm-001", [tb], tenant_id=TENANT)


def marker(run: int, first: int, chunks: int, table: str = "contacts") -> Batch:
    """The bridge's completion marker: the entry after the run's last chunk of the table."""
    tb = table_batch(table, [], max_samples=0)
    tb.full_refresh = FullRefresh(run, first, chunks)
    return Batch(f"crm_{run}_{first + chunks}", "crm", "crm-001", [tb], tenant_id=TENANT)


def named(batch_id: str, ids: list[int], name: str = "v") -> Batch:
    return batch(batch_id, [{"id": i, "name": f"{name}{i}"} for i in ids])


async def state(store: Store, table: str = "crm__contacts") -> dict[Any, str]:
    """id -> 'live' or 'deleted' (soft: marked; hard: absent rows are simply not there)."""
    if not await table_exists(store, table):
        return {}
    rows = await store.rows(table)
    return {r["id"]: "live" if r["_dcl_deleted_at"] is None else "deleted" for r in rows}


async def live(store: Store, table: str = "crm__contacts") -> list[Any]:
    return sorted(k for k, v in (await state(store, table)).items() if v == "live")


async def table_exists(store: Store, table: str) -> bool:
    rows = await store.query(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = "
        f"current_schema() AND table_name = '{table}'"
    )
    return bool(rows[0]["n"])


# --- the contract: every sink, null:// included ---------------------------------------------


async def test_every_sink_takes_deleted_keys_and_markers(sink: AnySink) -> None:
    """Deleted keys, a part of deletes only and a full-refresh marker are applied (null://
    included); a marker alone creates no table."""
    b = with_deletes(named(f"crm_{RUN_1}_1", [1, 2, 3]), [{"id": 2}])
    assert await sink.write([b, deletes_only(f"crm_{RUN_1}_2", [3])]) == set()
    assert await sink.write([marker(RUN_1, 1, 2), marker(RUN_1, 1, 2, table="other")]) == set()
    assert "crm__other" not in await sink.count_rows()
    assert await sink.write([marker(RUN_1, 1, 2)]) == {marker(RUN_1, 1, 2).batch_id}


@pytest.mark.parametrize(
    "deleted",
    [[{"name": "x"}], [{"id": None}], [{"id": 1}, {}]],
    ids=["other-column", "null-key", "empty-key"],
)
async def test_a_deleted_key_without_its_primary_key_is_poison(
    sink: AnySink, deleted: list[Record]
) -> None:
    """A deleted key lacking a primary-key value: PoisonBatch naming the batch, the table and
    the key; nothing of the write is applied, the other batches then apply alone."""
    good = named(f"crm_{RUN_1}_1", [1])
    bad = with_deletes(named(f"crm_{RUN_1}_2", [2]), deleted)
    with pytest.raises(PoisonBatch) as info:
        await sink.write([good, bad])
    assert (info.value.batch_id, info.value.reason) == (bad.batch_id, "bad_deleted_key")
    assert "crm__contacts" in str(info.value)
    assert "deleted key" in str(info.value)
    assert await sink.write([good]) == set()
    assert await sink.count_rows() == {"crm__contacts": 1}


async def test_deleted_keys_of_a_table_without_a_primary_key_are_poison(sink: AnySink) -> None:
    await sink.write([batch(f"crm_{RUN_1}_1", [{"id": 1}], primary_key=[], table="events")])
    bad = with_deletes(batch(f"crm_{RUN_1}_2", [], primary_key=[], table="events"), [{"id": 1}])
    with pytest.raises(PoisonBatch, match="has no primary key"):
        await sink.write([bad])


# --- deleted keys -----------------------------------------------------------------------------


async def test_deletes_apply_after_the_records_of_their_entry(
    store_sink: tuple[Sink, Store],
) -> None:
    """An entry that upserts 1-3 and deletes 2 (and a key it never wrote, 9): 2 is deleted —
    soft: its row kept with its values and _dcl_deleted_at; hard: gone — and 9 is a
    tombstone, not a live row."""
    sink, store = store_sink
    await sink.write([with_deletes(named(f"crm_{RUN_1}_1", [1, 2, 3]), [{"id": 2}, {"id": 9}])])
    assert await live(store) == [1, 3]
    rows = {r["id"]: r for r in await store.rows()}
    if hard(sink):
        assert set(rows) == {1, 3}
        tombs = await store.query("SELECT key, version FROM _dcl_tombstones ORDER BY key")
        assert [t["version"] for t in tombs] == [version(RUN_1, 1)] * 2
    else:
        assert rows[2]["name"] == "v2"  # soft: the data stays
        assert isinstance(rows[2]["_dcl_deleted_at"], dt.datetime)
        assert rows[9]["name"] is None
        assert rows[9]["_dcl_version"] == version(RUN_1, 1)
    assert await sink.count_rows() == {"crm__contacts": 2}


async def test_a_newer_upsert_brings_a_deleted_row_back_and_an_older_one_never(
    store_sink: tuple[Sink, Store],
) -> None:
    """Deleted by run 2: an older batch (run 1, delivered late) leaves it deleted, also for a
    key the store had never seen; a batch of run 3 makes it live again."""
    sink, store = store_sink
    await sink.write([named(f"crm_{RUN_2}_1", [1, 2])])
    await sink.write([deletes_only(f"crm_{RUN_2}_2", [1, 7])])
    await sink.write([named(f"crm_{RUN_1}_5", [1, 2, 7], name="old")])
    assert await live(store) == [2]
    assert {r["id"]: r["name"] for r in await store.rows() if r["id"] == 2} == {2: "v2"}
    await sink.write([named(f"crm_{RUN_3}_1", [1], name="new")])
    assert await live(store) == [1, 2]
    assert [r["name"] for r in await store.rows() if r["id"] == 1] == ["new1"]


async def test_a_delete_older_than_the_row_leaves_it(store_sink: tuple[Sink, Store]) -> None:
    """A delete from an earlier run, delivered after a newer upsert of the key: no effect."""
    sink, store = store_sink
    await sink.write([named(f"crm_{RUN_2}_1", [1])])
    await sink.write([deletes_only(f"crm_{RUN_1}_3", [1])])
    assert await live(store) == [1]


async def test_within_one_write_versions_order_upserts_and_deletes(
    store_sink: tuple[Sink, Store],
) -> None:
    """One write of three batches: 1 upserted, deleted, upserted again (live, the last
    values); 2 upserted by a later chunk and deleted by an earlier one (live); 3 deleted by
    the last chunk (deleted)."""
    sink, store = store_sink
    await sink.write(
        [
            named(f"crm_{RUN_1}_1", [1, 3]),
            with_deletes(named(f"crm_{RUN_1}_2", []), [{"id": 1}, {"id": 2}]),
            named(f"crm_{RUN_1}_3", [1, 2], name="again"),
            deletes_only(f"crm_{RUN_1}_4", [3]),
        ]
    )
    assert await live(store) == [1, 2]
    assert [r["name"] for r in await store.rows() if r["id"] == 1] == ["again1"]


async def test_a_delete_for_a_table_the_store_lacks_keeps_its_key(
    store_sink: tuple[Sink, Store],
) -> None:
    """The deletes arrive before the run that created the rows (reordered delivery): the
    older rows never appear; soft keeps a row of only the key, hard a tombstone."""
    sink, store = store_sink
    await sink.write([deletes_only(f"crm_{RUN_2}_1", [1])])
    await sink.write([named(f"crm_{RUN_1}_1", [1, 2])])
    assert await live(store) == [2]


# --- full refresh -----------------------------------------------------------------------------


async def seed(sink: Sink) -> None:
    """Run 1 wrote 1-4; 4 was deleted since."""
    await sink.write([named(f"crm_{RUN_1}_1", [1, 2, 3, 4])])
    await sink.write([deletes_only(f"crm_{RUN_1}_2", [4])])


async def test_a_complete_run_deletes_the_rows_it_did_not_write(
    store_sink: tuple[Sink, Store],
) -> None:
    """Run 2 reads the table in full (chunks 1-2: keys 1, 2, 5) and ends with its marker: 3,
    which the run did not write, is deleted; 4 stays deleted as it was."""
    sink, store = store_sink
    await seed(sink)
    before = await store.rows()
    await sink.write([named(f"crm_{RUN_2}_1", [1, 2]), named(f"crm_{RUN_2}_2", [5])])
    await sink.write([marker(RUN_2, 1, 2)])
    assert await live(store) == [1, 2, 5]
    if not hard(sink):
        deleted_at = {r["id"]: r["_dcl_deleted_at"] for r in await store.rows()}
        assert deleted_at[4] == {r["id"]: r["_dcl_deleted_at"] for r in before}[4]
        assert deleted_at[3] is not None
    pending = await store.query("SELECT * FROM _dcl_refresh_pending")
    assert pending == []


async def test_a_marker_before_a_late_chunk_waits_for_it(store_sink: tuple[Sink, Store]) -> None:
    """The marker is processed while chunk 2 of its run is still in flight: nothing is deleted
    and the marker is kept pending; the write of chunk 2 completes the run and reconciles."""
    sink, store = store_sink
    await seed(sink)
    await sink.write([named(f"crm_{RUN_2}_1", [1])])
    await sink.write([marker(RUN_2, 1, 2)])
    assert await live(store) == [1, 2, 3]
    assert len(await store.query("SELECT * FROM _dcl_refresh_pending")) == 1
    await sink.write([named(f"crm_{RUN_1}_9", [6], name="older")])  # no chunk of the run
    assert await live(store) == [1, 2, 3, 6]
    await sink.write([named(f"crm_{RUN_2}_2", [2])])
    assert await live(store) == [1, 2]
    assert await store.query("SELECT * FROM _dcl_refresh_pending") == []


async def test_two_markers_of_one_run_reconcile_once(store_sink: tuple[Sink, Store]) -> None:
    """The run's marker, and a second one (a run resumed after its marker covers it): the
    second deletes nothing more, not even a row written between them by a newer run."""
    sink, store = store_sink
    await seed(sink)
    await sink.write([named(f"crm_{RUN_2}_1", [1])])
    await sink.write([marker(RUN_2, 1, 1)])
    assert await live(store) == [1]
    await sink.write([named(f"crm_{RUN_3}_1", [8])])
    second = marker(RUN_2, 1, 2)  # chunks 1 and the first marker (crm_RUN_2_2)
    await sink.write([second])
    assert await live(store) == [1, 8]


async def test_an_older_runs_marker_never_deletes_a_newer_runs_rows(
    store_sink: tuple[Sink, Store],
) -> None:
    """Run 3's rows land before run 2's marker is processed: run 2 reconciles only what is
    older than itself."""
    sink, store = store_sink
    await seed(sink)
    await sink.write([named(f"crm_{RUN_2}_1", [1])])
    await sink.write([named(f"crm_{RUN_3}_1", [7, 3])])
    await sink.write([marker(RUN_2, 1, 1)])
    assert await live(store) == [1, 3, 7]


async def test_a_batch_older_than_the_last_refresh_is_skipped(
    store_sink: tuple[Sink, Store],
) -> None:
    """After run 2 reconciled, a chunk of run 1 delivered late (a dead worker's entry) cannot
    bring back its rows, also not keys the table never had: at run 2's start they were gone.
    It is applied (in the inbox), just skipped."""
    sink, store = store_sink
    await seed(sink)
    await sink.write([named(f"crm_{RUN_2}_1", [1]), marker(RUN_2, 1, 1)])
    assert await live(store) == [1]
    late = named(f"crm_{RUN_1}_7", [2, 9], name="late")
    assert await sink.write([late]) == set()
    assert await live(store) == [1]
    assert late.batch_id in await store.inbox()


async def test_a_run_that_never_completes_never_reconciles(
    store_sink: tuple[Sink, Store],
) -> None:
    """Chunk 2 of run 2 never arrives (dead-lettered): its marker stays pending, nothing is
    deleted, and a newer complete run's reconciliation drops it."""
    sink, store = store_sink
    await seed(sink)
    await sink.write([named(f"crm_{RUN_2}_1", [1]), named(f"crm_{RUN_2}_3", [2])])
    await sink.write([marker(RUN_2, 1, 3)])
    assert await live(store) == [1, 2, 3]
    await sink.write([named(f"crm_{RUN_3}_1", [3]), marker(RUN_3, 1, 1)])
    assert await live(store) == [3]
    assert await store.query("SELECT * FROM _dcl_refresh_pending") == []


async def test_a_marker_never_creates_or_alters_a_table(store_sink: tuple[Sink, Store]) -> None:
    """A marker for a table the store lacks creates none; one for a stored table leaves its
    columns as they are."""
    sink, store = store_sink
    await sink.write([marker(RUN_1, 1, 0, table="ghost")])
    assert not await table_exists(store, "crm__ghost")
    await sink.write([named(f"crm_{RUN_2}_1", [1])])
    columns = await store.column_types()
    await sink.write([marker(RUN_2, 1, 1)])
    assert await store.column_types() == columns


async def test_an_empty_run_deletes_every_older_row(store_sink: tuple[Sink, Store]) -> None:
    """A full read that found no rows (a marker of 0 chunks): every row is deleted."""
    sink, store = store_sink
    await seed(sink)
    await sink.write([marker(RUN_2, 1, 0)])
    assert await live(store) == []


async def test_postgres_marker_and_last_chunk_written_at_once_by_two_workers(
    pg_dsn: str,
) -> None:
    """Two workers (two sink instances) write a run's marker and its last chunk at the same
    moment, many times over: the run is reconciled every time (neither write may miss the
    other's uncommitted rows)."""
    schema = f"s_{uuid.uuid4().hex[:10]}"
    a = PostgresSink(f"{pg_dsn}?schema={schema}", TENANT)
    b = PostgresSink(f"{pg_dsn}?schema={schema}", TENANT)
    await a.open()
    await b.open()
    try:
        store = Store(a, pg_dsn)
        for n in range(10):
            run = RUN_1 + n * 1000
            stale = 100 + n
            await a.write([named(f"crm_{run - 1}_1", [stale])])
            await a.write([named(f"crm_{run}_1", [n])])
            await asyncio.gather(
                a.write([marker(run, 1, 2)]), b.write([named(f"crm_{run}_2", [1000 + n])])
            )
            assert stale not in await live(store), n
    finally:
        await a.close()
        await b.close()
