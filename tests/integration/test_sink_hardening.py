"""Hardening of the DCL store, against every SQL store (a real DuckDB file, a real PostgreSQL
database of its own per test): tables too wide for the store, tenants sharing a store, a
batch id reused with other content, names that differ only in case.

Each bad batch is PoisonBatch naming it, raised before the store sees it, and nothing of the
write it came in is applied; the batches around it still apply on their own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from aam_dcl import keys
from aam_dcl.errors import ConfigError, PoisonBatch, SinkDataError
from aam_dcl.messages import Batch, Column, TableBatch, TableSchema, decode, encode
from dcl_worker.sinks._sql import DEFAULT_MAX_COLUMNS
from dcl_worker.sinks.duckdb import DuckDBSink
from dcl_worker.sinks.postgres import PostgresSink
from dcl_worker.sinks.registry import create_sink
from tests.conftest import PG_ADMIN_DSN
from tests.integration.conftest import wait_until
from tests.integration.test_processes import daemon
from tests.integration.test_redis_faults import drained
from tests.integration.test_sinks import batch

Sink = DuckDBSink | PostgresSink
MAX = 1 << 24  # AAM_MAX_PAYLOAD_BYTES for decode()


class Place:
    """One store (a DuckDB file, or a PostgreSQL database of its own) that sinks of several
    tenants can open, and a way to look inside it with the store's own client."""

    def __init__(self, kind: str, path: Path, dsn: str) -> None:
        self.kind, self.path, self.dsn = kind, path, dsn
        self.default_schema = "main" if kind == "duckdb" else "public"
        self.sinks: list[Sink] = []

    def url(self, schema: str | None = None) -> str:
        base = f"duckdb://{self.path}" if self.kind == "duckdb" else self.dsn
        return base if schema is None else f"{base}?schema={schema}"

    def sink(
        self, tenant: str, *, schema: str | None = None, max_columns: int = DEFAULT_MAX_COLUMNS
    ) -> Sink:
        made = create_sink(self.url(schema), tenant, max_columns=max_columns)
        assert isinstance(made, DuckDBSink | PostgresSink)
        self.sinks.append(made)
        return made

    async def opened(self, tenant: str, **options: Any) -> Sink:
        made = self.sink(tenant, **options)
        await made.open()
        return made

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.kind == "duckdb":
            with duckdb.connect(str(self.path)) as con:  # shares the sinks' database instance
                return con.execute(sql).fetchall()
        con = await asyncpg.connect(self.dsn)
        try:
            return [tuple(r) for r in await con.fetch(sql)]
        finally:
            await con.close()

    async def tables(self) -> set[tuple[str, str]]:
        """(schema, table) of every table in the store but the catalogs'."""
        rows = await self.query(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('information_schema', 'pg_catalog')"
        )
        return {(str(s), str(t)) for s, t in rows}


async def _admin(sql: str) -> None:
    con = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await con.execute(sql)
    finally:
        await con.close()


@pytest.fixture
async def own_database() -> AsyncIterator[str]:
    """A PostgreSQL database of this test's own (its public schema is the default tenant's)."""
    name = f"aam_dcl_test_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"')
    yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["duckdb", "postgres"])
async def place(
    request: pytest.FixtureRequest, tmp_path: Path, own_database: str
) -> AsyncIterator[Place]:
    """A fresh store of each kind; every sink opened on it is closed afterwards."""
    made = Place(request.param, tmp_path / "dcl.duckdb", own_database)
    yield made
    for s in made.sinks:
        await s.close()


def wide(batch_id: str, columns: int, *, declared: bool = True, pk: bool = False) -> Batch:
    """One record in a table of ``columns`` string columns (declared in the schema, or only
    carried by the record: the planner adds those too). Strings: 1000 bigints fill more than
    PostgreSQL's 8160-byte row once any column is NULL (a null bitmap), and every live row's
    _dcl_deleted_at is."""
    names = [f"c{i}" for i in range(columns)]
    schema = TableSchema([Column(n, "string") for n in names] if declared else [], [])
    if pk:
        schema.primary_key = ["c0"]
    record = {n: str(i) for i, n in enumerate(names)}
    return Batch(batch_id, "crm", "crm-001", [TableBatch("wide", schema, [], 1, [record])])


