"""Exact decimals, through the sink contract suite's fixtures (``test_sinks``): a ``numeric``
column is PostgreSQL ``numeric`` and DuckDB ``DECIMAL(38, 9)``, sums are exact, numbers of
any length arrive (``messages.loads`` parses them as Decimal) and are never rounded, and a
floating-point column from before is widened in place on first use.
"""

from __future__ import annotations

import random
from decimal import Decimal, localcontext
from typing import Any

import pytest

from aam_bridge.connectors.base import ConnectorConfig, TableSpec
from aam_bridge.connectors.demo import DemoConnector
from aam_dcl.messages import Batch, decode, encode, entry
from aam_dcl.schema import table_batch
from tests.integration import test_sinks as contract
from tests.integration.test_sinks import EXACT_NUMERIC, AnySink, Sink, Store, batch, stores_only

sink, store = contract.sink, contract.store  # the contract suite's fixtures: every sink

MAX_PAYLOAD = 1 << 26
TARGET = Decimal("1129863635.24")  # printed 1129863635.2400036 when numeric was a double
LONG = Decimal("12345678901234567890.123456789")  # 29 digits: no double holds it


def wire(b: Batch) -> Batch:
    """The batch as the worker sees it: encoded by the producer, decoded from the stream."""
    return decode(entry(encode(b)), MAX_PAYLOAD)


def amounts_summing_to(total: Decimal, n: int, seed: int = 7) -> list[float]:
    """``n`` amounts of two decimals (floats, as the demo emits them) whose exact sum is
    ``total``."""
    rnd = random.Random(seed)
    parts = [Decimal(rnd.randrange(100, 2_000_000_00)) / 100 for _ in range(n - 1)]
    parts.append(total - sum(parts))
    return [float(p) for p in parts]


def deals(batch_id: str, amounts: list[Any], first_id: int = 0) -> Batch:
    records = [{"id": first_id + i, "amount": a} for i, a in enumerate(amounts)]
    return batch(
        batch_id, records, table="deals", columns=[("id", "integer"), ("amount", "numeric")]
    )


async def scalar(store: Store, sql: str) -> Any:
    rows = await store.query(sql)
    return next(iter(rows[0].values()))


@stores_only
async def test_sums_of_two_decimal_amounts_are_exact(sink: Sink, store: Store) -> None:
    """1129863635.24 split over 1000 rows of two-decimal floats (through the wire, as the
    worker reads them) sums to exactly that, and a 29-digit value arrives whole."""
    amounts = amounts_summing_to(TARGET, 1000)
    await sink.write([wire(deals("crm_1_1", amounts))])
    assert await scalar(store, "SELECT sum(amount) AS s FROM crm__deals") == TARGET

    long_batch = wire(deals("crm_1_2", [LONG, 0.1], first_id=5000))
    assert long_batch.tables[0].records is not None
    assert long_batch.tables[0].records[0]["amount"] == LONG  # parsed as Decimal, not a float
    await sink.write([long_batch])
    assert await scalar(store, "SELECT amount FROM crm__deals WHERE id = 5000") == LONG
    total = await scalar(store, "SELECT sum(amount) AS s FROM crm__deals")
    with localcontext(prec=60):  # the default context rounds to 28 digits
        assert total == TARGET + LONG + Decimal("0.1")
    assert (await store.column_types("crm__deals"))["amount"] in EXACT_NUMERIC


@stores_only
async def test_the_demo_amounts_sum_exactly(sink: Sink, store: Store) -> None:
    """The demo connector's opportunity amounts (floats of two decimals), published and read
    back as the worker does, sum in the store to the exact sum of their decimals."""
    config = ConnectorConfig("salesforce", "demo", "sf-demo", None, {"records": 1500, "seed": 3})
    demo = DemoConnector(config)
    spec = next(t for t in await demo.tables() if t.name == "opportunities")
    records = [r async for page in demo.read(spec, None) for r in page.records]
    assert all(isinstance(r["amount"], float) for r in records)
    batches = [
        wire(_batch(f"salesforce_1_{n}", spec, records[i : i + 200]))
        for n, i in enumerate(range(0, len(records), 200), 1)
    ]
    await sink.write(batches)
    expected = sum(Decimal(repr(r["amount"])) for r in records)
    stored = await scalar(store, "SELECT sum(amount) AS s FROM salesforce__opportunities")
    assert stored == expected


def _batch(batch_id: str, spec: TableSpec, records: list[dict[str, Any]]) -> Batch:
    tb = table_batch(spec.name, records, primary_key=spec.primary_key, max_samples=2)
    return Batch(batch_id, "salesforce", "sf-demo", [tb])


