"""What the PostgreSQL source knows about a table from the catalog, and the SQL it reads it with.

``load_plans`` turns the catalog (pg_class, pg_attribute, pg_type, pg_index) into one
``TablePlan`` per table: its columns with their message-format types and select expressions,
its key, its cursor column, and the keyset query of every kind of page.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from typing import Any

import asyncpg

from aam_dcl.errors import ConnectorError
from aam_dcl.messages import Record

# Base type -> message type for the types asyncpg decodes into a value orjson can write as is.
_PLAIN_TYPES: dict[str, str] = {
    "int2": "integer",
    "int4": "integer",
    "int8": "integer",
    "numeric": "numeric",
    "float4": "numeric",
    "float8": "numeric",
    "bool": "boolean",
    "timestamptz": "datetime",
    "timestamp": "datetime",
    "date": "date",
    "json": "json",
    "jsonb": "json",
    "text": "string",
    "varchar": "string",
    "bpchar": "string",
    "name": "string",
}
TIME_CURSOR_TYPES = ("timestamptz", "timestamp", "date")  # lookback applies
CURSOR_TYPES = (*TIME_CURSOR_TYPES, "int2", "int4", "int8", "numeric")

# Every table of the schema (ordinary and partitioned, not partitions), or the named ones
# (views, materialized views and foreign tables too: they were asked for by name).
_TABLES_SQL = """
SELECT c.oid, c.relname, has_table_privilege(c.oid, 'SELECT') AS can_select
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1
  AND CASE WHEN $2::text[] IS NULL
           THEN c.relkind IN ('r', 'p') AND NOT c.relispartition
           ELSE c.relname = ANY($2::text[]) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
      END
ORDER BY c.relname
"""
_SCHEMA_SQL = """
SELECT has_schema_privilege(n.oid, 'USAGE') AS usable, current_user AS role
FROM pg_catalog.pg_namespace n WHERE n.nspname = $1
"""
# Columns with their type resolved through domains (a domain over numeric reads as numeric).
_COLUMNS_SQL = """
WITH RECURSIVE base AS (
    SELECT t.oid AS type_oid, t.oid AS base_oid, t.typtype, t.typbasetype
    FROM pg_catalog.pg_type t
    WHERE t.oid IN (SELECT atttypid FROM pg_catalog.pg_attribute WHERE attrelid = ANY($1::oid[]))
  UNION ALL
    SELECT b.type_oid, t.oid, t.typtype, t.typbasetype
    FROM base b JOIN pg_catalog.pg_type t ON t.oid = b.typbasetype
    WHERE b.typtype = 'd'
)
SELECT a.attrelid, a.attname, a.attnotnull, format_type(a.atttypid, a.atttypmod) AS sql_type,
       bt.typname AS base, bt.typcategory::text AS category, bt.typtype::text AS kind
FROM pg_catalog.pg_attribute a
JOIN base ON base.type_oid = a.atttypid AND base.typtype <> 'd'
JOIN pg_catalog.pg_type bt ON bt.oid = base.base_oid
WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""
_PRIMARY_KEYS_SQL = """
SELECT i.indrelid, array_agg(a.attname ORDER BY k.ord) AS columns
FROM pg_catalog.pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = ANY($1::oid[]) AND i.indisprimary
GROUP BY i.indrelid
"""


@dataclass(frozen=True, slots=True)
class Choice:
    """What the options say about one table: its cursor column and key (None: the default)."""

    cursor: str | None = None
    key: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    sql_type: str  # format_type(): what a position value is cast back to
    base: str  # the base type's name (domains resolved)
    column_type: str  # the message format's type
    expression: str  # what the SELECT reads
    not_null: bool
    convert: Callable[[Any], Any] | None = None  # applied to non-null values