# --- 3. no input crashes the worker: the column limit ---------------------------------------


@pytest.mark.parametrize(
    ("columns", "declared"),
    [(10_000, True), (DEFAULT_MAX_COLUMNS + 1, True), (DEFAULT_MAX_COLUMNS + 1, False)],
    ids=["10000-declared", "1001-declared", "1001-record-fields"],
)
async def test_table_wider_than_max_columns_is_poison_and_nothing_of_the_write_is_applied(
    place: Place, columns: int, declared: bool
) -> None:
    """A table over DCL_MAX_COLUMNS (declared columns or undeclared record fields) is
    PoisonBatch too_many_columns naming the batch, the table, the count and the setting; the
    write it came in applies nothing; the other batches of that write then apply alone."""
    sink = await place.opened("acme")
    before = await place.tables()
    good = [batch("crm_1_1", [{"id": 1, "name": "a"}]), batch("crm_1_3", [{"id": 2}])]
    bad = wide("crm_1_2", columns, declared=declared)

    with pytest.raises(PoisonBatch) as info:
        await sink.write([good[0], bad, good[1]])

    assert (info.value.reason, info.value.batch_id) == ("too_many_columns", "crm_1_2")
    for part in ("crm_1_2", "crm__wide", str(columns), "DCL_MAX_COLUMNS=1000"):
        assert part in str(info.value)
    assert await place.tables() == before
    assert await sink.count_rows() == {}
    assert await sink.write(good) == set()
    assert await sink.count_rows() == {"crm__contacts": 2}


async def test_a_table_of_exactly_max_columns_is_stored(place: Place) -> None:
    """The limit is inclusive: a table of DCL_MAX_COLUMNS columns is created and written."""
    sink = await place.opened("acme")
    assert await sink.write([wide("crm_1_1", DEFAULT_MAX_COLUMNS)]) == set()
    assert await sink.count_rows() == {"crm__wide": 1}


async def test_stored_columns_count_towards_max_columns(place: Place) -> None:
    """New columns for a stored table count with the ones it has: a batch that would take it
    over the limit is poison (the stored table keeps its columns and rows), one that stays
    within it adds its columns."""
    sink = await place.opened("acme", max_columns=10)
    await sink.write([wide("crm_1_1", 8)])
    over = wide("crm_1_2", 11)
    over.tables[0].schema.columns = over.tables[0].schema.columns[8:]  # c8, c9, c10: 8 + 3

    with pytest.raises(PoisonBatch, match="would have 11 columns, over DCL_MAX_COLUMNS=10") as info:
        await sink.write([batch("crm_1_3", [{"id": 1}]), over])
    assert info.value.batch_id == "crm_1_2"
    assert await sink.count_rows() == {"crm__wide": 1}

    assert await sink.write([wide("crm_1_4", 10)]) == set()
    assert await sink.count_rows() == {"crm__wide": 2}


async def test_duckdb_spool_files_left_by_a_dead_process_are_removed_at_open(
    tmp_path: Path,
) -> None:
    """Spool files of this database written by another (dead) process, and the older unnamed
    kind, are removed when the sink opens; another database's and unrelated files stay."""
    path = tmp_path / "dcl.duckdb"
    sink = DuckDBSink(f"duckdb://{path}", "acme")
    hexes = uuid.uuid4().hex
    leftovers = [f".dcl-dcl.duckdb-{'0' * 12}-{hexes}.ndjson", f".dcl-{hexes}.ndjson"]
    kept = [f".dcl-other.duckdb-{'0' * 12}-{hexes}.ndjson", "notes.ndjson", ".dcl-dcl.duckdb-x"]
    for name in leftovers + kept:
        (tmp_path / name).write_text("{}")
    await sink.open()
    try:
        await sink.write([batch("crm_1_1", [{"id": 1}])])  # its own spool file is removed too
    finally:
        await sink.close()
    assert sorted(set(os.listdir(tmp_path)) - {"dcl.duckdb"}) == sorted(kept)


