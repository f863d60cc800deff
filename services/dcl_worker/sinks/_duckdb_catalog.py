"""DuckDB's catalog and DDL for the DuckDB sink: what a stored table looks like, how one is
created or widened, and the lookups that ignore case as DuckDB does. ``numeric`` is
``DECIMAL(38, 9)`` (``_decimals``); a ``DOUBLE`` column from before becomes one on first use,
or VARCHAR if one of its values has more digits than that holds."""

from __future__ import annotations

from typing import Any

import duckdb

from dcl_worker.sinks._decimals import DECIMAL_SCALE, DUCKDB_DECIMAL
from dcl_worker.sinks._sql import (
    BATCH_ID_COLUMN,
    DELETED_AT_COLUMN,
    FOLD_SQL,
    INGESTED_AT_COLUMN,
    RESERVED_PREFIX,
    VERSION_COLUMN,
    TableChange,
    TableInfo,
    fold,
    quote_ident,
)

TYPES = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "numeric": DUCKDB_DECIMAL,
    "boolean": "BOOLEAN",
    "datetime": "TIMESTAMPTZ",
    "date": "DATE",
    "json": "JSON",
}


FLOAT_TYPE = "DOUBLE"  # numeric's type before it was exact

# information_schema spelling -> logical type; anything else (a column made by hand) is
# treated as string, which never asks for a change.
_FROM_STORE = {
    "VARCHAR": "string",
    "BIGINT": "integer",
    DUCKDB_DECIMAL: "numeric",
    FLOAT_TYPE: "numeric",  # inexact: widened on first use
    "BOOLEAN": "boolean",
    "TIMESTAMP WITH TIME ZONE": "datetime",
    "DATE": "date",
    "JSON": "json",
}


def stored_schema(con: duckdb.DuckDBPyConnection, schema: str) -> str | None:
    """The stored spelling of ``schema`` (DuckDB ignores the case of ASCII letters), or None."""
    row = con.execute(
        "SELECT schema_name FROM information_schema.schemata WHERE catalog_name = "
        f"current_database() AND {FOLD_SQL.format('schema_name')} = ? ORDER BY 1 LIMIT 1",
        [fold(schema)],
    ).fetchone()
    return str(row[0]) if row else None


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    row = con.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema = ? AND table_name = ?",
        [schema, table],
    ).fetchone()
    return row is not None


def table_of_other_case(con: duckdb.DuckDBPyConnection, table: str) -> str | None:
    """A stored table whose name differs from ``table`` only in case (DuckDB: the same table)."""
    row = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = "
        f"current_schema() AND {FOLD_SQL.format('table_name')} = ? AND table_name <> ? LIMIT 1",
        [fold(table), table],
    ).fetchone()
    return str(row[0]) if row else None


def first_column(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> list[str]:
    return [str(row[0]) for row in con.execute(sql, params or []).fetchall()]


def read_table(con: duckdb.DuckDBPyConnection, table: str) -> TableInfo | None:
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
        [table],
    ).fetchall()
    if not rows:
        return None
    columns = {
        name: _FROM_STORE.get(sql_type, "string")
        for name, sql_type in rows
        if not name.startswith(RESERVED_PREFIX)
    }
    pk = con.execute(
        "SELECT constraint_column_names FROM duckdb_constraints() WHERE schema_name = "
        "current_schema() AND table_name = ? AND constraint_type = 'PRIMARY KEY'",
        [table],
    ).fetchone()
    versioned = any(name == VERSION_COLUMN for name, _ in rows)
    deletable = any(name == DELETED_AT_COLUMN for name, _ in rows)
    inexact = [c for c, sql_type in rows if sql_type == FLOAT_TYPE and c in columns]
    return TableInfo(
        columns, list(pk[0]) if pk else [], versioned, deletable=deletable, inexact=inexact
    )


