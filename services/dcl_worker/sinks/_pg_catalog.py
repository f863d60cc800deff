"""PostgreSQL's catalog and DDL for the PostgreSQL sink: what a stored table looks like, how
one is created or widened, and the lookup of a name that differs only in case."""

from __future__ import annotations

import asyncpg

from dcl_worker.sinks._pg_values import TYPES
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

FLOAT_TYPE = "double precision"  # numeric's type before it was exact: widened on first use
_FROM_STORE = {**{sql: logical for logical, sql in TYPES.items()}, FLOAT_TYPE: "numeric"}
_VERSION_DEF = f"{VERSION_COLUMN} bigint NOT NULL DEFAULT 0"
# The transaction's start time, as the inbox's applied_at: COPY need not send it with every row
# (encoding a timestamptz costs asyncpg more than any other column).
_INGESTED_AT_DEF = f"{INGESTED_AT_COLUMN} timestamptz DEFAULT now()"
_DELETED_AT_DEF = f"{DELETED_AT_COLUMN} timestamptz"  # NULL: live


async def table_of_other_case(con: asyncpg.Connection, schema: str, table: str) -> str | None:
    other = await con.fetchval(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
        f"AND {FOLD_SQL.format('c.relname')} = $2 AND c.relname <> $3 LIMIT 1",
        schema,
        fold(table),
        table,
    )
    return None if other is None else str(other)


async def read_table(con: asyncpg.Connection, name: str) -> TableInfo | None:
    """The table ``name`` (schema-qualified) as the sink knows it, or None if there is none."""
    rows = await con.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, "
        "array_position(i.indkey::int2[], a.attnum) AS key_pos, a.atthasdef "
        "FROM pg_attribute a LEFT JOIN pg_index i "
        "ON i.indrelid = a.attrelid AND i.indisprimary "
        "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        name,
    )
    if not rows:
        return None
    data = [r for r in rows if not r["attname"].startswith(RESERVED_PREFIX)]
    keyed = sorted((r["key_pos"], r["attname"]) for r in rows if r["key_pos"] is not None)
    return TableInfo(
        {r["attname"]: _FROM_STORE.get(r["type"], "string") for r in data},
        [column for _, column in keyed],
        versioned=any(r["attname"] == VERSION_COLUMN for r in rows),
        ingested_default=any(r["attname"] == INGESTED_AT_COLUMN and r["atthasdef"] for r in rows),
        deletable=any(r["attname"] == DELETED_AT_COLUMN for r in rows),
        inexact=[r["attname"] for r in data if r["type"] == FLOAT_TYPE],
    )


async def alter_table(con: asyncpg.Connection, name: str, change: TableChange) -> None:
    if change.create:
        info = change.info
        defs = [f"{quote_ident(c)} {TYPES[t]}" for c, t in info.columns.items()]
        defs += [f"{BATCH_ID_COLUMN} text", _VERSION_DEF, _INGESTED_AT_DEF, _DELETED_AT_DEF]
        if info.primary_key:
            defs.append(f"PRIMARY KEY ({', '.join(map(quote_ident, info.primary_key))})")
        await con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(defs)})")
        return
    # A table from before row versions: its rows are version 0 (no rewrite: a constant default).
    steps = [f"ADD COLUMN IF NOT EXISTS {_VERSION_DEF}"] if change.add_version else []
    if change.set_ingested_default:  # catalog only: no rewrite, stored times stay
        steps.append(f"ALTER COLUMN {INGESTED_AT_COLUMN} SET DEFAULT now()")
    if change.add_deleted_at:  # a table from before deletes: its rows are live
        steps.append(f"ADD COLUMN IF NOT EXISTS {_DELETED_AT_DEF}")
    steps += [
        f"ADD COLUMN IF NOT EXISTS {quote_ident(c)} {TYPES[t]}" for c, t in change.add.items()
    ]
    steps += [
        f"ALTER COLUMN {quote_ident(c)} TYPE {TYPES[t]} USING {_cast(c, t, change)}"
        for c, t in change.widen.items()
    ]
    await con.execute(f"ALTER TABLE {name} {', '.join(steps)}")


def _cast(column: str, logical: str, change: TableChange) -> str:
    """A widened column's values as ``logical``'s type. A double goes through its text, the
    shortest decimal that reads back as it (a direct cast keeps 15 digits)."""
    ref = quote_ident(column)
    if column in change.from_float:
        ref = f"{ref}::text"
    return f"{ref}::{TYPES[logical]}"
