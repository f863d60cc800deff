"""The chaos suite's verdict: does the DCL store hold exactly what the connectors generated?

Expected rows come from ``DemoConnector.expected_state`` for the sync runs each connector
completed; stored rows are read back from PostgreSQL or DuckDB. Rows are matched by primary
key and compared by a content hash of the row with every value normalised to one string
form per store column type (the typed store gives back datetimes, floats and JSON text
where the connector produced JSON strings and numbers). The store's inbox adds two checks
the rows alone cannot make: every chunk of every run was applied (no gap in the chunk
numbers of a run) and no record was applied twice under another batch id.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
import orjson

from aam_bridge.connectors.base import ConnectorConfig
from aam_bridge.connectors.demo import DemoConnector

INBOX = "_dcl_inbox"
RESERVED_PREFIX = "_dcl_"
SAMPLES = 5  # examples kept per kind of problem and table

# information_schema type names of both stores -> the message format's column types
_KINDS = {
    "text": "string",
    "varchar": "string",
    "character varying": "string",
    "bigint": "integer",
    "integer": "integer",
    "double precision": "numeric",
    "double": "numeric",
    "numeric": "numeric",  # PostgreSQL's exact numeric
    "decimal(38,9)": "numeric",  # DuckDB's exact numeric (docs/sinks.md)
    "boolean": "boolean",
    "timestamp with time zone": "datetime",
    "date": "date",
    "jsonb": "json",
    "json": "json",
}

Key = tuple[Any, ...]


@dataclass
class StoreTable:
    columns: dict[str, str]  # column -> logical type (the store's own columns left out)
    rows: list[dict[str, Any]]


@dataclass
class Store:
    tables: dict[str, StoreTable]
    inbox: list[tuple[str, str, int]]  # (batch_id, connector, record_count)


@dataclass
class Expected:
    tables: dict[str, dict[Key, dict[str, Any]]]  # store table -> primary key -> record
    primary_keys: dict[str, tuple[str, ...]]
    generated: dict[str, int]  # connector -> records its runs yielded


@dataclass
class Verdict:
    expected_rows: int = 0
    landed_rows: int = 0
    missing: int = 0
    duplicated: int = 0
    mismatched: int = 0
    unexpected: int = 0
    records_generated: int = 0
    records_applied: int = 0
    batches_applied: int = 0
    runs_in_inbox: dict[str, int] = field(default_factory=dict)
    chunk_gaps: list[str] = field(default_factory=list)  # batch ids missing inside a run
    samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.missing == self.duplicated == self.mismatched == self.unexpected == 0
            and not self.chunk_gaps
            and self.records_applied == self.records_generated
            and self.landed_rows == self.expected_rows
        )


# --- expected ---------------------------------------------------------------------------


async def expected_state(configs: Iterable[ConnectorConfig], runs: Mapping[str, int]) -> Expected:
    """The rows after ``runs[connector]`` completed runs, and the records those runs yield."""
    out = Expected({}, {}, {})
    for config in configs:
        connector = DemoConnector(config)
        completed = runs[config.name]
        out.generated[config.name] = 0
        for spec in await connector.tables():
            table = f"{config.name}__{spec.name}"
            out.primary_keys[table] = spec.primary_key
            out.tables[table] = connector.expected_state(spec.name, completed - 1)
            cursor: str | None = None  # run 1 reads from None, run g+1 from g{g-1}
            for run in range(completed):
                async for page in connector.read(spec, cursor):
                    out.generated[config.name] += len(page.records)
                cursor = f"g{run}"
    return out


# --- reading the store ------------------------------------------------------------------


async def read_postgres(dsn: str, schema: str) -> Store:
    con = await asyncpg.connect(dsn)
    try:
        columns: dict[str, dict[str, str]] = defaultdict(dict)
        for r in await con.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = $1 ORDER BY table_name, ordinal_position",
            schema,
        ):
            columns[r["table_name"]][r["column_name"]] = r["data_type"]
        tables: dict[str, StoreTable] = {}
        for name, types in columns.items():
            if name.startswith(RESERVED_PREFIX):  # the inbox and the owner record
                continue
            rows = await con.fetch(f'SELECT * FROM "{schema}"."{name}"')
            tables[name] = StoreTable(_logical(types), [dict(r) for r in rows])
        inbox = [
            (r[0], r[1], int(r[2]))
            for r in await con.fetch(
                f'SELECT batch_id, connector, record_count FROM "{schema}"."{INBOX}"'
            )
        ]
    finally:
        await con.close()
    return Store(tables, inbox)


def read_duckdb(path: Path) -> Store:
    with duckdb.connect(str(path), read_only=True) as con:
        columns: dict[str, dict[str, str]] = defaultdict(dict)
        for table, column, kind in con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "ORDER BY table_name, ordinal_position"
        ).fetchall():
            columns[table][column] = kind
        tables: dict[str, StoreTable] = {}
        for name, types in columns.items():
            if name.startswith(RESERVED_PREFIX):  # the inbox and the owner record
                continue
            cur = con.execute(f'SELECT * FROM "{name}"')
            names = [d[0] for d in cur.description or []]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            tables[name] = StoreTable(_logical(types), rows)
        inbox = [
            (str(b), str(c), int(n))
            for b, c, n in con.execute(
                f"SELECT batch_id, connector, record_count FROM {INBOX}"
            ).fetchall()
        ]
    return Store(tables, inbox)


def _logical(types: Mapping[str, str]) -> dict[str, str]:
    return {
        column: _KINDS.get(kind.lower(), "string")
        for column, kind in types.items()
        if not column.startswith(RESERVED_PREFIX)
    }


# --- comparing --------------------------------------------------------------------------


def compare(expected: Expected, store: Store) -> Verdict:
    v = Verdict()
    v.records_generated = sum(expected.generated.values())
    v.records_applied = sum(n for _, _, n in store.inbox)
    v.batches_applied = len(store.inbox)
    _check_chunks(store.inbox, v)
    for table in sorted(set(expected.tables) | set(store.tables)):
        want = expected.tables.get(table, {})
        stored = store.tables.get(table, StoreTable({}, []))
        pk = expected.primary_keys.get(table, ())
        v.expected_rows += len(want)
        v.landed_rows += len(stored.rows)
        if not pk:
            v.unexpected += len(stored.rows)
            v.samples.append(f"{table}: a table no connector generated ({len(stored.rows)} rows)")
            continue
        got: dict[Key, dict[str, Any]] = {}
        counts: Counter[Key] = Counter()
        for row in stored.rows:
            key = tuple(row[k] for k in pk)
            counts[key] += 1
            got[key] = row
        doubled = [(k, n) for k, n in counts.items() if n > 1]
        v.duplicated += sum(n - 1 for _, n in doubled)
        v.samples += [f"{table}: key {k} stored {n} times" for k, n in doubled[:SAMPLES]]
        missing = [k for k in want if k not in got]
        v.missing += len(missing)
        v.samples += [f"{table}: key {k} missing" for k in missing[:SAMPLES]]
        extra = [k for k in got if k not in want]
        v.unexpected += len(extra)
        v.samples += [f"{table}: key {k} was never generated" for k in extra[:SAMPLES]]
        # Columns the connector produced but the store lacks compare as "absent".
        columns = dict.fromkeys({c for record in want.values() for c in record}, "absent")
        columns.update(stored.columns)
        shown = 0
        for key, record in want.items():
            row = got.get(key)
            if row is None or row_hash(record, columns) == row_hash(row, columns):
                continue
            v.mismatched += 1
            if shown < SAMPLES:
                shown += 1
                v.samples.append(f"{table}: key {key} differs: {_diff(record, row, columns)}")
    return v


def _check_chunks(inbox: list[tuple[str, str, int]], v: Verdict) -> None:
    """Within each run (``{connector}_{run_start_ms}_{n}``) the chunks must be 1..max."""
    runs: dict[tuple[str, str], set[int]] = defaultdict(set)
    for batch_id, _, _ in inbox:
        head, start, number = batch_id.rsplit("_", 2)
        runs[(head, start)].add(int(number))
    for (connector, start), numbers in sorted(runs.items()):
        for n in range(1, max(numbers) + 1):
            if n not in numbers:
                v.chunk_gaps.append(f"{connector}_{start}_{n}")
    v.runs_in_inbox = dict(Counter(connector for connector, _ in runs))


def row_hash(row: Mapping[str, Any], columns: Mapping[str, str]) -> str:
    """Digest of a row over the store's columns, each value in its normal string form."""
    parts = [[c, normalise(row.get(c), kind)] for c, kind in sorted(columns.items())]
    return hashlib.blake2b(orjson.dumps(parts), digest_size=16).hexdigest()