async def test_duckdb_path_below_a_file_raises_config_error(tmp_path: Path) -> None:
    """A DuckDB path whose directory cannot exist (a file is in the way) is ConfigError at
    open(): the daemon stops with one line instead of retrying forever."""
    (tmp_path / "afile").write_text("x")
    sink = DuckDBSink(f"duckdb://{tmp_path / 'afile' / 'dcl.duckdb'}", "acme")
    with pytest.raises(ConfigError, match="DCL_SINK_URL: cannot create the directory"):
        await sink.open()


@dataclass
class WideCase:
    """One fuzzed table: its name, a stem its column names share, its width and layout."""

    table: str
    stem: str
    width: int
    declared: bool
    keyed: bool
    twin: bool  # one more column named like the first but for case

    def __repr__(self) -> str:  # hypothesis prints failing examples: keep names short
        return (
            f"WideCase(table={self.table[:40]!r}... ({len(self.table.encode())} bytes), "
            f"stem={self.stem[:40]!r}... ({len(self.stem.encode())} bytes), width={self.width}, "
            f"declared={self.declared}, keyed={self.keyed}, twin={self.twin})"
        )

    def batch(self, batch_id: str) -> Batch:
        names = [f"{self.stem}{i}" for i in range(self.width)]
        if self.twin:
            names.append(names[0].swapcase())
        names = list(dict.fromkeys(names))  # swapcase of a caseless name is the name itself
        types = [Column(n, "string") for n in names] if self.declared else []
        schema = TableSchema(types, names[:1] if self.keyed else [])
        record = {n: str(i) for i, n in enumerate(names)}  # strings: see wide()
        return Batch(batch_id, "fz", "fz-001", [TableBatch(self.table, schema, [], 1, [record])])


# Multi-byte letters (2, 3 and 4 bytes in UTF-8), ASCII of both cases, quotes, spaces.
_NAME_CHARS = st.sampled_from([*"aAbBzZ_ 0\"'.-", "é", "É", "ß", "Ω", "漢", "字", "🙂"])
_LENGTHS = st.sampled_from([1, 5, 15, 20, 31, 32, 58, 63, 64, 200, 3000])
names = _LENGTHS.flatmap(lambda n: st.text(_NAME_CHARS, min_size=n, max_size=n))
widths = st.sampled_from([1, 2, 999, 1000, 1001, 1500, 5000, 5500, 10_000]) | st.integers(1, 40)
wide_cases = st.builds(WideCase, names, names, widths, st.booleans(), st.booleans(), st.booleans())

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def drawn_cases() -> list[WideCase]:
    """FUZZ.max_examples draws, collected by a sync @given and then fed to the async sinks
    (the pattern of test_fuzz.py: a failing async @given upsets the hypothesis plugin)."""
    drawn: list[WideCase] = []

    @FUZZ
    @given(wide_cases)
    @example(WideCase("t", "c", 10_000, True, True, False))  # the crash
    @example(WideCase("漢" * 19, "é" * 28, 1000, True, True, False))  # ~60-byte names, full width
    @example(WideCase("🙂" * 16, "c", 1, True, False, False))  # 64 bytes: one too many
    @example(WideCase("t" * 3000, "Ω" * 3000, 5500, False, True, True))
    def collect(case: WideCase) -> None:
        drawn.append(case)

    collect()
    return drawn


async def test_fuzz_very_wide_tables_and_very_long_names_never_crash_a_sink(place: Place) -> None:
    """Tables up to 10 000 columns, table and column names of up to thousands of multi-byte
    characters, keyed or not, declared or record fields only, with a case twin or not: every
    write is either stored or a SinkDataError (PoisonBatch included), nothing else; the sink
    stays usable after each, and a table over DCL_MAX_COLUMNS is never stored."""
    sink = await place.opened("fuzz")
    cases = drawn_cases()
    stored: list[WideCase] = []
    for n, case in enumerate(cases, 1):
        try:
            await sink.write([case.batch(f"fz_1_{n}")])
        except SinkDataError:
            pass  # refused, with the batch named: what the worker dead-letters
        except Exception as exc:  # the property: nothing but SinkDataError
            pytest.fail(f"{case!r}: {type(exc).__name__}: {exc}")
        else:
            assert case.width <= DEFAULT_MAX_COLUMNS, f"stored a table too wide: {case!r}"
            stored.append(case)
        await sink.write([batch(f"ok_1_{n}", [{"id": n}], connector="ok")])
    assert (await sink.count_rows())["ok__contacts"] == len(cases)
    assert any(c.width == DEFAULT_MAX_COLUMNS for c in stored)  # the explicit full-width one


