"""The store's record of itself, through the sink contract suite's fixtures (``test_sinks``):
the registry ``_dcl_tables`` and the schema history ``_dcl_schema_history`` (written with the
change, logged and counted once it commits), the read-only reports for the operator app
(``tables_report``, ``schema_report``), and ``check()``, the probe of ``aam-dcl config check
--connect``: ConfigError for a sink that can never work, SinkUnavailable for one that may.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
import structlog.testing
from prometheus_client import REGISTRY

from aam_dcl.errors import ConfigError, SinkDataError, SinkUnavailable
from dcl_worker.sinks.duckdb import DuckDBSink
from dcl_worker.sinks.null import NullSink
from dcl_worker.sinks.postgres import PostgresSink
from tests.conftest import PG_ADMIN_DSN
from tests.integration import test_sinks as contract
from tests.integration.test_sink_deletes import deletes_only, named
from tests.integration.test_sinks import TENANT, AnySink, Sink, Store, batch, closed_port

sink, store = contract.sink, contract.store  # the contract suite's fixtures
stores_only = contract.stores_only
RUN = 1_700_000_000_000


@contextlib.contextmanager
def info_logs() -> Iterator[list[dict[str, Any]]]:
    """The block's log events, INFO included (the test session logs warnings only)."""
    wrapper = structlog.get_config()["wrapper_class"]
    with structlog.testing.capture_logs() as logs:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
        try:
            yield logs
        finally:
            structlog.configure(wrapper_class=wrapper)


def changes_counted(kind: str) -> float:
    value = REGISTRY.get_sample_value(
        "dcl_worker_schema_changes_total", {"tenant": TENANT, "kind": kind}
    )
    return value or 0.0


async def history(store: Store, table: str = "crm__contacts") -> list[tuple[Any, ...]]:
    rows = await store.query(
        "SELECT kind, column_name, old_type, new_type, detail, batch_id "
        f"FROM _dcl_schema_history WHERE table_name = '{table}' ORDER BY changed_at, kind"
    )
    return [tuple(r.values()) for r in rows]


# --- the registry and the history -----------------------------------------------------------


@stores_only
async def test_the_registry_records_each_table_and_its_last_write(sink: Sink, store: Store) -> None:
    """One row per table: tenant, connector, the source's table name, the key, when it was
    created, the last batch that wrote it and when."""
    await sink.write([named(f"crm_{RUN}_1", [1])])
    await sink.write([named(f"crm_{RUN}_2", [2])])
    (row,) = await store.query("SELECT * FROM _dcl_tables")
    assert row["table_name"] == "crm__contacts"
    assert (row["tenant"], row["connector"], row["source_table"]) == (TENANT, "crm", "contacts")
    assert row["primary_key"] == '["id"]'
    assert row["last_batch_id"] == f"crm_{RUN}_2"
    assert row["created_at"] <= row["last_write_at"]


@stores_only
async def test_every_schema_change_is_recorded_logged_and_counted_once(
    sink: Sink, store: Store
) -> None:
    """Creation, a column added, a type widened and a batch naming another key: one history
    row each, with the batch that caused it, one ``schema_changed`` log line each and the
    counter by kind; a key difference seen again is not recorded again."""
    before = {k: changes_counted(k) for k in ("table_created", "column_added", "type_widened")}
    before["key_differs"] = changes_counted("key_differs")
    with info_logs() as logs:
        await sink.write([batch("crm_1_1", [{"id": 1, "amount": 5}])])
        await sink.write([batch("crm_1_2", [{"id": 2, "amount": 5.5, "email": "x@y.z"}])])
        for n in (3, 4):
            await sink.write([batch(f"crm_1_{n}", [{"id": n, "org": "a"}], primary_key=["org"])])
    numeric = "numeric" if isinstance(sink, PostgresSink) else "DECIMAL(38,9)"
    integer = "bigint" if isinstance(sink, PostgresSink) else "BIGINT"
    text = "text" if isinstance(sink, PostgresSink) else "VARCHAR"
    assert await history(store) == [
        ("table_created", None, None, None, "primary key (id); 2 columns", "crm_1_1"),
        ("column_added", "email", None, text, None, "crm_1_2"),
        ("type_widened", "amount", integer, numeric, None, "crm_1_2"),
        ("column_added", "org", None, text, None, "crm_1_3"),
        ("key_differs", None, None, None, "stored key (id); batch key (org)", "crm_1_3"),
    ]
    events = [e for e in logs if e["event"] == "schema_changed"]
    assert [(e["kind"], e["column"], e["batch_id"]) for e in events] == [
        ("table_created", None, "crm_1_1"),
        ("column_added", "email", "crm_1_2"),
        ("type_widened", "amount", "crm_1_2"),
        ("column_added", "org", "crm_1_3"),
        ("key_differs", None, "crm_1_3"),
    ]
    assert all(e["log_level"] == "info" for e in events)
    counted = {k: changes_counted(k) - v for k, v in before.items()}
    assert counted == {"table_created": 1, "column_added": 2, "type_widened": 1, "key_differs": 1}


