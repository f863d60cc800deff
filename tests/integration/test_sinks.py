"""The sink contract, run against every sink (a real DuckDB file, a real PostgreSQL schema,
null://), then what the SQL stores store, run against each store (``@stores_only``).

Each test gets a fresh sink: a new DuckDB file, a new schema in the run's database, or a new
null sink. The contract tests see a sink only through write(), its errors and count_rows().
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
import orjson
import pytest

from aam_dcl.errors import ConfigError, PoisonBatch, SinkDataError, SinkUnavailable
from aam_dcl.messages import Batch, Column, Record, TableBatch, TableSchema
from aam_dcl.schema import table_batch
from dcl_worker.sinks._sql import DEFAULT_MAX_COLUMNS
from dcl_worker.sinks.duckdb import DuckDBSink
from dcl_worker.sinks.null import NullSink
from dcl_worker.sinks.postgres import PostgresSink, parse_postgres_url
from dcl_worker.sinks.registry import create_sink
from tests.integration.conftest import wait_until

TENANT = "acme"
UTC = dt.UTC

Sink = DuckDBSink | PostgresSink  # a store: what it wrote can be read back
AnySink = Sink | NullSink
SQL_STORES = ["duckdb", "postgres"]
EXACT_NUMERIC = {"numeric", "decimal(38,9)"}  # information_schema's data_type of numeric
# For a test that reads the store back (rows, types, inbox): null:// stores nothing.
stores_only = pytest.mark.parametrize("sink", SQL_STORES, indirect=True)


def batch(
    batch_id: str,
    records: list[Record] | None,
    *,
    table: str = "contacts",
    primary_key: list[str] | None = None,
    columns: list[tuple[str, str]] | None = None,
    connector: str = "crm",
) -> Batch:
    """One batch of one table; the schema is inferred from records unless ``columns`` is given."""
    pk = ["id"] if primary_key is None else primary_key
    if columns is None:
        tb = table_batch(table, records or [], primary_key=pk, max_samples=2)
        tb.records = records
    else:
        schema = TableSchema([Column(n, t) for n, t in columns], pk)
        tb = TableBatch(table, schema, [], len(records or []), records)
    return Batch(batch_id, connector, f"{connector}-001", [tb], tenant_id=TENANT)


class Store:
    """Reads what a sink wrote, through the store's own client."""

    def __init__(self, sink: Sink, pg_dsn: str | None) -> None:
        self.sink = sink
        self.pg_dsn = pg_dsn

    async def query(self, sql: str) -> list[dict[str, Any]]:
        if isinstance(self.sink, PostgresSink):
            con = await asyncpg.connect(self.pg_dsn)
            try:
                await con.execute(f'SET search_path TO "{self.sink.schema}"')
                return [dict(r) for r in await con.fetch(sql)]
            finally:
                await con.close()

        def run() -> list[dict[str, Any]]:
            with duckdb.connect(self.sink.path) as con:  # shares the sink's database instance
                con.execute(f"SET schema = '{self.sink.schema}'")
                cur = con.execute(sql)
                names = [d[0] for d in cur.description or []]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

        return await asyncio.to_thread(run)

    async def rows(self, table: str = "crm__contacts", order: str = "id") -> list[dict[str, Any]]:
        return await self.query(f'SELECT * FROM "{table}" ORDER BY {order}')

    async def column_types(self, table: str = "crm__contacts") -> dict[str, str]:
        rows = await self.query(
            "SELECT column_name, data_type FROM information_schema.columns "
            f"WHERE table_name = '{table}' AND table_schema = current_schema()"
        )
        return {r["column_name"]: r["data_type"].lower() for r in rows}

    async def inbox(self) -> dict[str, dict[str, Any]]:
        return {r["batch_id"]: r for r in await self.query("SELECT * FROM _dcl_inbox")}


def new_postgres_sink(pg_dsn: str, schema: str) -> PostgresSink:
    return PostgresSink(f"{pg_dsn}?schema={schema}", TENANT)


@pytest.fixture(params=[*SQL_STORES, "null"])
async def sink(
    request: pytest.FixtureRequest, tmp_path: Path, pg_dsn: str
) -> AsyncIterator[AnySink]:
    """An opened sink on a fresh store (new file / new schema / new null sink); each test runs
    against each kind, the ones marked ``@stores_only`` against the SQL stores."""
    created: AnySink
    if request.param == "duckdb":
        created = DuckDBSink(f"duckdb://{tmp_path / 'dcl.duckdb'}", TENANT)
    elif request.param == "postgres":
        created = new_postgres_sink(pg_dsn, f"s_{uuid.uuid4().hex[:10]}")
    else:
        created = NullSink("null://", TENANT)
    await created.open()
    yield created
    await created.close()


@pytest.fixture
def store(sink: AnySink, pg_dsn: str) -> Store:
    assert not isinstance(sink, NullSink), "null:// stores nothing: mark the test @stores_only"
    return Store(sink, pg_dsn if isinstance(sink, PostgresSink) else None)


def as_json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


# --- the contract: every sink, null:// included ---------------------------------------------