@dataclass(frozen=True, slots=True)
class TablePlan:
    """One table: its columns, the columns its keyset pages order by, and its queries.

    ``position`` is the cursor column (if any) followed by the key; each selected row starts
    with its position as text (PostgreSQL's own output, lossless for every type) and a flag
    telling whether it lies past a given position.
    """

    name: str
    qualified: str  # "schema"."table"
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    cursor: Column | None
    position: tuple[Column, ...]
    page_size: int
    names: tuple[str, ...] = ()
    converters: tuple[tuple[str, Callable[[Any], Any]], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(c.name for c in self.columns))
        converters = tuple((c.name, c.convert) for c in self.columns if c.convert is not None)
        object.__setattr__(self, "converters", converters)

    @property
    def time_cursor(self) -> bool:
        return self.cursor is not None and self.cursor.base in TIME_CURSOR_TYPES

    @property
    def column_types(self) -> dict[str, str]:
        return {c.name: c.column_type for c in self.columns}

    def query(
        self,
        *,
        after: Sequence[str] | None = None,
        since: str | None = None,
        lookback_s: float = 0.0,
        mark: Sequence[str] | None = None,
    ) -> tuple[str, list[Any]]:
        """The next page: rows strictly after position ``after``, or (a run starting
        ``lookback_s`` before the cursor value ``since``) rows whose cursor is at least that;
        each flagged if it lies past position ``mark``."""
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        def params(values: Sequence[str]) -> str:
            return ", ".join(
                f"CAST({arg(value)}::text AS {column.sql_type})"
                for column, value in zip(self.position, values, strict=True)
            )

        order = ", ".join(quote(c.name) for c in self.position)
        where = [f"{quote(c.name)} IS NOT NULL" for c in self.position if not c.not_null]
        if after is not None:
            where.append(f"({order}) > ({params(after)})")
        elif since is not None:
            assert self.cursor is not None
            where.append(
                f"{quote(self.cursor.name)} >= CAST({arg(since)}::text AS {self.cursor.sql_type})"
                f" - make_interval(secs => {arg(lookback_s)})"
            )
        past = f"({order}) > ({params(mark)})" if mark is not None else "true"
        text = ", ".join(f"format('%s', {quote(c.name)})" for c in self.position)
        select = ", ".join(c.expression for c in self.columns)
        sql = (
            f"SELECT ARRAY[{text}], {past}, {select} FROM {self.qualified}"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + f" ORDER BY {order} LIMIT {self.page_size}"
        )
        return sql, args

    def record(self, row: asyncpg.Record) -> Record:
        """A selected row without its position and flag, values made JSON-ready."""
        record = dict(zip(self.names, islice(row, 2, None), strict=True))
        for name, convert in self.converters:
            value = record[name]
            if value is not None:
                record[name] = convert(value)
        return record


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _output_text(column: str) -> str:
    """The type's own output text, as psql shows it (a ``::text`` cast may differ: inet
    gains its /32); format() turns null into '', hence the CASE."""
    return f"CASE WHEN {column} IS NULL THEN NULL ELSE format('%s', {column}) END"


def _finite_decimal(value: Decimal) -> Decimal | None:
    """NaN and ±Infinity have no JSON number: null, as orjson writes a float NaN."""
    return value if value.is_finite() else None


def _finite_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _column(
    name: str, sql_type: str, base: str, category: str, kind: str, not_null: bool
) -> Column:
    column = quote(name)
    if category == "A":  # arrays, nested too: JSON with PostgreSQL's own element forms
        return Column(name, sql_type, base, "json", f"to_jsonb({column})", not_null)
    plain = "string" if kind == "e" else _PLAIN_TYPES.get(base)  # asyncpg reads enums as str
    if plain is None:
        # uuid, inet, interval, bytea, money, time, ranges, composites...: their text
        # (asyncpg gives UUID, IPv4Address, timedelta or bytes objects orjson cannot write).
        return Column(name, sql_type, base, "string", _output_text(column), not_null)
    convert: Callable[[Any], Any] | None = None
    if base == "numeric":
        convert = _finite_decimal
    elif base in ("float4", "float8"):
        convert = _finite_float
    return Column(name, sql_type, base, plain, column, not_null, convert)


