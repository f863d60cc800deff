"""The PostgreSQL tables source (``type: postgres``) against the real local PostgreSQL.

Every test works in its own uniquely named schema of the session's test database and drops
it at the end.
"""

from __future__ import annotations

import datetime as dt
import logging
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from aam_bridge.connectors import registry
from aam_bridge.connectors.base import ConnectorConfig, Page, TableSpec
from aam_bridge.connectors.postgres import PostgresConnector
from aam_bridge.connectors.postgres_catalog import Choice
from aam_bridge.connectors_file import load_connectors
from aam_bridge.sync import SyncRunner
from aam_dcl import keys, messages
from aam_dcl.config import Settings
from aam_dcl.errors import ConfigError, ConnectorError
from aam_dcl.messages import Batch, Record
from aam_dcl.schema import table_batch
from tests.integration.test_singer import killed_twice_then_run

pytestmark = pytest.mark.postgres

T0 = dt.datetime(2025, 11, 4, 10, 0, tzinfo=dt.UTC)
PASSWORD = "s3cr3t-Pw_9"  # trust auth ignores it; it must show nowhere

Make = Callable[..., Awaitable[PostgresConnector]]


@pytest.fixture
async def schema(pg_dsn: str) -> AsyncIterator[str]:
    name = f"pgsrc_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_dsn)
    await admin.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        await admin.execute(f'DROP SCHEMA "{name}" CASCADE')
        await admin.close()


@pytest.fixture
async def db(pg_dsn: str, schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection whose search_path is the test's schema (autocommit)."""
    conn = await asyncpg.connect(pg_dsn, server_settings={"search_path": schema})
    yield conn
    await conn.close()


def with_password(dsn: str) -> str:
    return dsn.replace("postgres@", f"postgres:{PASSWORD}@")


def config(dsn: str, **options: Any) -> ConnectorConfig:
    return ConnectorConfig(
        name="shop", type="postgres", connector_config_id="shop-test", schedule_s=None,
        options={"dsn": dsn, **options},
    )  # fmt: skip


@pytest.fixture
async def make(pg_dsn: str, schema: str) -> AsyncIterator[Make]:
    """Opened connectors on the test's schema (closed at the end of the test)."""
    made: list[PostgresConnector] = []

    async def make(**options: Any) -> PostgresConnector:
        options = {"schema": schema, **options}
        connector = PostgresConnector(config(with_password(pg_dsn), **options))
        await connector.open()
        made.append(connector)
        return connector

    yield make
    for connector in made:
        await connector.close()


async def pages_of(connector: PostgresConnector, table: str, cursor: str | None) -> list[Page]:
    spec = await spec_of(connector, table)
    return [page async for page in connector.read(spec, cursor)]


async def spec_of(connector: PostgresConnector, table: str) -> TableSpec:
    return next(t for t in await connector.tables() if t.name == table)


def records(pages: list[Page]) -> list[Record]:
    return [r for page in pages for r in page.records]


def ids(pages: list[Page]) -> list[Any]:
    return [r["id"] for r in records(pages)]


async def orders(db: asyncpg.Connection, rows: list[tuple[int, dt.datetime]]) -> None:
    await db.execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, note text)"
    )
    await db.executemany("INSERT INTO orders (id, updated_at) VALUES ($1, $2)", rows)


# --- types -------------------------------------------------------------------------------

ALL_TYPES = """
CREATE TYPE mood AS ENUM ('calm', 'busy');
CREATE DOMAIN amount AS numeric(12, 2);
CREATE TABLE everything (
    id int PRIMARY KEY,
    big_exact numeric(60, 30), plain_numeric numeric, dec decimal(5, 1), amount amount,
    i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, flag bool,
    at_tz timestamptz, at_local timestamp, day date, doc json, docb jsonb,
    ints int[], words text[], grid int[][],
    uid uuid, label text, code varchar(8), fixed char(4), ip inet, span interval,
    raw bytea, price money, clock time, feeling mood
);
"""
BIG = Decimal("123456789012345678901234567890.123456789012345678901234567891")