async def test_new_batches_are_applied_once_and_counted(sink: AnySink) -> None:
    """A fresh sink counts nothing; a write of new batches returns no duplicates and
    count_rows() counts their records; an empty write does nothing."""
    assert await sink.count_rows() == {}
    assert await sink.write([]) == set()
    records = [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Grace"}]
    assert await sink.write([batch("crm_1_1", records)]) == set()
    assert await sink.count_rows() == {"crm__contacts": 2}


async def test_rewrite_returns_the_ids_already_applied_and_applies_them_never_again(
    sink: AnySink,
) -> None:
    """write() returns the ids already in the inbox and skips them (even with new content);
    the other batches of that write apply; the same write again changes no count."""
    first = batch("crm_1_1", [{"id": 1, "name": "Ada"}], primary_key=[])
    changed = batch("crm_1_1", [{"id": 1, "name": "CHANGED"}, {"id": 9}], primary_key=[])
    other = batch("crm_1_2", [{"id": 2, "name": "Grace"}], primary_key=[])
    assert await sink.write([first]) == set()
    assert await sink.write([changed, other]) == {"crm_1_1"}
    for _ in range(2):
        assert await sink.write([first, changed, other]) == {"crm_1_1", "crm_1_2"}
    assert await sink.count_rows() == {"crm__contacts": 2}


async def test_same_id_twice_in_one_write_is_applied_once(sink: AnySink) -> None:
    """Within one call a repeated batch id is applied once and not reported as a duplicate."""
    first = batch("crm_1_1", [{"id": 1, "name": "Ada"}], primary_key=[])
    assert await sink.write([first, first]) == set()
    assert await sink.count_rows() == {"crm__contacts": 1}


async def test_table_without_primary_key_appends(sink: AnySink) -> None:
    """Without a primary key every record is appended, repeats included."""
    records = [{"id": 1, "event": "open"}, {"id": 1, "event": "open"}]
    await sink.write([batch("crm_1_1", records, primary_key=[], table="events")])
    await sink.write([batch("crm_1_2", records, primary_key=[], table="events")])
    assert await sink.count_rows() == {"crm__events": 4}


async def test_tables_are_named_connector__table_and_kept_apart(sink: AnySink) -> None:
    """One batch may carry several tables; each connector's tables are separate store tables."""
    two = batch("crm_1_1", [{"id": 1}])
    two.tables.append(
        table_batch("deals", [{"id": 7, "amount": 1.5}], primary_key=["id"], max_samples=1)
    )
    await sink.write([two, batch("erp_1_1", [{"id": 1}], connector="erp")])
    assert await sink.count_rows() == {"crm__contacts": 1, "crm__deals": 1, "erp__contacts": 1}


async def test_schema_only_table_counts_no_rows(sink: AnySink) -> None:
    """A table without records is a table of 0 rows, and its batch is applied."""
    columns = [("id", "integer"), ("amount", "numeric")]
    b = batch("crm_1_1", None, table="deals", columns=columns)
    assert await sink.write([b]) == set()
    assert await sink.count_rows() == {"crm__deals": 0}
    assert await sink.write([b]) == {"crm_1_1"}


async def test_primary_key_missing_from_schema_is_a_data_error(sink: AnySink) -> None:
    """A schema whose primary key names no column is rejected before anything is written."""
    b = batch("crm_1_1", [{"name": "x"}], columns=[("name", "string")], primary_key=["id"])
    with pytest.raises(SinkDataError, match="primary key column 'id'"):
        await sink.write([b])


def unstorable(kind: str) -> Batch:
    """Batch crm_1_2, which no store can ever take (next to crm__contacts)."""
    if kind == "too-many-columns":
        columns = [("id", "integer")] + [(f"c{i}", "integer") for i in range(DEFAULT_MAX_COLUMNS)]
        return batch("crm_1_2", [{"id": 2}], columns=columns)
    if kind == "column-case":
        return batch("crm_1_2", [{"id": 2, "Name": "a", "name": "b"}])
    if kind == "table-case":
        return batch("crm_1_2", [{"id": 2}], table="Contacts")
    return batch("crm_1_2", [{"id": 2}], table="bad\x00table")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("too-many-columns", "too_many_columns"),
        ("column-case", "name_collision"),
        ("table-case", "name_collision"),
        ("bad-name", "sink_rejected"),
    ],
)
async def test_a_batch_no_store_can_take_fails_its_write_and_the_others_then_apply(
    sink: AnySink, kind: str, reason: str
) -> None:
    """PoisonBatch (dead-lettered at once) for too many columns or two spellings of one name,
    SinkDataError for a name that cannot be an identifier: the error names the batch, nothing
    of its write is applied, and the write's other batches then apply alone."""
    good = [batch("crm_1_1", [{"id": 1}]), batch("crm_1_3", [{"id": 3}])]
    with pytest.raises(SinkDataError) as info:
        await sink.write([good[0], unstorable(kind), good[1]])
    assert info.value.reason == reason
    assert isinstance(info.value, PoisonBatch) == (reason != "sink_rejected")
    assert "crm_1_2" in str(info.value)
    assert await sink.count_rows() == {}
    assert await sink.write(good) == set()
    assert await sink.count_rows() == {"crm__contacts": 2}