# --- 6. tenants never share a table ---------------------------------------------------------


def tenant_batch(batch_id: str, tenant: str, version: int) -> Batch:
    """The same connector, table, keys and batch id for every tenant; values name the tenant."""
    records = [{"id": key, "owner": tenant, "v": version} for key in (1, 2, 3)]
    return batch(batch_id, records)


async def test_two_tenants_on_one_store_keep_their_own_tables_and_inbox(place: Place) -> None:
    """Workers of tenants tx and ty on the same DCL_SINK_URL write the same connector, table,
    keys and batch ids, interleaved: neither batch is taken for the other's duplicate, no row is
    overwritten, each tenant's schema holds exactly its own rows and inbox."""
    tx, ty = await place.opened("tx"), await place.opened("ty")
    for n in (1, 2, 3):
        for tenant, sink in (("tx", tx), ("ty", ty)):
            assert await sink.write([tenant_batch(f"crm_1_{n}", tenant, n)]) == set()

    for tenant, sink in (("tx", tx), ("ty", ty)):
        assert sink.schema == f"dcl_{tenant}"
        assert await sink.count_rows() == {"crm__contacts": 3}
        rows = await place.query(
            f'SELECT id, owner, v FROM "dcl_{tenant}".crm__contacts ORDER BY id'
        )
        assert rows == [(k, tenant, 3) for k in (1, 2, 3)]
        inbox = await place.query(f'SELECT batch_id, tenant FROM "dcl_{tenant}"._dcl_inbox')
        assert sorted(inbox) == [(f"crm_1_{n}", tenant) for n in (1, 2, 3)]
        assert await place.query(f'SELECT tenant FROM "dcl_{tenant}"._dcl_owner') == [(tenant,)]


async def test_default_tenant_keeps_the_default_schema(place: Place) -> None:
    """Tenant 'default' (TENANT_ID unset) writes into public / main as before, so a
    single-tenant store, and everything that reads it, stays as it was."""
    sink = await place.opened("default")
    await sink.write([batch("crm_1_1", [{"id": 1}])])
    assert sink.schema == place.default_schema
    assert (place.default_schema, "crm__contacts") in await place.tables()
    assert await place.query("SELECT count(*) FROM crm__contacts") == [(1,)]  # unqualified


async def test_worker_of_another_tenant_refuses_a_schema_it_does_not_own(place: Place) -> None:
    """?schema= naming tenant tx's schema, in a worker of tenant ty: ConfigError at open()
    naming both tenants and the schema; nothing is written there."""
    tx = await place.opened("tx")
    await tx.write([tenant_batch("crm_1_1", "tx", 1)])
    before = await place.query('SELECT * FROM "dcl_tx"._dcl_inbox')

    intruder = place.sink("ty", schema="dcl_tx")
    with pytest.raises(ConfigError) as info:
        await intruder.open()
    message = str(info.value)
    assert "'dcl_tx'" in message
    assert "'tx'" in message
    assert "'ty'" in message
    assert await place.query('SELECT * FROM "dcl_tx"._dcl_inbox') == before
    assert await place.query('SELECT tenant FROM "dcl_tx"._dcl_owner') == [("tx",)]


async def test_duckdb_tenants_differing_only_in_case_are_refused_not_merged(
    tmp_path: Path,
) -> None:
    """DuckDB's dcl_TX and dcl_tx are one schema: the owner record makes the second tenant's
    worker stop at open() instead of writing into the first one's tables."""
    url = f"duckdb://{tmp_path / 'dcl.duckdb'}"
    upper = DuckDBSink(url, "TX")
    await upper.open()
    lower = DuckDBSink(url, "tx")
    try:
        await upper.write([tenant_batch("crm_1_1", "TX", 1)])
        with pytest.raises(ConfigError, match=r"schema 'dcl_TX' belongs to tenant 'TX'.*'tx'"):
            await lower.open()
        assert await upper.count_rows() == {"crm__contacts": 3}
    finally:
        await upper.close()
        await lower.close()