async def test_every_catalog_type_maps_to_its_column_type_and_values_are_json_ready(
    db: asyncpg.Connection, make: Make
) -> None:
    await db.execute(ALL_TYPES)
    await db.execute(
        """INSERT INTO everything VALUES (1, $1, '0.1', 1234.5, 9.99, 1, 2, 9007199254740993,
        1.5, 0.1, true, '2025-11-04 10:15:00.123456+02', '2025-11-04 10:15:00.5', '2025-11-04',
        '{"a": [1, 2], "b": null}', '{"nested": {"x": "y"}}', '{1,NULL,3}', '{"a b",c}',
        '{{1,2},{3,4}}', '6f1c2a0e-3a57-4e5f-9a43-7c3c2d8f1e11', 'text', 'varchar', 'ab',
        '10.0.0.1', '1 day 02:00:00', '\\x0102ff', '12.34', '12:30:00', 'busy')""",
        BIG,
    )
    await db.execute("INSERT INTO everything (id, plain_numeric, f8) VALUES (2, 'NaN', 'Infinity')")
    connector = await make(tables={"everything": {}})
    (spec,) = await connector.tables()
    assert spec.primary_key == ("id",)
    assert spec.column_types == {
        "id": "integer", "big_exact": "numeric", "plain_numeric": "numeric", "dec": "numeric",
        "amount": "numeric", "i2": "integer", "i4": "integer", "i8": "integer",
        "f4": "numeric", "f8": "numeric", "flag": "boolean", "at_tz": "datetime",
        "at_local": "datetime", "day": "date", "doc": "json", "docb": "json", "ints": "json",
        "words": "json", "grid": "json", "uid": "string", "label": "string", "code": "string",
        "fixed": "string", "ip": "string", "span": "string", "raw": "string", "price": "string",
        "clock": "string", "feeling": "string",
    }  # fmt: skip
    first, second = records(await pages_of(connector, "everything", None))
    assert first == {
        "id": 1, "big_exact": BIG, "plain_numeric": Decimal("0.1"), "dec": Decimal("1234.5"),
        "amount": Decimal("9.99"), "i2": 1, "i4": 2, "i8": 9007199254740993, "f4": 1.5,
        "f8": 0.1, "flag": True,
        "at_tz": dt.datetime(2025, 11, 4, 8, 15, 0, 123456, tzinfo=dt.UTC),
        "at_local": dt.datetime(2025, 11, 4, 10, 15, 0, 500000), "day": dt.date(2025, 11, 4),
        "doc": {"a": [1, 2], "b": None}, "docb": {"nested": {"x": "y"}},
        "ints": [1, None, 3], "words": ["a b", "c"], "grid": [[1, 2], [3, 4]],
        "uid": "6f1c2a0e-3a57-4e5f-9a43-7c3c2d8f1e11", "label": "text", "code": "varchar",
        "fixed": "ab  ", "ip": "10.0.0.1", "span": "1 day 02:00:00", "raw": "\\x0102ff",
        "price": "$12.34", "clock": "12:30:00", "feeling": "busy",
    }  # fmt: skip
    assert type(first["big_exact"]) is Decimal
    assert second["plain_numeric"] is None, "NaN has no JSON number"
    assert second["f8"] is None, "nor has Infinity"
    assert all(v is None for k, v in second.items() if k not in ("id",))

    # Through the message format: every value encodes, the numeric's digits unchanged.
    batch = Batch(
        batch_id=keys.batch_id("shop", 1, 1), connector="shop", connector_config_id="shop-test",
        tables=[table_batch("everything", [first, second], primary_key=spec.primary_key,
                            max_samples=0, column_types=spec.column_types)],
    )  # fmt: skip
    payload = messages.encode(batch)
    assert str(BIG).encode() in payload
    decoded = messages.decode(messages.entry(payload), 2**20).tables[0]
    assert {c.name: c.type for c in decoded.schema.columns} == spec.column_types
    assert decoded.records is not None
    assert decoded.records[0]["at_tz"] == "2025-11-04T08:15:00.123456+00:00"
    assert decoded.records[0]["i8"] == 9007199254740993