async def test_what_a_stored_table_cannot_take_is_poison(sink: AnySink) -> None:
    """Against a table already written: another spelling of its name or of a column's, or
    columns past DCL_MAX_COLUMNS in all, is PoisonBatch naming the batch; the table stays."""
    await sink.write([batch("crm_1_1", [{"id": 1, "name": "Ada"}])])
    wider = [("id", "integer")] + [(f"c{i}", "integer") for i in range(DEFAULT_MAX_COLUMNS - 1)]
    for bad, reason in [
        (batch("crm_1_2", [{"id": 2}], table="Contacts"), "name_collision"),
        (batch("crm_1_3", [{"id": 3, "Name": "x"}]), "name_collision"),
        (batch("crm_1_4", [{"id": 4}], columns=wider), "too_many_columns"),
    ]:
        with pytest.raises(PoisonBatch) as info:
            await sink.write([bad])
        assert (info.value.reason, info.value.batch_id) == (reason, bad.batch_id)
    assert await sink.count_rows() == {"crm__contacts": 1}


@pytest.mark.parametrize("yields", [0, 1, 4, 16, 64, 256, 1024, 4096])
async def test_a_cancelled_write_is_not_wrapped_and_its_retry_applies_once(
    sink: AnySink, yields: int
) -> None:
    """A write cancelled at any point (after ``yields`` turns of the event loop) ends as
    cancelled, never as a sink error; the sink stays usable, and the retried batch is applied
    exactly once (the cancelled write either applied all of it or nothing)."""
    b = batch("crm_1_1", [{"id": i, "name": f"n{i}"} for i in range(300)])
    write = asyncio.create_task(sink.write([b]))
    for _ in range(yields):
        await asyncio.sleep(0)
    write.cancel()
    await asyncio.wait({write})
    assert write.cancelled() or write.result() == set()
    assert await sink.write([b]) in (set(), {"crm_1_1"})
    assert await sink.count_rows() == {"crm__contacts": 300}


# --- exactly once, in the store ----------------------------------------------------------


@stores_only
async def test_write_applies_batch_and_records_it_in_inbox(sink: Sink, store: Store) -> None:
    """A new batch's rows land and its inbox row carries tenant, connector and record count."""
    records = [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Grace"}]
    assert await sink.write([batch("crm_1_1", records)]) == set()

    assert [(r["id"], r["name"]) for r in await store.rows()] == [(1, "Ada"), (2, "Grace")]
    assert {r["_dcl_batch_id"] for r in await store.rows()} == {"crm_1_1"}
    inbox = await store.inbox()
    assert inbox["crm_1_1"]["tenant"] == TENANT
    assert inbox["crm_1_1"]["connector"] == "crm"
    assert inbox["crm_1_1"]["record_count"] == 2
    assert isinstance(inbox["crm_1_1"]["applied_at"], dt.datetime)
    assert await sink.count_rows() == {"crm__contacts": 2}
    # Every row says when it was written (a server default on PostgreSQL's direct COPY path).
    assert all(isinstance(r["_dcl_ingested_at"], dt.datetime) for r in await store.rows())


@stores_only
async def test_rewrite_reports_duplicates_and_changes_nothing(sink: Sink, store: Store) -> None:
    """A batch id already in the inbox is skipped entirely (even with new content) and returned."""
    await sink.write([batch("crm_1_1", [{"id": 1, "name": "Ada"}], primary_key=[])])
    changed = batch("crm_1_1", [{"id": 1, "name": "CHANGED"}, {"id": 9, "name": "new"}])
    other = batch("crm_1_2", [{"id": 2, "name": "Grace"}], primary_key=[])

    assert await sink.write([changed, other]) == {"crm_1_1"}
    assert await sink.write([changed, other]) == {"crm_1_1", "crm_1_2"}

    assert [(r["id"], r["name"]) for r in await store.rows()] == [(1, "Ada"), (2, "Grace")]
    assert set(await store.inbox()) == {"crm_1_1", "crm_1_2"}


# --- upserts and appends ------------------------------------------------------------------


@stores_only
async def test_upsert_last_write_wins_within_one_write(sink: Sink, store: Store) -> None:
    """Several updates of one key in one write (in one batch and across batches): the last wins."""
    b1 = batch(
        "crm_1_1", [{"id": 1, "name": "a1"}, {"id": 2, "name": "b1"}, {"id": 1, "name": "a2"}]
    )
    b2 = batch(
        "crm_1_2", [{"id": 2, "name": "b2"}, {"id": 1, "name": "a3"}, {"id": 2, "name": "b3"}]
    )
    await sink.write([b1, b2])

    rows = await store.rows()
    assert [(r["id"], r["name"], r["_dcl_batch_id"]) for r in rows] == [
        (1, "a3", "crm_1_2"),
        (2, "b3", "crm_1_2"),
    ]


@stores_only
async def test_upsert_last_write_wins_across_writes(sink: Sink, store: Store) -> None:
    """A later write updates an existing key in place; other keys are untouched."""
    await sink.write([batch("crm_1_1", [{"id": 1, "name": "old"}, {"id": 2, "name": "keep"}])])
    await sink.write([batch("crm_1_2", [{"id": 1, "name": "new"}])])

    rows = await store.rows()
    assert [(r["id"], r["name"], r["_dcl_batch_id"]) for r in rows] == [
        (1, "new", "crm_1_2"),
        (2, "keep", "crm_1_1"),
    ]


@stores_only
async def test_composite_primary_key_upserts(sink: Sink, store: Store) -> None:
    """A primary key of two columns dedupes on the pair."""
    pk = ["org", "id"]
    await sink.write([batch("crm_1_1", [{"org": "a", "id": 1, "v": 1}], primary_key=pk)])
    await sink.write(
        [
            batch(
                "crm_1_2",
                [{"org": "a", "id": 1, "v": 2}, {"org": "b", "id": 1, "v": 3}],
                primary_key=pk,
            )
        ]
    )
    rows = await store.rows(order="org, id")
    assert [(r["org"], r["id"], r["v"]) for r in rows] == [("a", 1, 2), ("b", 1, 3)]


# --- row versions: the producer's order, not arrival order ----------------------------------

RUN_1, RUN_2 = 1_700_000_000_000, 1_700_000_600_000  # two sync runs' run_start_ms


def version(run_start_ms: int, chunk: int) -> int:
    return run_start_ms * 1_000_000 + chunk


def summary(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["id"], r["name"], r["_dcl_batch_id"], r["_dcl_version"]) for r in rows]