async def make_legacy_store(place: Place, tenants: list[str]) -> None:
    """The layout of a store from before tenant schemas: the inbox (no fingerprint column, no
    owner record) and a data table in the default schema."""
    applied_at = "TIMESTAMPTZ" if place.kind == "duckdb" else "timestamptz"
    await place.query(
        "CREATE TABLE _dcl_inbox (batch_id text PRIMARY KEY, tenant text, connector text, "
        f"applied_at {applied_at}, record_count int)"
    )
    await place.query(
        "CREATE TABLE crm__contacts (id bigint PRIMARY KEY, name text, _dcl_batch_id text, "
        "_dcl_version bigint NOT NULL DEFAULT 0, _dcl_ingested_at timestamptz)"
    )
    await place.query("INSERT INTO crm__contacts VALUES (1, 'legacy', 'crm_1_1', 1, now())")
    for n, tenant in enumerate(tenants, 1):
        await place.query(
            f"INSERT INTO _dcl_inbox VALUES ('crm_1_{n}', '{tenant}', 'crm', now(), 1)"
        )


async def test_store_from_before_tenant_schemas_keeps_working_for_its_tenant(
    place: Place,
) -> None:
    """An older single-tenant store (tenant acme's inbox in the default schema): acme's worker
    keeps using that schema (its rows, its inbox: a redelivered batch is still a duplicate, and
    the inbox gains the fingerprint column) and records itself as the owner, so restarts stay;
    another tenant gets a schema of its own; tenant default may not take acme's schema."""
    await make_legacy_store(place, ["acme"])
    acme = await place.opened("acme")
    assert acme.schema == place.default_schema
    assert await acme.write([batch("crm_1_1", [{"id": 1, "name": "again"}])]) == {"crm_1_1"}
    await acme.write([batch("crm_1_2", [{"id": 2, "name": "new"}])])
    assert await acme.count_rows() == {"crm__contacts": 2}
    assert await place.query("SELECT fingerprint FROM _dcl_inbox WHERE batch_id = 'crm_1_1'") == [
        (None,)
    ]
    await acme.close()

    again = await place.opened("acme")
    assert again.schema == place.default_schema
    other = await place.opened("other")
    assert other.schema == "dcl_other"
    assert await other.count_rows() == {}
    with pytest.raises(ConfigError, match=r"belongs to tenant 'acme'.*'default'"):
        await place.opened("default")


async def test_store_mixing_tenants_from_before_tenant_schemas_stops_until_an_owner_is_set(
    place: Place,
) -> None:
    """An older store whose default schema holds batches of two tenants (the collision this
    issue is about): a worker of either stops at open() naming both; once the operator records
    which tenant keeps it (docs/sinks.md), that one uses it and the other gets its own."""
    await make_legacy_store(place, ["tx", "ty"])
    for tenant in ("tx", "ty", "default"):
        with pytest.raises(ConfigError, match=r"'tx'.*'ty'|'ty'.*'tx'"):
            await place.opened(tenant)
    assert not {t for _, t in await place.tables()} & {"_dcl_owner"}

    await place.query("CREATE TABLE _dcl_owner (tenant text NOT NULL)")
    await place.query("INSERT INTO _dcl_owner VALUES ('tx')")
    assert (await place.opened("tx")).schema == place.default_schema
    assert (await place.opened("ty")).schema == "dcl_ty"


# --- 7. a reused batch id with other content ------------------------------------------------


def decoded(b: Batch) -> Batch:
    """``b`` as the worker sees it: encoded (a fresh emitted_at each time) and decoded."""
    return decode({b"payload": encode(b)}, MAX)