def alter_table(con: duckdb.DuckDBPyConnection, table: str, change: TableChange) -> None:
    name = quote_ident(table)
    for column in change.from_float:
        if change.widen.get(column) == "numeric" and not _doubles_fit(con, name, column):
            change.widen[column] = change.info.columns[column] = "string"
    if change.create or set(change.widen) & set(change.info.primary_key):
        # DuckDB cannot change the type of a key column: rebuild the table around it.
        create_table(con, table if change.create else f"{table}__dcl_rebuild", change.info)
        if not change.create:
            copy_into_rebuild(con, table, change.info)
        return
    if change.add_version:  # a table from before row versions: its rows are version 0
        # No IF NOT EXISTS: DuckDB refuses it with NOT NULL. The catalog was read in this
        # transaction, and only this process can open the file.
        con.execute(f"ALTER TABLE {name} ADD COLUMN {VERSION_COLUMN} BIGINT NOT NULL DEFAULT 0")
    if change.add_deleted_at:  # a table from before deletes: its rows are live
        con.execute(f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {DELETED_AT_COLUMN} TIMESTAMPTZ")
    for column, logical in change.add.items():
        con.execute(
            f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {quote_ident(column)} {TYPES[logical]}"
        )
    for column, logical in change.widen.items():
        stored = None if column in change.from_float else change.before.get(column)
        cast = _cast(column, stored, logical)
        con.execute(
            f"ALTER TABLE {name} ALTER COLUMN {quote_ident(column)} SET DATA TYPE "
            f"{TYPES[logical]} USING {cast}"
        )


def _cast(column: str, stored: str | None, logical: str) -> str:
    """``column`` as ``logical``'s type; a decimal as text without DECIMAL(38, 9)'s trailing
    zeros (``5.5``, not ``5.500000000``), as PostgreSQL's numeric prints it."""
    ref = quote_ident(column)
    if stored == "numeric" and logical == "string":
        return f"rtrim(rtrim(CAST({ref} AS VARCHAR), '0'), '.')"
    return f"CAST({ref} AS {TYPES[logical]})"


def _doubles_fit(con: duckdb.DuckDBPyConnection, name: str, column: str) -> bool:
    """Whether every value of a DOUBLE column is exact in DECIMAL(38, 9) (the cast would fail
    past 29 integer digits, and round past 9 decimals)."""
    ref = quote_ident(column)
    row = con.execute(
        f"SELECT count(*) FROM {name} WHERE {ref} IS NOT NULL AND (NOT isfinite({ref}) "
        f"OR abs({ref}) >= 1e29 OR round({ref}, {DECIMAL_SCALE}) <> {ref})"
    ).fetchone()
    return row is not None and row[0] == 0


def create_table(con: duckdb.DuckDBPyConnection, table: str, info: TableInfo) -> None:
    defs = [f"{quote_ident(c)} {TYPES[t]}" for c, t in info.columns.items()]
    defs += [
        f"{BATCH_ID_COLUMN} VARCHAR",
        f"{VERSION_COLUMN} BIGINT NOT NULL DEFAULT 0",
        f"{INGESTED_AT_COLUMN} TIMESTAMPTZ",
        f"{DELETED_AT_COLUMN} TIMESTAMPTZ",
    ]
    if info.primary_key:
        defs.append(f"PRIMARY KEY ({', '.join(quote_ident(c) for c in info.primary_key)})")
    con.execute(f"CREATE TABLE IF NOT EXISTS {quote_ident(table)} ({', '.join(defs)})")


def copy_into_rebuild(con: duckdb.DuckDBPyConnection, table: str, info: TableInfo) -> None:
    rebuild = f"{table}__dcl_rebuild"
    stored = read_table(con, table)
    old = stored.columns if stored else {}
    meta = [BATCH_ID_COLUMN, INGESTED_AT_COLUMN]
    if stored and stored.versioned:  # otherwise the rebuilt rows take the default, 0
        meta.append(VERSION_COLUMN)
    if stored and stored.deletable:  # otherwise the rebuilt rows are live
        meta.append(DELETED_AT_COLUMN)
    columns = [c for c in info.columns if c in old] + meta
    names = ", ".join(quote_ident(c) for c in columns)
    casts = ", ".join(
        _cast(c, None if c in stored.inexact else old[c], info.columns[c])
        if stored and c in info.columns
        else quote_ident(c)
        for c in columns
    )
    con.execute(
        f"INSERT INTO {quote_ident(rebuild)} ({names}) SELECT {casts} FROM {quote_ident(table)}"
    )
    con.execute(f"DROP TABLE {quote_ident(table)}")
    con.execute(f"ALTER TABLE {quote_ident(rebuild)} RENAME TO {quote_ident(table)}")