# --- incremental reads -------------------------------------------------------------------


async def test_rows_sharing_one_cursor_value_across_page_boundaries_are_each_read_once(
    db: asyncpg.Connection, make: Make
) -> None:
    """50 rows with one updated_at, pages of 7: the key splits the tie, nothing lost or looped."""
    await orders(db, [(i, T0) for i in range(1, 51)] + [(51, T0 + dt.timedelta(seconds=1))])
    connector = await make(tables={"orders": {"cursor": "updated_at"}}, page_size=7)
    pages = await pages_of(connector, "orders", None)
    assert ids(pages) == list(range(1, 52))
    assert [len(p.records) for p in pages] == [7] * 7 + [2]
    done = 0
    for page in pages[:-1]:
        done += len(page.records)
        assert ids(await pages_of(connector, "orders", page.cursor)) == list(range(done + 1, 52))
    end = pages[-1].cursor
    assert end is not None
    assert '"end"' in end
    again = await pages_of(connector, "orders", end)
    assert sorted(ids(again)) == list(range(1, 52)), "the lookback re-reads the last 5 s"
    assert again[-1].cursor == end, "a re-read never moves the end backwards"

    exact = await make(tables={"orders": {"cursor": "updated_at"}}, page_size=7, lookback_s=0)
    assert ids(await pages_of(exact, "orders", end)) == [], "no lookback: nothing after the end"


async def test_an_exact_multiple_of_the_page_size_ends_with_an_empty_page_holding_the_end(
    db: asyncpg.Connection, make: Make
) -> None:
    await orders(db, [(i, T0 + dt.timedelta(seconds=i)) for i in range(1, 15)])
    connector = await make(tables={"orders": {"cursor": "updated_at"}}, page_size=7)
    pages = await pages_of(connector, "orders", None)
    assert [len(p.records) for p in pages] == [7, 7, 0]
    assert '"end"' in str(pages[-1].cursor)


@pytest.mark.parametrize(("lookback_s", "found"), [(5, True), (0, False)])
async def test_a_row_committed_late_with_an_old_stamp_is_picked_up_by_the_lookback(
    db: asyncpg.Connection, pg_dsn: str, schema: str, make: Make, lookback_s: int, found: bool
) -> None:
    """A long transaction stamps its row at its start, commits after a sync passed that
    stamp: the next run's lookback reads it; without one it is missed for good."""
    await orders(db, [(1, T0)])
    long_tx = await asyncpg.connect(pg_dsn, server_settings={"search_path": schema})
    transaction = long_tx.transaction()
    await transaction.start()
    await long_tx.execute("INSERT INTO orders VALUES (2, $1, 'late')", T0 + dt.timedelta(seconds=1))
    await db.execute("INSERT INTO orders VALUES (3, $1)", T0 + dt.timedelta(seconds=3))
    connector = await make(tables={"orders": {"cursor": "updated_at"}}, lookback_s=lookback_s)
    first = await pages_of(connector, "orders", None)
    assert ids(first) == [1, 3], "the uncommitted row is invisible"
    await transaction.commit()
    await long_tx.close()

    second = await pages_of(connector, "orders", first[-1].cursor)
    assert (2 in ids(second)) is found
    if found:
        assert ids(second) == [1, 2, 3], "rows from 5 s before the end: re-reads and the late one"
        assert second[-1].cursor == first[-1].cursor, "the end stays at the newest row"


