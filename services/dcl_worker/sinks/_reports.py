"""The read-only reports of the SQL stores (``Sink.tables_report``, ``schema_report``): the
SQL that reads the registry, a table's row counts, its columns' store types and its schema
history, the same in both stores, and the report dataclasses built from the rows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from dcl_worker.sinks._registry import HISTORY_TABLE, REGISTRY_TABLE
from dcl_worker.sinks._sql import DELETED_AT_COLUMN, TableInfo, quote_literal
from dcl_worker.sinks.base import ColumnReport, SchemaChangeReport, TableReport

Name = Callable[[str], str]
Registry = dict[str, tuple[Any, ...]]  # table -> its registry row (registry_sql's columns)


def registry_sql(name: Name) -> str:
    return (
        "SELECT table_name, connector, source_table, primary_key, created_at, last_batch_id, "
        f"last_write_at FROM {name(REGISTRY_TABLE)}"
    )


def counts_sql(target: str, info: TableInfo) -> str:
    """Live and deleted rows (a table from before deletes has only live ones)."""
    if not info.deletable:
        return f"SELECT count(*), 0 FROM {target}"
    return (
        f"SELECT count(*) FILTER (WHERE {DELETED_AT_COLUMN} IS NULL), "
        f"count(*) FILTER (WHERE {DELETED_AT_COLUMN} IS NOT NULL) FROM {target}"
    )


def store_types_sql(schema: str, table: str) -> str:
    return (
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
        f"{quote_literal(schema)} AND table_name = {quote_literal(table)} "
        "ORDER BY ordinal_position"
    )


def history_sql(name: Name, table: str) -> str:
    return (
        "SELECT changed_at, batch_id, kind, column_name, old_type, new_type, detail FROM "
        f"{name(HISTORY_TABLE)} WHERE table_name = {quote_literal(table)} ORDER BY changed_at"
    )


def table_report(
    table: str, info: TableInfo, counts: Sequence[Any], registry: Registry
) -> TableReport:
    row = registry.get(table)
    connector, _, source = table.partition("__")
    if row is not None:
        connector, source = str(row[1]), str(row[2])
    return TableReport(
        table=table,
        connector=connector,
        source_table=source,
        live_rows=int(counts[0]),
        deleted_rows=int(counts[1]),
        columns=tuple(info.columns),
        primary_key=tuple(info.primary_key),
        created_at=_time(row[4]) if row else None,
        last_batch_id=None if row is None or row[5] is None else str(row[5]),
        last_write_at=_time(row[6]) if row else None,
    )


def column_reports(
    info: TableInfo, store_types: Sequence[Sequence[Any]]
) -> tuple[ColumnReport, ...]:
    types = {str(name): str(sql_type) for name, sql_type in store_types}
    return tuple(ColumnReport(c, kind, types.get(c, "?")) for c, kind in info.columns.items())


def history_reports(rows: Sequence[Sequence[Any]]) -> tuple[SchemaChangeReport, ...]:
    return tuple(
        SchemaChangeReport(
            changed_at=_time(r[0]) or dt.datetime.min.replace(tzinfo=dt.UTC),
            batch_id=_opt(r[1]),
            kind=str(r[2]),
            column=_opt(r[3]),
            old_type=_opt(r[4]),
            new_type=_opt(r[5]),
            detail=_opt(r[6]),
        )
        for r in rows
    )


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def _time(value: Any) -> dt.datetime | None:
    return value if isinstance(value, dt.datetime) else None