def normalise(value: Any, kind: str) -> str:
    """One string per value, the same whether it is the connector's JSON or the store's type.

    A value that does not fit the column type gets a ``!`` form, which never equals a
    fitting value's form, so it shows up as a mismatch.
    """
    if value is None:
        return "null"
    if kind == "absent":  # the store has no such column, so it cannot hold this value
        return f"!absent:{value!r}"
    try:
        if kind == "datetime":
            moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
            if not isinstance(moment, dt.datetime) or moment.tzinfo is None:
                raise TypeError(value)
            return moment.astimezone(dt.UTC).isoformat()
        if kind == "date":
            day = dt.date.fromisoformat(value) if isinstance(value, str) else value
            if isinstance(day, dt.datetime) or not isinstance(day, dt.date):
                raise TypeError(value)
            return day.isoformat()
        if kind == "json":
            parsed = orjson.loads(value) if isinstance(value, str) else value
            return orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS).decode()
        if kind in ("numeric", "integer"):
            if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
                raise TypeError(value)
            # Exact: the connector's float stands for its shortest repr (what the JSON said),
            # the store's Decimal for itself; 284636.78 and Decimal("284636.780000000") agree.
            number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
            if kind == "integer" and number != number.to_integral_value():
                raise TypeError(value)
            return format(number.normalize(), "f") if number else "0"
        if kind == "boolean":
            if not isinstance(value, bool):
                raise TypeError(value)
            return "true" if value else "false"
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    except (TypeError, ValueError, orjson.JSONDecodeError):
        return f"!{type(value).__name__}:{value!r}"


def _diff(record: Mapping[str, Any], row: Mapping[str, Any], columns: Mapping[str, str]) -> str:
    changed = [
        f"{c}: expected {normalise(record.get(c), k)}, stored {normalise(row.get(c), k)}"
        for c, k in sorted(columns.items())
        if normalise(record.get(c), k) != normalise(row.get(c), k)
    ]
    batch = row.get("_dcl_batch_id")
    return "; ".join(changed) + (f" (row written by batch {batch})" if batch else "")