@stores_only
async def test_older_batch_written_after_a_newer_one_keeps_the_newer_rows(
    sink: Sink, store: Store
) -> None:
    """A stale batch from an earlier run (a dead worker's pending entry) applied after the
    next run's batch leaves the rows that batch wrote alone, and still adds its other keys."""
    newer = batch(f"crm_{RUN_2}_1", [{"id": 1, "name": "v2"}, {"id": 2, "name": "v2"}])
    older = batch(
        f"crm_{RUN_1}_5",
        [{"id": 1, "name": "v1"}, {"id": 2, "name": "v1"}, {"id": 3, "name": "v1"}],
    )
    assert await sink.write([newer]) == set()
    assert await sink.write([older]) == set()  # applied (in the inbox), just not newer

    assert summary(await store.rows()) == [
        (1, "v2", f"crm_{RUN_2}_1", version(RUN_2, 1)),
        (2, "v2", f"crm_{RUN_2}_1", version(RUN_2, 1)),
        (3, "v1", f"crm_{RUN_1}_5", version(RUN_1, 5)),
    ]
    assert set(await store.inbox()) == {f"crm_{RUN_2}_1", f"crm_{RUN_1}_5"}

    # A later chunk of the newer run still updates, whatever it arrives after.
    await sink.write([batch(f"crm_{RUN_2}_2", [{"id": 1, "name": "v2.2"}])])
    assert [(r["id"], r["name"]) for r in await store.rows()] == [(1, "v2.2"), (2, "v2"), (3, "v1")]


@stores_only
async def test_older_batch_later_in_the_same_write_does_not_win(sink: Sink, store: Store) -> None:
    """Within one write a key keeps the highest version first, stream order second."""
    newer = batch(f"crm_{RUN_2}_1", [{"id": 1, "name": "v2"}, {"id": 1, "name": "v2-last"}])
    older = batch(f"crm_{RUN_1}_9", [{"id": 1, "name": "v1"}, {"id": 2, "name": "v1"}])
    await sink.write([newer, older])

    assert summary(await store.rows()) == [
        (1, "v2-last", f"crm_{RUN_2}_1", version(RUN_2, 1)),
        (2, "v1", f"crm_{RUN_1}_9", version(RUN_1, 9)),
    ]