async def test_a_read_sees_one_snapshot_while_rows_change_under_it(
    db: asyncpg.Connection, make: Make
) -> None:
    """Rows updated or added while a read is between pages: the read yields each row once,
    as it was when the read began; the next run yields the new versions."""
    await orders(db, [(i, T0 + dt.timedelta(seconds=i)) for i in range(1, 10)])
    connector = await make(tables={"orders": {"cursor": "updated_at"}}, page_size=3)
    spec = await spec_of(connector, "orders")
    reading = connector.read(spec, None)
    pages = [await anext(reading)]
    assert ids(pages) == [1, 2, 3]
    later = T0 + dt.timedelta(minutes=5)
    await db.execute("UPDATE orders SET updated_at = $1, note = 'moved' WHERE id = 2", later)
    await db.execute("UPDATE orders SET updated_at = $1, note = 'new' WHERE id = 7", later)
    await db.execute("INSERT INTO orders VALUES (10, $1, 'added')", later)
    pages += [page async for page in reading]
    assert ids(pages) == list(range(1, 10)), "each row once, none of the changes"
    assert all(r["note"] is None for r in records(pages))

    after = records(await pages_of(connector, "orders", pages[-1].cursor))
    assert [(r["id"], r["note"]) for r in after if r["note"]] == [
        (2, "moved"), (7, "new"), (10, "added"),
    ]  # fmt: skip