@stores_only
async def test_a_change_rolled_back_is_neither_recorded_nor_logged(
    sink: Sink, store: Store
) -> None:
    """A write that adds a column and then fails on a value: no history row, no log line."""
    await sink.write([batch("crm_1_1", [{"id": 1}])])
    columns = [("id", "integer"), ("at", "datetime")]
    bad = batch("crm_1_2", [{"id": 2, "at": "not a date"}], columns=columns)
    with info_logs() as logs, pytest.raises(SinkDataError):
        await sink.write([bad])
    assert not [e for e in logs if e["event"] == "schema_changed"]
    assert [h[0] for h in await history(store)] == ["table_created"]


@stores_only
async def test_a_floating_point_column_widened_in_place_is_in_the_history(
    sink: Sink, store: Store
) -> None:
    await store.query(
        "CREATE TABLE crm__deals (id bigint PRIMARY KEY, amount float8, "
        "_dcl_batch_id text, _dcl_version bigint NOT NULL DEFAULT 0, _dcl_ingested_at timestamptz)"
    )
    await sink.write([batch("crm_1_1", [{"id": 1, "amount": 2.5}], table="deals")])
    old = "double precision" if isinstance(sink, PostgresSink) else "DOUBLE"
    new = "numeric" if isinstance(sink, PostgresSink) else "DECIMAL(38,9)"
    assert await history(store, "crm__deals") == [
        ("type_widened", "amount", old, new, None, "crm_1_1")
    ]
    (row,) = await store.query("SELECT created_at, connector FROM _dcl_tables")
    assert row == {"created_at": None, "connector": "crm"}  # older than the registry


# --- the reports ------------------------------------------------------------------------------


async def test_tables_report_lists_every_table(sink: AnySink) -> None:
    """Per table: connector, source table, live and deleted rows, columns, key, last batch."""
    assert await sink.tables_report() == []
    await sink.write([named(f"crm_{RUN}_1", [1, 2, 3])])
    await sink.write([deletes_only(f"crm_{RUN}_2", [3])])
    await sink.write([batch(f"erp_{RUN}_1", [{"id": 1, "v": 1.5}], connector="erp")])
    reports = {r.table: r for r in await sink.tables_report()}
    assert list(reports) == ["crm__contacts", "erp__contacts"]
    crm = reports["crm__contacts"]
    assert (crm.connector, crm.source_table, crm.primary_key) == ("crm", "contacts", ("id",))
    assert crm.columns == ("id", "name")
    if isinstance(sink, NullSink):  # plans only: every record counts, deletes change nothing
        assert (crm.live_rows, crm.deleted_rows) == (3, 0)
    else:
        assert (crm.live_rows, crm.deleted_rows) == (2, 1)
        assert crm.created_at is not None
    assert crm.last_batch_id == f"crm_{RUN}_2" or isinstance(sink, NullSink)
    assert crm.last_write_at is not None
    assert await sink.count_rows() == {r.table: r.live_rows for r in reports.values()}


async def test_schema_report_shows_columns_key_and_history(sink: AnySink) -> None:
    await sink.write([batch("crm_1_1", [{"id": 1, "amount": 5}])])
    await sink.write([batch("crm_1_2", [{"id": 2, "amount": 5.5}])])
    assert await sink.schema_report("crm__nothing") is None
    report = await sink.schema_report("crm__contacts")
    assert report is not None
    assert [(c.name, c.type) for c in report.columns] == [("id", "integer"), ("amount", "numeric")]
    assert report.table.primary_key == ("id",)
    if not isinstance(sink, NullSink):
        assert [c.store_type.lower() for c in report.columns] == [
            "bigint",
            "numeric" if isinstance(sink, PostgresSink) else "decimal(38,9)",
        ]
        assert [(h.kind, h.column, h.batch_id) for h in report.history] == [
            ("table_created", None, "crm_1_1"),
            ("type_widened", "amount", "crm_1_2"),
        ]


# --- check() and open(): what can never work --------------------------------------------------


async def test_every_good_sink_passes_the_check(sink: AnySink) -> None:
    await sink.check()