async def test_identical_resend_is_a_duplicate_and_other_content_is_a_conflict(
    place: Place,
) -> None:
    """The bridge re-sends a batch under its id with a new emitted_at: a quiet duplicate. The
    same id with other records is PoisonBatch batch_id_conflict naming it; the write it came
    in applies nothing, and the rows of the first copy stay."""
    sink = await place.opened("acme")
    first = batch("crm_1_1", [{"id": 1, "name": "Ada"}])
    sent = decoded(first)
    assert await sink.write([sent]) == set()

    resent = decoded(first)
    assert resent.fingerprint == sent.fingerprint
    assert await sink.write([resent]) == {"crm_1_1"}

    reused = decoded(batch("crm_1_1", [{"id": 1, "name": "Mallory"}]))
    fresh = decoded(batch("crm_1_2", [{"id": 2, "name": "Grace"}]))
    with pytest.raises(PoisonBatch) as info:
        await sink.write([fresh, reused])
    assert (info.value.reason, info.value.batch_id) == ("batch_id_conflict", "crm_1_1")
    assert "crm_1_1" in str(info.value)
    assert await sink.count_rows() == {"crm__contacts": 1}
    rows = await place.query(f'SELECT name FROM "{sink.schema}".crm__contacts')
    assert rows == [("Ada",)]

    assert await sink.write([fresh]) == set()  # the innocent batch alone applies
    assert await sink.write([batch("crm_1_1", [{"id": 1, "name": "no fingerprint"}])]) == {
        "crm_1_1"
    }  # built in code, no fingerprint: not compared, a duplicate as before


async def test_null_sink_refuses_a_reused_batch_id_with_other_content() -> None:
    """null:// keeps fingerprints with its in-memory inbox: the same rule as the stores."""
    sink = create_sink("null://", "acme")
    first = batch("crm_1_1", [{"id": 1}])
    assert await sink.write([decoded(first)]) == set()
    assert await sink.write([decoded(first)]) == {"crm_1_1"}
    schema_only = decoded(batch("crm_1_2", None, primary_key=[]))
    with pytest.raises(PoisonBatch, match="crm_1_1"):
        await sink.write([schema_only, decoded(batch("crm_1_1", None, primary_key=[]))])
    assert await sink.write([schema_only]) == set()  # not half-recorded


# --- 8. names that differ only in case ------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "named"),
    [
        (("crm", "Bar", "id"), ("crm", "bar", "id"), ("crm__Bar", "crm__bar")),
        (("CRM", "bar", "id"), ("crm", "bar", "id"), ("CRM__bar", "crm__bar")),
        (("crm", "bar", "Name"), ("crm", "bar", "name"), ("Name", "name")),
    ],
    ids=["table", "connector", "column"],
)
async def test_names_differing_only_in_case_are_refused_in_one_write_and_against_the_store(
    place: Place, first: tuple[str, str, str], second: tuple[str, str, str], named: tuple[str, str]
) -> None:
    """Bar and bar (tables, connectors, columns) are one name in DuckDB and two in PostgreSQL:
    both stores refuse the second spelling as PoisonBatch name_collision naming both names,
    within one write and against a stored table; the stored row is not overwritten."""
    sink = await place.opened("acme")

    def make(batch_id: str, spec: tuple[str, str, str], value: str) -> Batch:
        connector, table, column = spec
        return batch(batch_id, [{"id": 1, column: value}], table=table, connector=connector)

    with pytest.raises(PoisonBatch) as info:
        await sink.write([make("x_1_1", first, "one"), make("x_1_2", second, "two")])
    assert (info.value.reason, info.value.batch_id) == ("name_collision", "x_1_2")
    assert all(repr(n) in str(info.value) for n in named)
    assert await sink.count_rows() == {}

    await sink.write([make("x_1_1", first, "one")])
    before = await sink.count_rows()
    with pytest.raises(PoisonBatch) as info:
        await sink.write([make("x_1_2", second, "two")])
    assert (info.value.reason, info.value.batch_id) == ("name_collision", "x_1_2")
    assert all(repr(n) in str(info.value) for n in named)
    assert "stored" in str(info.value)
    assert await sink.count_rows() == before
    table = f"{first[0]}__{first[1]}"
    rows = await place.query(f'SELECT "{first[2]}" FROM "{sink.schema}"."{table}"')
    assert rows == [("one",)]


async def test_column_names_differing_only_in_case_in_one_batch_are_refused(place: Place) -> None:
    """Id and id in one batch's records (undeclared fields, or one declared and one not)."""
    sink = await place.opened("acme")
    b = batch("crm_1_1", [{"id": 1, "Id": 2}], columns=[("id", "integer")])
    with pytest.raises(PoisonBatch, match=r"'Id' collides with 'id'|'id' collides with 'Id'"):
        await sink.write([b])