async def test_an_integer_cursor_starts_right_after_the_end_without_lookback(
    db: asyncpg.Connection, make: Make
) -> None:
    await db.execute("CREATE TABLE events (id int PRIMARY KEY, version bigint NOT NULL)")
    await db.executemany("INSERT INTO events VALUES ($1, $2)", [(i, i // 2) for i in range(10)])
    connector = await make(tables={"events": {"cursor": "version"}}, page_size=4)
    first = await pages_of(connector, "events", None)
    assert ids(first) == list(range(10))
    assert connector.reads_in_full(await spec_of(connector, "events"), None)
    assert not connector.reads_in_full(await spec_of(connector, "events"), first[-1].cursor)
    assert ids(await pages_of(connector, "events", first[-1].cursor)) == []
    await db.execute("UPDATE events SET version = 100 WHERE id = 3")
    assert ids(await pages_of(connector, "events", first[-1].cursor)) == [3]


async def test_a_date_cursor_with_a_lookback_reads_its_last_day_again(
    db: asyncpg.Connection, make: Make
) -> None:
    """A row changed later on the last day keeps that day's date: the next run reads it."""
    day = dt.date(2025, 11, 4)
    await db.execute("CREATE TABLE visits (id int PRIMARY KEY, day date NOT NULL)")
    await db.executemany(
        "INSERT INTO visits VALUES ($1, $2)",
        [(1, day - dt.timedelta(days=2)), (2, day - dt.timedelta(days=1)), (5, day)],
    )
    connector = await make(tables={"visits": {"cursor": "day"}})
    first = await pages_of(connector, "visits", None)
    await db.execute("INSERT INTO visits VALUES (3, $1)", day)  # a lower key, the same day
    second = await pages_of(connector, "visits", first[-1].cursor)
    assert ids(second) == [3, 5]
    assert second[-1].cursor == first[-1].cursor


async def test_rows_with_a_null_cursor_are_left_out_and_never_stall_paging(
    db: asyncpg.Connection, make: Make
) -> None:
    await db.execute("CREATE TABLE notes (id int PRIMARY KEY, edited timestamptz)")
    await db.executemany(
        "INSERT INTO notes VALUES ($1, $2)",
        [(i, None if i % 3 == 0 else T0 + dt.timedelta(seconds=i)) for i in range(1, 11)],
    )
    connector = await make(tables={"notes": {"cursor": "edited"}}, page_size=2)
    first = await pages_of(connector, "notes", None)
    assert ids(first) == [1, 2, 4, 5, 7, 8, 10]


# --- full refresh ------------------------------------------------------------------------


async def test_a_table_without_cursor_is_read_in_full_in_key_order_on_every_run(
    db: asyncpg.Connection, make: Make
) -> None:
    await db.execute("CREATE TABLE countries (code text PRIMARY KEY, name text)")
    await db.executemany(
        "INSERT INTO countries VALUES ($1, $2)",
        [("FR", "France"), ("DE", "Germany"), ("IT", "Italy"), ("ES", "Spain"), ("AT", "Austria")],
    )
    connector = await make(tables=["countries"], page_size=2)
    spec = await spec_of(connector, "countries")
    pages = await pages_of(connector, "countries", None)
    assert [r["code"] for r in records(pages)] == ["AT", "DE", "ES", "FR", "IT"]
    end = pages[-1].cursor
    assert connector.reads_in_full(spec, None)
    assert connector.reads_in_full(spec, end)
    assert not connector.reads_in_full(spec, pages[0].cursor), "a page cursor reads the rest"
    assert [
        r["code"] for r in records(await pages_of(connector, "countries", pages[1].cursor))
    ] == ["IT"]
    await db.execute("DELETE FROM countries WHERE code = 'DE'")
    await db.execute("INSERT INTO countries VALUES ('BE', 'Belgium')")
    again = records(await pages_of(connector, "countries", end))
    assert [r["code"] for r in again] == ["AT", "BE", "ES", "FR", "IT"], "the table as it is now"


async def test_without_tables_every_table_of_the_schema_is_read_in_full(
    db: asyncpg.Connection, make: Make
) -> None:
    await db.execute(
        """CREATE TABLE b_items (id int PRIMARY KEY);
        CREATE TABLE a_users (id int PRIMARY KEY, name text);
        CREATE VIEW c_view AS SELECT * FROM a_users;
        CREATE TABLE d_parts (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
        CREATE TABLE d_parts_2025 PARTITION OF d_parts
            FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
        INSERT INTO d_parts VALUES (1, '2025-05-01');"""
    )
    connector = await make()
    tables = await connector.tables()
    assert [(t.name, t.primary_key) for t in tables] == [
        ("a_users", ("id",)), ("b_items", ("id",)), ("d_parts", ("id", "at")),
    ]  # fmt: skip
    assert all(connector.reads_in_full(t, None) for t in tables)
    assert records(await pages_of(connector, "d_parts", None)) == [
        {"id": 1, "at": dt.date(2025, 5, 1)}
    ]


async def test_a_view_named_in_tables_is_read_by_its_given_key(
    db: asyncpg.Connection, make: Make
) -> None:
    await orders(db, [(1, T0), (2, T0)])
    await db.execute("CREATE VIEW recent AS SELECT id AS order_id, updated_at FROM orders")
    connector = await make(tables={"recent": {"cursor": "updated_at", "key": ["order_id"]}})
    assert [r["order_id"] for r in records(await pages_of(connector, "recent", None))] == [1, 2]


async def test_a_cursor_made_for_another_cursor_column_or_key_reads_the_table_again(
    db: asyncpg.Connection, make: Make
) -> None:
    await orders(db, [(1, T0), (2, T0)])
    by_time = await make(tables={"orders": {"cursor": "updated_at"}})
    end = (await pages_of(by_time, "orders", None))[-1].cursor
    full = await make(tables=["orders"])
    spec = await spec_of(full, "orders")
    assert full.reads_in_full(spec, end)
    with capture_logs() as logs:
        assert ids(await pages_of(full, "orders", end)) == [1, 2]
    assert [e["event"] for e in logs] == ["postgres_cursor_reset"]


async def test_a_cursor_of_another_connector_is_refused(db: asyncpg.Connection, make: Make) -> None:
    await orders(db, [(1, T0)])
    connector = await make(tables={"orders": {"cursor": "updated_at"}})
    with pytest.raises(ConnectorError, match="is not a postgres connector cursor"):
        await pages_of(connector, "orders", "g3@10")
    assert not connector.reads_in_full(await spec_of(connector, "orders"), "g3@10")


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dsn": None}, "options.dsn is required"),
        ({"dsn": "host=db user=x"}, "options.dsn='host=db user=x' is invalid"),
        ({"dsn": f"mysql://u:{PASSWORD}@h/db"}, "options.dsn='mysql://u:***@h/db' is invalid"),
        ({"schema": ""}, "options.schema='' is invalid"),
        ({"tables": []}, "options.tables=[] is invalid"),
        ({"tables": ["a", "a"]}, "'a' is named twice"),
        ({"tables": {"orders": {"cursor": 5}}}, "options.tables.orders.cursor=5 is invalid"),
        ({"tables": {"orders": {"curser": "x"}}}, "options.tables.orders.curser is unknown"),
        ({"tables": {"orders": {"key": []}}}, "options.tables.orders.key=[] is invalid"),
        ({"tables": {"orders": {"key": ["a", "a"]}}}, "options.tables.orders.key="),
        ({"tables": {"orders": "updated_at"}}, "options.tables.orders='updated_at' is invalid"),
        ({"lookback_s": -1}, "options.lookback_s=-1 is invalid"),
        ({"lookback_s": True}, "options.lookback_s=True is invalid"),
        ({"page_size": 0}, "options.page_size=0 is invalid"),
        ({"pagesize": 10}, "options.pagesize is unknown"),
    ],
)
def test_bad_options_are_a_config_error_naming_the_option(
    options: dict[str, Any], message: str
) -> None:
    base = {"dsn": f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/x", **options}
    if base["dsn"] is None:
        del base["dsn"]
    with pytest.raises(ConfigError) as caught:
        registry.create(ConnectorConfig("shop", "postgres", "shop-1", None, base))
    assert message in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_the_example_in_docs_connectors_md_loads(tmp_path: Path) -> None:
    """docs/connectors.md's PostgreSQL example is a valid connectors file (docs that run)."""
    docs = Path(__file__).parents[2] / "docs" / "connectors.md"
    marker = "<!-- tests/integration/test_postgres_source.py loads this example -->\n```yaml\n"
    example = tmp_path / "connectors.yaml"
    example.write_text(docs.read_text().split(marker, 1)[1].split("```", 1)[0])
    env = {"SHOP_DSN": f"postgresql://user:{PASSWORD}@host:5432/db"}
    (loaded,) = load_connectors(example, "acme", env=env)
    assert PASSWORD not in repr(loaded)
    connector = registry.create(loaded)
    assert isinstance(connector, PostgresConnector)
    assert connector.dsn == "postgresql://user:***@host:5432/db"
    assert (connector.schema, connector.lookback_s, connector.page_size) == ("public", 5, 5000)
    assert connector.choices == {
        "orders": Choice("updated_at"),
        "customers": Choice("updated_at", ("customer_id",)),
        "countries": Choice(),
    }


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (["orders", "nope"], "options.tables: {schema}.nope does not exist"),
        ({"orders": {"cursor": "changed_at"}},
         "options.tables.orders.cursor: table {schema}.orders has no column 'changed_at'"),
        ({"orders": {"key": ["order_no"]}},
         "options.tables.orders.key: table {schema}.orders has no column 'order_no'"),
        ({"orders": {"cursor": "note"}}, "a cursor column must be a timestamp, date, integer"),
        (["log"], "table {schema}.log has no primary key: set options.tables.log.key"),
    ],
)  # fmt: skip
async def test_catalog_mistakes_are_connector_errors_naming_table_and_option(
    db: asyncpg.Connection, make: Make, schema: str, tables: Any, message: str
) -> None:
    await orders(db, [])
    await db.execute("CREATE TABLE log (at timestamptz, line text)")
    connector = await make(tables=tables)
    with pytest.raises(ConnectorError) as caught:
        await connector.tables()
    assert message.format(schema=schema) in str(caught.value)