@stores_only
async def test_resent_copy_with_an_equal_version_is_idempotent(sink: Sink, store: Store) -> None:
    """A batch applied again (its inbox row lost) rewrites the same values: nothing changes but
    the ingestion time; equal versions replace, so the same row is never rejected as stale."""
    b = batch(f"crm_{RUN_1}_1", [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Grace"}])
    await sink.write([b])
    before = summary(await store.rows())
    await store.query("DELETE FROM _dcl_inbox")

    assert await sink.write([b]) == set()
    assert summary(await store.rows()) == before
    assert await sink.count_rows() == {"crm__contacts": 2}

    # The same position in the producer's order under another id: the later write applies.
    copy = batch(f"resent_{RUN_1}_1", [{"id": 1, "name": "Ada (copy)"}])
    await sink.write([copy])
    assert summary(await store.rows())[0] == (1, "Ada (copy)", copy.batch_id, version(RUN_1, 1))


@stores_only
async def test_ids_of_another_format_are_version_0(sink: Sink, store: Store) -> None:
    """Another producer's ids (no run and chunk to read) write version 0: last write wins
    among them, and they never replace a row a versioned batch wrote."""
    await sink.write([batch("manual-load", [{"id": 1, "name": "m1"}, {"id": 2, "name": "m1"}])])
    await sink.write([batch("manual-load-2", [{"id": 1, "name": "m2"}])])
    assert summary(await store.rows()) == [
        (1, "m2", "manual-load-2", 0),
        (2, "m1", "manual-load", 0),
    ]

    await sink.write([batch(f"crm_{RUN_1}_1", [{"id": 2, "name": "v1"}])])
    await sink.write([batch("crm_x_y", [{"id": 1, "name": "m3"}, {"id": 2, "name": "m3"}])])
    assert summary(await store.rows()) == [
        (1, "m3", "crm_x_y", 0),
        (2, "v1", f"crm_{RUN_1}_1", version(RUN_1, 1)),
    ]


@stores_only
async def test_appended_rows_carry_their_batch_version(sink: Sink, store: Store) -> None:
    """Without a primary key nothing is compared: every row is appended with its version."""
    await sink.write([batch(f"crm_{RUN_2}_1", [{"id": 1}], primary_key=[], table="events")])
    await sink.write([batch(f"crm_{RUN_1}_1", [{"id": 1}], primary_key=[], table="events")])
    rows = await store.rows(table="crm__events", order="_dcl_version")
    assert [r["_dcl_version"] for r in rows] == [version(RUN_1, 1), version(RUN_2, 1)]


@stores_only
async def test_key_column_widened_keeps_versions(sink: Sink, store: Store) -> None:
    """Widening a key column (DuckDB rebuilds the table) keeps the stored versions: an older
    batch that forces the widening still cannot replace the newer row."""
    await sink.write([batch(f"crm_{RUN_2}_1", [{"id": 1, "name": "v2"}])])
    await sink.write(
        [batch(f"crm_{RUN_1}_1", [{"id": "1", "name": "v1"}, {"id": "x", "name": "v1"}])]
    )
    assert summary(await store.rows()) == [
        ("1", "v2", f"crm_{RUN_2}_1", version(RUN_2, 1)),
        ("x", "v1", f"crm_{RUN_1}_1", version(RUN_1, 1)),
    ]


@stores_only
@pytest.mark.parametrize("key", [1, "1"], ids=["same-key-type", "key-widened"])
async def test_table_from_before_row_versions_gets_the_column(
    sink: Sink, store: Store, key: int | str
) -> None:
    """A data table created without _dcl_version gets it on first use (also when the first
    write widens the key, which DuckDB does by rebuilding); its rows read 0, so any versioned
    batch updates them."""
    await store.query(
        "CREATE TABLE crm__contacts (id bigint PRIMARY KEY, name text, "
        "_dcl_batch_id text, _dcl_ingested_at timestamptz)"
    )
    await store.query(
        "INSERT INTO crm__contacts VALUES (1, 'old', 'b1', now()), (2, 'old', 'b1', now())"
    )
    await sink.write([batch(f"crm_{RUN_1}_1", [{"id": key, "name": "v1"}])])
    assert summary(await store.rows()) == [
        (key, "v1", f"crm_{RUN_1}_1", version(RUN_1, 1)),
        (type(key)(2), "old", "b1", 0),
    ]
    assert (await store.column_types())["_dcl_version"] == "bigint"


# --- schema evolution ---------------------------------------------------------------------


@stores_only
async def test_new_column_is_added_and_old_rows_get_null(sink: Sink, store: Store) -> None:
    """A column that appears in a later batch is added to the table; earlier rows read NULL."""
    await sink.write([batch("crm_1_1", [{"id": 1, "name": "Ada"}])])
    await sink.write([batch("crm_1_2", [{"id": 2, "name": "Grace", "email": "g@x.org"}])])

    rows = await store.rows()
    assert [(r["id"], r["email"]) for r in rows] == [(1, None), (2, "g@x.org")]


@stores_only
async def test_record_field_missing_from_schema_is_kept(sink: Sink, store: Store) -> None:
    """A field the schema does not declare (another producer's entry) is kept, type inferred."""
    b = batch("crm_1_1", [{"id": 1, "name": "Ada", "score": 7}], columns=[("id", "integer")])
    await sink.write([b])
    rows = await store.rows()
    assert (rows[0]["name"], rows[0]["score"]) == ("Ada", 7)


@stores_only
async def test_type_widens_integer_to_numeric_to_string(sink: Sink, store: Store) -> None:
    """integer -> numeric -> string as later batches need it; no write fails on the change."""
    await sink.write([batch("crm_1_1", [{"id": 1, "amount": 5}])])
    assert (await store.column_types())["amount"] == "bigint"

    await sink.write([batch("crm_1_2", [{"id": 2, "amount": 5.5}])])
    assert (await store.column_types())["amount"] in EXACT_NUMERIC

    await sink.write([batch("crm_1_3", [{"id": 3, "amount": "n/a"}])])
    assert (await store.column_types())["amount"] in {"text", "varchar"}

    rows = await store.rows()
    assert float(rows[0]["amount"]) == 5.0
    assert [r["amount"] for r in rows[1:]] == ["5.5", "n/a"]


@stores_only
async def test_narrower_incoming_type_is_stored_without_change(sink: Sink, store: Store) -> None:
    """An integer into a numeric column, a date into a datetime column: cast, table unchanged."""
    await sink.write([batch("crm_1_1", [{"id": 1, "amount": 1.5, "at": "2024-05-01T10:00:00Z"}])])
    await sink.write([batch("crm_1_2", [{"id": 2, "amount": 2, "at": "2024-05-02"}])])
    types = await store.column_types()
    assert types["amount"] in EXACT_NUMERIC
    assert types["at"] == "timestamp with time zone"
    rows = await store.rows()
    assert rows[1]["amount"] == 2.0
    assert rows[1]["at"] == dt.datetime(2024, 5, 2, tzinfo=UTC)


@stores_only
async def test_primary_key_column_widens_integer_to_string(sink: Sink, store: Store) -> None:
    """A key column that turns from integer ids to string ids is widened and still upserts."""
    await sink.write([batch("crm_1_1", [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])])
    await sink.write([batch("crm_1_2", [{"id": "2", "name": "b2"}, {"id": "x-3", "name": "c"}])])

    rows = await store.rows()
    assert [(r["id"], r["name"]) for r in rows] == [("1", "a"), ("2", "b2"), ("x-3", "c")]


@stores_only
async def test_mixed_values_in_a_string_column_are_stored_as_text(sink: Sink, store: Store) -> None:
    """A string column (mixed values infer as string) takes numbers, booleans, objects as text."""
    records = [
        {"id": 1, "v": "x"},
        {"id": 2, "v": 5},
        {"id": 3, "v": True},
        {"id": 4, "v": {"a": 1}},
    ]
    b = batch("crm_1_1", records)
    assert dict((c.name, c.type) for c in b.tables[0].schema.columns)["v"] == "string"
    await sink.write([b])
    values = [r["v"] for r in await store.rows()]
    assert values[:3] == ["x", "5", "true"]
    assert orjson.loads(values[3]) == {"a": 1}


@stores_only
async def test_schema_only_entry_creates_empty_table(sink: Sink, store: Store) -> None:
    """A table without records creates (or widens) the table and writes no rows."""
    cols = [("id", "integer"), ("amount", "numeric"), ("closed_at", "datetime")]
    await sink.write([batch("crm_1_1", None, table="deals", columns=cols)])

    assert await sink.count_rows() == {"crm__deals": 0}
    types = await store.column_types("crm__deals")
    assert types["amount"] in EXACT_NUMERIC
    assert types["closed_at"] == "timestamp with time zone"
    assert "crm_1_1" in await store.inbox()


# --- value round trips --------------------------------------------------------------------


@stores_only
async def test_json_column_round_trips(sink: Sink, store: Store) -> None:
    """Objects and arrays are stored as JSON (jsonb / JSON) and read back equal."""
    doc = {"tags": ["vip", "eu"], "address": {"city": "Zürich", "zip": "8001"}, "n": 1.5}
    await sink.write(
        [batch("crm_1_1", [{"id": 1, "meta": doc}, {"id": 2, "meta": [1, None, True]}])]
    )

    types = await store.column_types()
    assert types["meta"] in {"jsonb", "json"}
    rows = await store.rows()
    assert as_json(rows[0]["meta"]) == doc
    assert as_json(rows[1]["meta"]) == [1, None, True]


@stores_only
async def test_datetimes_with_z_or_offset_are_stored_as_timestamptz(
    sink: Sink, store: Store
) -> None:
    """'Z', '+02:00' and naive (read as UTC) datetimes are one instant; dates are dates."""
    records = [
        {"id": 1, "at": "2024-05-01T10:00:00Z", "day": "2024-05-01"},
        {"id": 2, "at": "2024-05-01T12:00:00+02:00", "day": "2024-12-31"},
        {"id": 3, "at": "2024-05-01T10:00:00.250", "day": None},
    ]
    await sink.write([batch("crm_1_1", records)])

    types = await store.column_types()
    assert types["at"] == "timestamp with time zone"
    assert types["day"] == "date"
    rows = await store.rows()
    instant = dt.datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert [r["at"] for r in rows] == [instant, instant, instant + dt.timedelta(milliseconds=250)]
    assert [r["day"] for r in rows] == [dt.date(2024, 5, 1), dt.date(2024, 12, 31), None]


@stores_only
async def test_odd_but_valid_identifiers_are_quoted(sink: Sink, store: Store) -> None:
    """Table and column names with spaces, quotes, SQL keywords and capitals are stored as given."""
    records = [{"id": 1, "select": 1, 'say "hi"': "x", "it's": "y", "Mixed Case": True}]
    await sink.write([batch("crm_1_1", records, table="Weird table; DROP")])
    rows = await store.rows(table="crm__Weird table; DROP")
    assert rows[0]['say "hi"'] == "x"
    assert rows[0]["it's"] == "y"
    assert rows[0]["Mixed Case"] is True


# --- errors -------------------------------------------------------------------------------


@stores_only
@pytest.mark.parametrize(
    ("table", "column", "named"),
    [
        ("bad\x00table", "id", "table"),
        ("t" * 70, "id", "table"),
        ("contacts", "bad\ncolumn", "column"),
        ("contacts", "c" * 64, "column"),
        ("contacts", "_dcl_batch_id", "column"),
    ],
    ids=[
        "nul-in-table",
        "table-too-long",
        "newline-in-column",
        "column-too-long",
        "reserved-column",
    ],
)
async def test_bad_identifier_raises_sink_data_error(
    sink: Sink, store: Store, table: str, column: str, named: str
) -> None:
    """A name that cannot be an identifier is rejected, naming it; nothing is applied."""
    good = batch("crm_1_1", [{"id": 1}])
    bad = batch("crm_1_2", [{"id": 1, column: 1}], table=table, primary_key=[])
    with pytest.raises(SinkDataError, match=f"{named} (name )?") as info:
        await sink.write([good, bad])
    assert "crm_1_2" in str(info.value)
    assert repr(column if named == "column" else f"crm__{table}")[:40] in str(info.value)
    assert await store.inbox() == {}
    assert await sink.write([good]) == set()  # the good batch alone still applies


@stores_only
@pytest.mark.parametrize(
    ("column_type", "value"),
    [("datetime", "not-a-date"), ("date", "2024-13-45"), ("integer", "abc"), ("numeric", "12,5")],
)
async def test_value_the_store_rejects_raises_sink_data_error_and_applies_nothing(
    sink: Sink, store: Store, column_type: str, value: str
) -> None:
    """A value the store cannot take fails the whole write with the column named; no half-write."""
    good = batch("crm_1_1", [{"id": 1, "v": None}], columns=[("id", "integer"), ("v", column_type)])
    bad = batch("crm_1_2", [{"id": 2, "v": value}], columns=[("id", "integer"), ("v", column_type)])
    with pytest.raises(SinkDataError) as info:
        await sink.write([good, bad])
    message = str(info.value)
    assert "crm__contacts" in message
    assert "column v" in message
    assert await store.inbox() == {}
    assert await sink.count_rows() in ({}, {"crm__contacts": 0})
    assert await sink.write([good]) == set()
    assert await sink.count_rows() == {"crm__contacts": 1}


@stores_only
async def test_null_primary_key_is_a_data_error(sink: Sink, store: Store) -> None:
    """A record without its key value is rejected by the store, nothing applied."""
    with pytest.raises(SinkDataError, match="crm__contacts"):
        await sink.write([batch("crm_1_1", [{"id": 1, "n": "a"}, {"id": None, "n": "b"}])])
    assert await store.inbox() == {}


# --- PostgreSQL only ----------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_postgres_unreachable_raises_sink_unavailable() -> None:
    """open() against a closed loopback port raises SinkUnavailable (retriable)."""
    sink = PostgresSink(f"postgresql://postgres@127.0.0.1:{closed_port()}/x", TENANT)
    with pytest.raises(SinkUnavailable, match="cannot connect") as info:
        await sink.open()
    assert info.value.retriable
    with pytest.raises(SinkUnavailable, match="not open"):
        await sink.write([batch("crm_1_1", [{"id": 1}])])


async def test_postgres_connection_lost_mid_write_raises_sink_unavailable(pg_dsn: str) -> None:
    """The server ends the sink's connection inside a write: SinkUnavailable, nothing applied,
    and the retry applies the batch."""
    schema = f"s_{uuid.uuid4().hex[:10]}"
    sink = new_postgres_sink(pg_dsn, schema)
    await sink.open()
    admin = await asyncpg.connect(pg_dsn)
    waiting = (
        "FROM pg_stat_activity WHERE application_name = 'dcl-worker' "
        "AND datname = current_database() AND wait_event_type = 'Lock'"
    )
    try:
        b = batch("crm_1_1", [{"id": 1}])
        async with admin.transaction():  # hold the inbox so the write stops half-way
            await admin.execute(f'LOCK TABLE "{schema}"._dcl_inbox IN ACCESS EXCLUSIVE MODE')
            write = asyncio.create_task(sink.write([b]))

            async def blocked() -> bool:
                return bool(await admin.fetchval(f"SELECT count(*) {waiting}"))

            await wait_until(blocked, 10, "the sink's write to wait on the inbox lock")
            await admin.execute(f"SELECT pg_terminate_backend(pid) {waiting}")
            with pytest.raises(SinkUnavailable):
                await write
        assert await sink.write([b]) == set()
        assert await sink.count_rows() == {"crm__contacts": 1}
    finally:
        await admin.close()
        await sink.close()


async def test_postgres_concurrent_same_batch_from_two_sinks_applies_once(pg_dsn: str) -> None:
    """Two workers (two sink instances) writing one batch at once: rows once, one reports it."""
    schema = f"s_{uuid.uuid4().hex[:10]}"
    first, second = new_postgres_sink(pg_dsn, schema), new_postgres_sink(pg_dsn, schema)
    await first.open()
    await second.open()
    try:
        for n in range(1, 6):
            records = [{"id": i, "name": f"n{i}", "round": n} for i in range(2000)]
            b = batch(f"crm_1_{n}", records, primary_key=[], table="events")
            results = await asyncio.gather(first.write([b]), second.write([b]))
            assert sorted(map(len, results)) == [0, 1], results
            assert await first.count_rows() == {"crm__events": 2000 * n}
    finally:
        await first.close()
        await second.close()


async def test_postgres_sink_with_an_older_view_of_a_widened_table(pg_dsn: str) -> None:
    """Worker B widens a column (integer -> string) that worker A still knows as integer:
    A's next write converts instead of sending int8 into a text column."""
    schema = f"s_{uuid.uuid4().hex[:10]}"
    a, b = new_postgres_sink(pg_dsn, schema), new_postgres_sink(pg_dsn, schema)
    await a.open()
    await b.open()
    try:
        await a.write([batch("crm_1_1", [{"id": 1, "amount": 5}], primary_key=[])])
        await b.write([batch("crm_1_2", [{"id": 2, "amount": "n/a"}], primary_key=[])])
        await a.write([batch("crm_1_3", [{"id": 3, "amount": 7}], primary_key=[])])
        await a.write([batch("crm_1_4", [{"id": 4, "amount": 8}])])  # keyed: no PK on table
        rows = await Store(a, pg_dsn).rows()
        assert [r["amount"] for r in rows] == ["5", "n/a", "7", "8"]
    finally:
        await a.close()
        await b.close()


async def test_postgres_schema_from_url_is_created(pg_dsn: str) -> None:
    """``?schema=`` selects (and creates) the target schema; the DSN handed to asyncpg loses it."""
    schema = f"s_{uuid.uuid4().hex[:10]}"
    dsn, parsed = parse_postgres_url(f"{pg_dsn}?schema={schema}&connect_timeout=5")
    assert parsed == schema
    assert "schema=" not in dsn
    assert "connect_timeout=5" in dsn
    sink = create_sink(f"{pg_dsn.replace('postgresql://', 'postgres://')}?schema={schema}", TENANT)
    assert isinstance(sink, PostgresSink)
    await sink.open()
    try:
        await sink.ping()
        await sink.write([batch("crm_1_1", [{"id": 1}])])
        con = await asyncpg.connect(pg_dsn)
        try:
            assert await con.fetchval(f'SELECT count(*) FROM "{schema}".crm__contacts') == 1
        finally:
            await con.close()
    finally:
        await sink.close()


# --- DuckDB, null, registry ---------------------------------------------------------------


async def test_duckdb_url_creates_parent_directories(tmp_path: Path) -> None:
    """duckdb://<path>: everything after the scheme is the path; missing directories are made."""
    path = tmp_path / "nested" / "dir" / "dcl.duckdb"
    sink = create_sink(f"duckdb://{path}", TENANT)
    assert isinstance(sink, DuckDBSink)
    await sink.open()
    try:
        await sink.ping()
        await sink.write([batch("crm_1_1", [{"id": 1}])])
        assert await sink.count_rows() == {"crm__contacts": 1}
    finally:
        await sink.close()
    assert path.exists()
    assert not list(path.parent.glob(".dcl-*"))  # spooled NDJSON files are removed


async def test_duckdb_path_that_is_a_directory_raises_config_error(tmp_path: Path) -> None:
    """A DuckDB path that is a directory can never work: ConfigError (the daemon exits 2 with
    one line) naming the variable and the path, not SinkUnavailable retried forever."""
    sink = DuckDBSink(f"duckdb://{tmp_path}", TENANT)
    with pytest.raises(ConfigError, match=r"DCL_SINK_URL.*is a directory") as info:
        await sink.open()
    assert str(tmp_path) in str(info.value)


async def test_duckdb_concurrent_writes_are_serialised(tmp_path: Path) -> None:
    """Several stream loops sharing one DuckDB sink: concurrent write() calls all apply."""
    sink = DuckDBSink(f"duckdb://{tmp_path / 'dcl.duckdb'}", TENANT)
    await sink.open()
    try:
        writes = [
            sink.write([batch(f"crm_1_{n}", [{"id": n * 10 + i} for i in range(10)])])
            for n in range(8)
        ]
        assert await asyncio.gather(*writes) == [set()] * 8
        assert await sink.count_rows() == {"crm__contacts": 80}
    finally:
        await sink.close()


async def test_duckdb_reopen_keeps_inbox(tmp_path: Path) -> None:
    """The inbox lives in the file: after close and reopen a batch is still a duplicate."""
    url = f"duckdb://{tmp_path / 'dcl.duckdb'}"
    b = batch("crm_1_1", [{"id": 1}])
    for expected in (set(), {"crm_1_1"}):
        sink = DuckDBSink(url, TENANT)
        await sink.open()
        try:
            assert await sink.write([b]) == expected
        finally:
            await sink.close()


async def test_null_sink_accepts_everything_once_per_process() -> None:
    """null:// stores nothing but remembers batch ids, so re-writes are reported as duplicates."""
    sink = create_sink("null://", TENANT)
    assert isinstance(sink, NullSink)
    await sink.open()
    b = batch("crm_1_1", [{"id": 1}, {"id": 2}])
    assert await sink.write([b]) == set()
    schema_only = batch("crm_1_2", None, primary_key=[])
    assert await sink.write([b, schema_only]) == {"crm_1_1"}
    assert await sink.count_rows() == {"crm__contacts": 2}
    await sink.ping()
    await sink.close()


@pytest.mark.parametrize("url", ["mysql://x/y", "duckdb.db", "redis://localhost"])
def test_unknown_scheme_raises_config_error_naming_variable(url: str) -> None:
    """An unknown DCL_SINK_URL scheme stops start-up with the variable and the allowed schemes."""
    with pytest.raises(ConfigError, match="DCL_SINK_URL") as info:
        create_sink(url, TENANT)
    for scheme in ("duckdb://", "postgresql://", "postgres://", "null://"):
        assert scheme in str(info.value)


def test_config_error_hides_the_password() -> None:
    """A rejected URL is echoed without its password."""
    with pytest.raises(ConfigError) as info:
        create_sink("mysql://user:s3cret@db/x", TENANT)
    assert "s3cret" not in str(info.value)


def test_duckdb_url_without_path_is_a_config_error() -> None:
    """duckdb:// with nothing after it names DCL_SINK_URL and shows the two path forms."""
    with pytest.raises(ConfigError, match="DCL_SINK_URL"):
        create_sink("duckdb://", TENANT)