async def test_reserved_prefix_in_another_case_is_refused(place: Place) -> None:
    """_DCL_batch_id is DuckDB's _dcl_batch_id: refused like the reserved prefix itself."""
    sink = await place.opened("acme")
    with pytest.raises(SinkDataError, match="reserved prefix"):
        await sink.write([batch("crm_1_1", [{"id": 1, "_DCL_batch_id": "x"}])])


# --- the worker process -----------------------------------------------------------------------


def read_store(sink_url: str) -> tuple[set[str], dict[str, int]]:
    """(inbox ids, rows per table) of a stopped worker's DuckDB file."""
    with duckdb.connect(sink_url.removeprefix("duckdb://"), read_only=True) as con:
        inbox = {str(r[0]) for r in con.execute("SELECT batch_id FROM _dcl_inbox").fetchall()}
        tables = [str(r[0]) for r in con.execute("SHOW TABLES").fetchall()]
        rows = {
            t: int(con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0])
            for t in tables
            if not t.startswith("_dcl_")
        }
    return inbox, rows


async def read_pg_store(dsn: str, schema: str) -> tuple[set[str], dict[str, int]]:
    con = await asyncpg.connect(dsn)
    try:
        inbox = {r[0] for r in await con.fetch(f'SELECT batch_id FROM "{schema}"._dcl_inbox')}
        tables = await con.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 AND left(tablename, 5) <> $2",
            schema,
            "_dcl_",
        )
        rows = {
            t[0]: int(await con.fetchval(f'SELECT count(*) FROM "{schema}"."{t[0]}"'))
            for t in tables
        }
    finally:
        await con.close()
    return inbox, rows


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
async def test_worker_process_survives_a_10000_column_batch_and_dead_letters_only_it(
    kind: str, redis_url: str, redis: aioredis.Redis, tmp_path: Path, pg_dsn: str
) -> None:
    """A real dcl-worker reads a 10 000-column keyed table (DuckDB 2.0.1 died of SIGFPE on it,
    in a crash loop) between two good batches in one read: the process keeps running, only
    that batch is dead-lettered, as too_many_columns, and the good ones land."""
    schema = f"wide_{uuid.uuid4().hex[:10]}"
    sink_url = (
        f"duckdb://{tmp_path / 'dcl.duckdb'}" if kind == "duckdb" else f"{pg_dsn}?schema={schema}"
    )
    good = [batch("crm_1_1", [{"id": 1}]), batch("crm_1_3", [{"id": 2}])]
    poison = wide("crm_1_2", 10_000, pk=True)
    stream = keys.stream("default", "crm")
    for b in (good[0], poison, good[1]):  # before the worker starts: one read, one write
        await redis.xadd(stream, {"payload": encode(b)})
    env = {
        "REDIS_URL": redis_url,
        "DCL_SINK_URL": sink_url,
        "DCL_MAX_DELIVERIES": "1",  # dead-letter on the first rejection, whatever the consumer
        "DCL_BLOCK_MS": "100",
        "DCL_DISCOVERY_INTERVAL_S": "0.1",
        "DCL_CONSUMER_NAME": "wide-test",
    }
    log = tmp_path / "worker.log"
    proc = daemon("dcl-worker", env, log)
    try:

        async def done() -> bool:
            assert proc.poll() is None, (
                f"the worker died ({proc.returncode}): {log.read_text()[-2000:]}"
            )
            return await drained(redis, ["crm"])

        await wait_until(done, 60, "the worker to take all three entries")
        await asyncio.sleep(0.3)  # a crash after the ack would show here
        assert proc.poll() is None, log.read_text()[-2000:]
        dead = await redis.xrange(keys.dead_letter_stream("default", "crm"))
        assert [(f[b"batch_id"], f[b"error_type"]) for _, f in dead] == [
            (b"crm_1_2", b"too_many_columns")
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(proc.wait, 30)
    assert returncode == 0, log.read_text()[-2000:]
    if kind == "duckdb":
        inbox, rows = read_store(sink_url)
    else:
        inbox, rows = await read_pg_store(pg_dsn, schema)
    assert inbox == {"crm_1_1", "crm_1_3"}
    assert rows == {"crm__contacts": 2}