async def test_a_missing_schema_is_named(make: Make) -> None:
    connector = await make(schema="no_such_schema")
    with pytest.raises(ConnectorError, match="schema 'no_such_schema' does not exist"):
        await connector.tables()


async def test_reading_before_open_says_so() -> None:
    connector = PostgresConnector(config("postgresql://u@127.0.0.1:1/x"))
    with pytest.raises(ConnectorError, match="is not open"):
        await connector.tables()
    await connector.close()
    await connector.close()


def exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


@pytest.mark.parametrize(
    "target",
    ["127.0.0.1:1/postgres", "127.0.0.1:5432/aam_dcl_no_such_db"],
    ids=["refused", "no-database"],
)
async def test_a_failed_connect_shows_the_dsn_masked_and_never_the_password(
    target: str, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = f"postgresql://postgres:{PASSWORD}@{target}?sslmode=disable&password={PASSWORD}"
    connector = PostgresConnector(config(dsn))
    with (
        caplog.at_level(logging.DEBUG),
        capture_logs() as logs,
        pytest.raises(ConnectorError) as caught,
    ):
        await connector.open()
    text = exception_text(caught.value)
    assert "cannot connect to postgresql://postgres:***@" in text
    assert PASSWORD not in text
    assert PASSWORD not in repr(logs) + caplog.text
    await connector.close()


async def test_the_password_never_reaches_the_logs_of_a_sync(
    db: asyncpg.Connection, make: Make, redis: aioredis.Redis, settings: Settings
) -> None:
    await orders(db, [(i, T0 + dt.timedelta(seconds=i)) for i in range(1, 30)])
    connector = await make(tables={"orders": {"cursor": "updated_at"}}, page_size=4)
    settings = settings.model_copy(update={"batch_chunk_size": 5, "log_level": "DEBUG"})
    with capture_logs() as logs:
        result = await SyncRunner(settings, redis, connector).run_once()
        await pages_of(connector, "orders", '{"v":1,"by":"x","key":["id"],"end":null}')
    assert result.records == 29
    assert logs, "the run logged"
    assert PASSWORD not in repr(logs)
    assert PASSWORD not in connector.dsn


async def test_the_bridge_killed_mid_run_resumes_with_every_row_once(
    db: asyncpg.Connection,
    schema: str,
    pg_dsn: str,
    redis_url: str,
    redis: aioredis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kill -9 of the bridge process twice while it publishes a table of 9000 rows in pages
    of 40 (seven rows share each updated_at, so pages split ties by key); the restarted
    bridge resumes the same run from its checkpoint: one run, chunks 1..N with no gap and no
    batch id twice, every row exactly once. A resume from the table's start (or a new run)
    repeats rows; one past the checkpoint loses them."""
    rows = 9000
    await orders(db, [(i, T0 + dt.timedelta(seconds=i // 7)) for i in range(rows)])
    monkeypatch.setenv("SHOP_DSN", with_password(pg_dsn))  # the process env of each bridge
    monkeypatch.setenv("AAM_LEASE_TTL_MS", "2000")  # the killed bridge's lease: not 15 s
    (tmp_path / "connectors.yaml").write_text(
        "connectors:\n"
        "  - name: shop\n"
        "    type: postgres\n"
        "    schedule: once\n"
        "    options:\n"
        '      dsn: "${SHOP_DSN}"\n'
        f"      schema: {schema}\n"
        "      tables: {orders: {cursor: updated_at}}\n"
        "      page_size: 40\n"
    )
    batches = await killed_twice_then_run(redis, redis_url, tmp_path, "shop", [30, 150])
    batch_ids = [b["batch_id"] for b in batches]
    assert len({i.rsplit("_", 2)[1] for i in batch_ids}) == 1, "one run, one start"
    chunks = [int(i.rsplit("_", 1)[1]) for i in batch_ids]
    assert chunks == list(range(1, len(batch_ids) + 1)), "a gap in the chunks"
    got = [int(r["id"]) for b in batches for t in b["tables"] if t["name"] == "orders"
           for r in t.get("records", [])]  # fmt: skip
    assert len(got) == rows, f"{len(got)} rows published, {rows} expected"
    assert sorted(got) == list(range(rows)), "a row lost or sent twice"
    assert PASSWORD not in (tmp_path / "bridge.log").read_text()
