"""Rows/s of each sink against a raw COPY baseline (the bar: the PostgreSQL sink at >= 0.5x COPY).

    .venv/bin/python bench/sink_speed.py [--rows 100000] [--pg-dsn postgresql://...]

100 000 seven-field CRM rows in batches of 200 records, 100 batches per write(). Each sink
writes into a throwaway store: a DuckDB file in a temp dir, a fresh PostgreSQL schema
(dropped afterwards). "fresh keys" inserts new primary keys; "same keys" rewrites them all
(every row an update); "append" has no primary key. The baseline is asyncpg
copy_records_to_table of the same records (tuples built and datetimes parsed in the timing)
into a plain table of the same column types, and into one with the same primary key.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from operator import itemgetter
from pathlib import Path

import asyncpg

from aam_dcl.messages import Batch, Record
from aam_dcl.schema import table_batch
from dcl_worker.sinks.base import Sink
from dcl_worker.sinks.duckdb import DuckDBSink
from dcl_worker.sinks.null import NullSink
from dcl_worker.sinks.postgres import PostgresSink

CHUNK = 200
BATCHES_PER_WRITE = 100
FIELDS = ["id", "name", "stage", "amount", "probability", "is_closed", "close_date"]
STAGES = ["Prospecting", "Qualification", "Negotiation", "Closed Won", "Closed Lost"]


def crm_rows(n: int, seed: int = 7) -> list[Record]:
    rnd = random.Random(seed)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    return [
        {
            "id": f"0063000000{i:08d}",
            "name": f"Opportunity {i} for Account {rnd.randrange(5000)}",
            "stage": rnd.choice(STAGES),
            "amount": round(rnd.uniform(100, 250_000), 2),
            "probability": rnd.randrange(101),
            "is_closed": rnd.random() < 0.3,
            "close_date": (start + dt.timedelta(minutes=rnd.randrange(525_600))).isoformat()[:19]
            + "Z",
        }
        for i in range(n)
    ]


def writes(rows: list[Record], primary_key: list[str], run: str, table: str) -> list[list[Batch]]:
    """The rows as stream batches of CHUNK records, grouped BATCHES_PER_WRITE per write()."""
    batches = []
    for n, start in enumerate(range(0, len(rows), CHUNK), 1):
        chunk = rows[start : start + CHUNK]
        tb = table_batch(table, chunk, primary_key=primary_key, max_samples=8)
        batches.append(Batch(f"salesforce_{run}_{n}", "salesforce", "sf-bench", [tb]))
    return [batches[i : i + BATCHES_PER_WRITE] for i in range(0, len(batches), BATCHES_PER_WRITE)]


async def timed(label: str, rows: int, body: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await body()
    rate = rows / (time.perf_counter() - started)
    print(f"  {label:<44} {rate:>10,.0f} rows/s", flush=True)
    return rate


async def sink_case(
    sink: Sink,
    label: str,
    rows: list[Record],
    pk: list[str],
    run: str,
    table: str = "opportunities",
) -> float:
    groups = writes(rows, pk, run, table)

    async def body() -> None:
        for group in groups:
            duplicates = await sink.write(group)
            assert not duplicates, duplicates

    return await timed(label, len(rows), body)


async def raw_copy(pg_dsn: str, schema: str, rows: list[Record], keyed: bool) -> float:
    con = await asyncpg.connect(pg_dsn, server_settings={"timezone": "UTC"})
    table = "raw_copy_pk" if keyed else "raw_copy"
    try:
        await con.execute(
            f'CREATE TABLE "{schema}".{table} (id text{" PRIMARY KEY" if keyed else ""}, '
            "name text, stage text, amount double precision, probability bigint, "
            "is_closed boolean, close_date timestamptz)"
        )
        get = itemgetter(*FIELDS)
        per_write = CHUNK * BATCHES_PER_WRITE

        async def body() -> None:
            for start in range(0, len(rows), per_write):
                records = []
                for r in rows[start : start + per_write]:
                    values = get(r)
                    records.append((*values[:6], dt.datetime.fromisoformat(values[6])))
                await con.copy_records_to_table(
                    table, schema_name=schema, records=records, columns=FIELDS
                )

        label = "raw COPY into a table with the same key" if keyed else "raw COPY (baseline)"
        return await timed(label, len(rows), body)
    finally:
        await con.close()


async def main(rows_n: int, pg_dsn: str) -> None:
    rows = crm_rows(rows_n)
    print(f"{rows_n:,} rows, {CHUNK} records/batch, {BATCHES_PER_WRITE} batches/write", flush=True)

    null = NullSink("null://", "bench")
    await sink_case(null, "null sink (bookkeeping only)", rows, ["id"], "1")

    with tempfile.TemporaryDirectory() as tmp:
        duck = DuckDBSink(f"duckdb://{Path(tmp) / 'bench.duckdb'}", "bench")
        await duck.open()
        try:
            await sink_case(duck, "duckdb: upsert, fresh keys", rows, ["id"], "1")
            await sink_case(duck, "duckdb: upsert, same keys (all updates)", rows, ["id"], "2")
            await sink_case(duck, "duckdb: append (no primary key)", rows, [], "3", "events")
        finally:
            await duck.close()

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    pg = PostgresSink(f"{pg_dsn}?schema={schema}", "bench")
    await pg.open()
    try:
        raw = await raw_copy(pg_dsn, schema, rows, keyed=False)
        raw_keyed = await raw_copy(pg_dsn, schema, rows, keyed=True)
        fresh = await sink_case(pg, "postgres: upsert, fresh keys", rows, ["id"], "1")
        same = await sink_case(pg, "postgres: upsert, same keys (all updates)", rows, ["id"], "2")
        append = await sink_case(pg, "postgres: append (no primary key)", rows, [], "3", "events")
    finally:
        await pg.close()
        con = await asyncpg.connect(pg_dsn)
        try:
            await con.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await con.close()
    print(
        f"postgres / raw COPY: fresh keys {fresh / raw:.2f}x, same keys {same / raw:.2f}x, "
        f"append {append / raw:.2f}x; fresh keys / keyed raw COPY {fresh / raw_keyed:.2f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.pg_dsn))