def hold_open(path: Path) -> subprocess.Popen[str]:
    """Another process with the DuckDB file open, as a running worker has it."""
    script = f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('open', flush=True)"
    return subprocess.Popen(
        [sys.executable, "-c", script + "; time.sleep(60)"], stdout=subprocess.PIPE, text=True
    )


@pytest.fixture
async def norights_role() -> AsyncIterator[str]:
    """A login role with no privilege beyond CONNECT (PostgreSQL 15 grants PUBLIC no CREATE
    on public), dropped afterwards."""
    role = f"aam_dcl_norights_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'CANARY-pw'")
        yield role
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


def other_dsn(pg_dsn: str, *, user: str | None = None, database: str | None = None) -> str:
    base, _, db = pg_dsn.rpartition("/")
    host = base.rpartition("@")[2]
    return f"postgresql://{user or 'postgres'}:CANARY-pw@{host}/{database or db}"


async def test_postgres_that_can_never_work_is_a_config_error_naming_the_url(
    pg_dsn: str, norights_role: str
) -> None:
    """A database that does not exist, a role that does not exist, a role without CREATE: both
    check() and open() raise ConfigError naming DCL_SINK_URL with its password masked, and
    saying what to do; the check creates nothing."""
    cases = [
        (other_dsn(pg_dsn, database="aam_dcl_no_such_db"), "does not exist", "create the database"),
        (other_dsn(pg_dsn, user="aam_dcl_no_such_role"), "aam_dcl_no_such_role", "user"),
        (other_dsn(pg_dsn, user=norights_role), "CREATE", "grant"),
        (other_dsn(pg_dsn, user=norights_role) + "?schema=public", "", "grant"),
    ]
    for url, says, fix in cases:
        for probe in ("check", "open"):
            made = PostgresSink(url, TENANT)
            with pytest.raises(ConfigError) as info:
                await getattr(made, probe)()
            message = str(info.value)
            assert message.startswith("DCL_SINK_URL=postgresql://"), message
            assert ":***@" in message
            assert "CANARY" not in message
            assert says in message
            assert fix in message
            assert "\n" not in message
            await made.close()
    con = await asyncpg.connect(pg_dsn)
    try:
        assert not await con.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'dcl_acme'"
        )
    finally:
        await con.close()


async def test_postgres_that_may_come_back_is_unavailable() -> None:
    """Nothing listening on the port: SinkUnavailable from check() and open() (retried)."""
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/x"
    for probe in ("check", "open"):
        with pytest.raises(SinkUnavailable):
            await getattr(PostgresSink(url, TENANT), probe)()


async def test_postgres_check_refuses_a_schema_another_tenant_owns(pg_dsn: str) -> None:
    schema = f"s_{uuid.uuid4().hex[:10]}"
    owner = PostgresSink(f"{pg_dsn}?schema={schema}", "tx")
    await owner.open()
    await owner.close()
    with pytest.raises(ConfigError, match="belongs to tenant 'tx'"):
        await PostgresSink(f"{pg_dsn}?schema={schema}", "ty").check()


async def test_duckdb_check_creates_nothing_and_names_what_cannot_work(tmp_path: Path) -> None:
    """A path not there yet passes (open() creates it) and stays absent; a directory and a
    file that is no database are ConfigError; a file another process has open (a running
    worker) is SinkUnavailable; another tenant's schema is ConfigError."""
    future = tmp_path / "new" / "dcl.duckdb"
    await DuckDBSink(f"duckdb://{future}", TENANT).check()
    assert not future.parent.exists()

    with pytest.raises(ConfigError, match="is a directory"):
        await DuckDBSink(f"duckdb://{tmp_path}", TENANT).check()
    garbage = tmp_path / "garbage.duckdb"
    garbage.write_text("not a database")
    for probe in ("check", "open"):
        with pytest.raises(ConfigError, match="not a valid DuckDB database file"):
            await getattr(DuckDBSink(f"duckdb://{garbage}", TENANT), probe)()

    path = tmp_path / "dcl.duckdb"
    owner = DuckDBSink(f"duckdb://{path}?schema=shared", "tx")
    await owner.open()
    await owner.close()
    with pytest.raises(ConfigError, match="belongs to tenant 'tx'"):
        await DuckDBSink(f"duckdb://{path}?schema=shared", "ty").check()
    await DuckDBSink(f"duckdb://{path}?schema=shared", "tx").check()

    holder = hold_open(path)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(SinkUnavailable, match="lock"):
            await DuckDBSink(f"duckdb://{path}?schema=shared", "tx").check()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