@pytest.mark.parametrize(
    "value",
    ["0.1234567891234", "123456789012345678901234567890.5", "1E-12"],
    ids=["13-decimals", "30-integer-digits", "exponent"],
)
@stores_only
async def test_a_value_duckdb_cannot_hold_exactly_is_never_rounded(
    sink: Sink, store: Store, value: str
) -> None:
    """A value DECIMAL(38, 9) cannot hold (more than 9 decimals or 29 integer digits): DuckDB
    widens the column to string and keeps the digits; PostgreSQL's numeric holds it."""
    await sink.write([wire(deals("crm_1_1", [1.5]))])
    await sink.write([wire(deals("crm_1_2", [Decimal(value)], first_id=1))])
    rows = await store.rows("crm__deals")
    assert Decimal(str(rows[1]["amount"])) == Decimal(value)
    assert Decimal(str(rows[0]["amount"])) == Decimal("1.5")
    if isinstance(rows[1]["amount"], str):  # DuckDB: the column is a string column now
        assert (await store.column_types("crm__deals"))["amount"] == "varchar"
        assert rows[0]["amount"] == "1.5"  # without DECIMAL(38, 9)'s trailing zeros


async def test_every_sink_takes_numbers_of_any_length(sink: AnySink) -> None:
    """Decimals of many digits, in numeric, string and json columns, are accepted by every
    sink (PostgreSQL used to reject a Decimal for a double column)."""
    record = {"id": 1, "amount": LONG, "note": LONG, "doc": {"n": LONG, "xs": [LONG, 1.5]}}
    b = batch("crm_1_1", [record], columns=[("id", "integer"), ("amount", "numeric"),
                                           ("note", "string"), ("doc", "json")])  # fmt: skip
    assert await sink.write([wire(b)]) == set()
    assert await sink.count_rows() == {"crm__contacts": 1}


@stores_only
async def test_long_numbers_in_string_and_json_columns_keep_their_digits(
    sink: Sink, store: Store
) -> None:
    """A Decimal in a string column is its digits; in a json column it stays a number with its
    digits (DuckDB would read both through a double)."""
    record = {"id": 1, "note": LONG, "doc": {"n": LONG}}
    b = batch("crm_1_1", [record], columns=[("id", "integer"), ("note", "string"),
                                           ("doc", "json")])  # fmt: skip
    await sink.write([wire(b)])
    row = (await store.rows())[0]
    assert row["note"] == str(LONG)
    assert str(LONG) in str(row["doc"])


@stores_only
@pytest.mark.parametrize("value", ["12,5", "abc", True], ids=["comma", "word", "boolean"])
async def test_a_value_that_is_no_number_is_a_data_error_naming_the_column(
    sink: Sink, store: Store, value: Any
) -> None:
    """A numeric column's value that spells no number: SinkDataError naming table and column;
    numeric strings are taken exactly."""
    good = deals("crm_1_1", ["12.50", 3])
    await sink.write([good])
    with pytest.raises(Exception, match="column amount") as info:
        await sink.write([deals("crm_1_2", [value], first_id=9)])
    assert "crm__deals" in str(info.value)
    assert sorted(Decimal(str(r["amount"])) for r in await store.rows("crm__deals")) == [3, 12.5]


@stores_only
async def test_a_floating_point_column_from_before_is_widened_in_place(
    sink: Sink, store: Store
) -> None:
    """A table whose numeric column is a double (written before numeric was exact) gets the
    exact type on its first write; the stored values read as their shortest decimals."""
    await store.query(
        "CREATE TABLE crm__deals (id bigint PRIMARY KEY, amount float8, "
        "_dcl_batch_id text, _dcl_version bigint NOT NULL DEFAULT 0, _dcl_ingested_at timestamptz)"
    )
    await store.query("INSERT INTO crm__deals VALUES (1, 1129863635.24, 'old', 0, now())")
    await store.query("INSERT INTO crm__deals VALUES (2, 0.1, 'old', 0, now())")
    await sink.write([wire(deals("crm_1_1", [0.2], first_id=3))])
    assert (await store.column_types("crm__deals"))["amount"] in EXACT_NUMERIC
    total = await scalar(store, "SELECT sum(amount) AS s FROM crm__deals")
    assert total == Decimal("1129863635.54")


@stores_only
async def test_a_floating_point_column_duckdb_cannot_hold_exactly_becomes_string(
    sink: Sink, store: Store
) -> None:
    """A double column holding a value with more than 9 decimals: DuckDB widens it to string
    (its digits kept), PostgreSQL to numeric (the double's shortest decimal)."""
    await store.query(
        "CREATE TABLE crm__deals (id bigint PRIMARY KEY, amount float8, "
        "_dcl_batch_id text, _dcl_version bigint NOT NULL DEFAULT 0, _dcl_ingested_at timestamptz)"
    )
    await store.query("INSERT INTO crm__deals VALUES (1, 0.30000000000000004, 'old', 0, now())")
    await sink.write([wire(deals("crm_1_1", [0.25], first_id=2))])
    rows = await store.rows("crm__deals")
    assert Decimal(str(rows[0]["amount"])) == Decimal("0.30000000000000004")
    assert Decimal(str(rows[1]["amount"])) == Decimal("0.25")