async def load_plans(
    conn: asyncpg.Connection,
    schema: str,
    choices: Mapping[str, Choice] | None,
    page_size: int,
) -> list[TablePlan]:
    """The plans of the tables in ``choices`` (in its order), or of every table of ``schema``
    (by name) when None; ConnectorError naming the table and the option to fix otherwise."""
    found = await conn.fetchrow(_SCHEMA_SQL, schema)
    if found is None:
        raise ConnectorError(f"schema {schema!r} does not exist: check options.schema")
    if not found["usable"]:
        raise ConnectorError(
            f"role {found['role']!r} lacks USAGE on schema {schema!r}: "
            f"GRANT USAGE ON SCHEMA {quote(schema)} TO {quote(found['role'])}"
        )
    names = list(choices) if choices is not None else None
    rows = {row["relname"]: row for row in await conn.fetch(_TABLES_SQL, schema, names)}
    missing = [n for n in names or () if n not in rows]
    if missing:
        raise ConnectorError(
            f"options.tables: {', '.join(f'{schema}.{n}' for n in missing)} "
            f"{'does' if len(missing) == 1 else 'do'} not exist (or {found['role']!r} "
            "cannot see it): check the names"
        )
    order = names if names is not None else list(rows)
    for name in order:
        if not rows[name]["can_select"]:
            raise ConnectorError(
                f"role {found['role']!r} lacks SELECT on {schema}.{name}: "
                f"GRANT SELECT ON {quote(schema)}.{quote(name)} TO {quote(found['role'])}"
            )
    oids = [rows[name]["oid"] for name in order]
    columns: dict[int, list[Column]] = {oid: [] for oid in oids}
    for row in await conn.fetch(_COLUMNS_SQL, oids):
        columns[row["attrelid"]].append(
            _column(
                row["attname"],
                row["sql_type"],
                row["base"],
                row["category"],
                row["kind"],
                row["attnotnull"],
            )
        )
    primary = {
        row["indrelid"]: tuple(row["columns"]) for row in await conn.fetch(_PRIMARY_KEYS_SQL, oids)
    }
    return [
        _plan(
            schema,
            name,
            tuple(columns[rows[name]["oid"]]),
            primary.get(rows[name]["oid"], ()),
            (choices or {}).get(name, Choice()),
            page_size,
        )
        for name in order
    ]


def _plan(
    schema: str,
    name: str,
    columns: tuple[Column, ...],
    primary_key: tuple[str, ...],
    choice: Choice,
    page_size: int,
) -> TablePlan:
    by_name = {c.name: c for c in columns}
    where = f"options.tables.{name}"

    def column(option: str, wanted: str) -> Column:
        if wanted not in by_name:
            raise ConnectorError(
                f"{where}.{option}: table {schema}.{name} has no column {wanted!r}; "
                f"its columns: {', '.join(by_name)}"
            )
        return by_name[wanted]

    key = choice.key or primary_key
    if not key:
        raise ConnectorError(
            f"table {schema}.{name} has no primary key: set {where}.key to the columns that "
            "identify a row (e.g. tables: {" + name + ": {key: [id]}})"
        )
    key_columns = tuple(column("key", k) for k in key)
    cursor = None
    if choice.cursor is not None:
        cursor = column("cursor", choice.cursor)
        if cursor.base not in CURSOR_TYPES:
            raise ConnectorError(
                f"{where}.cursor: column {choice.cursor!r} of {schema}.{name} is "
                f"{cursor.sql_type}: a cursor column must be a timestamp, date, integer or "
                "numeric column"
            )
    return TablePlan(
        name=name,
        qualified=f"{quote(schema)}.{quote(name)}",
        columns=columns,
        key=tuple(key),
        cursor=cursor,
        position=((cursor,) if cursor is not None else ()) + key_columns,
        page_size=page_size,
    )
