"""The store's own record of its data tables, in each tenant's schema: the registry
``_dcl_tables`` (one row per table: tenant, connector, source table, primary key, created,
last batch and write, the last full refresh) and the schema history ``_dcl_schema_history``
(every table created, column added, type widened and key difference, with the batch that
caused it). Both are written in the transaction that makes the change; each change is
logged (``schema_changed``) and counted once that transaction has committed.

The SQL here is the same in both stores (literals quoted, never interpolated).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import orjson
import structlog

from dcl_worker import metrics
from dcl_worker.sinks._sql import (
    INBOX_TABLE,
    TableChange,
    TableWrite,
    qualified,
    quote_literal,
)
from dcl_worker.sinks._tenancy import OWNER_TABLE

log = structlog.get_logger("dcl_worker.sinks")
Name = Callable[[str], str]  # a sink table's name as the dialect writes it

REGISTRY_TABLE = "_dcl_tables"
HISTORY_TABLE = "_dcl_schema_history"
PENDING_TABLE = "_dcl_refresh_pending"  # full-refresh markers waiting for their run's chunks
TOMBSTONE_TABLE = "_dcl_tombstones"  # DCL_DELETE_MODE=hard: keys deleted, and by which version
SINK_TABLES = (INBOX_TABLE, OWNER_TABLE, REGISTRY_TABLE, HISTORY_TABLE, PENDING_TABLE,
               TOMBSTONE_TABLE)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SchemaChange:
    """One row of the schema history. Types are the store's own spelling; for
    ``table_created`` and ``key_differs``, ``detail`` names the keys."""

    table: str
    kind: str
    batch_id: str
    column: str | None = None
    old_type: str | None = None
    new_type: str | None = None
    detail: str | None = None


def registry_ddl(schema: str) -> list[str]:
    """The registry and the history, created at open() beside the inbox."""
    return [
        f"CREATE TABLE IF NOT EXISTS {qualified(schema, REGISTRY_TABLE)} ("
        "table_name text PRIMARY KEY, tenant text NOT NULL, connector text NOT NULL, "
        "source_table text NOT NULL, primary_key text NOT NULL, created_at timestamptz, "
        "last_batch_id text, last_write_at timestamptz, "
        "refreshed_version bigint NOT NULL DEFAULT 0)",
        f"CREATE TABLE IF NOT EXISTS {qualified(schema, HISTORY_TABLE)} ("
        "table_name text NOT NULL, changed_at timestamptz NOT NULL, batch_id text, "
        "kind text NOT NULL, column_name text, old_type text, new_type text, detail text)",
    ]


def keys_text(primary_key: Sequence[str]) -> str:
    """A primary key as the registry keeps it: a JSON array of the column names."""
    return orjson.dumps(list(primary_key)).decode()


def register_sql(
    registry: str, tenant: str, tw: TableWrite, primary_key: Sequence[str], *, created: bool
) -> str:
    """The table's registry row, if it has none: ``created`` now, or unknown (a table from
    before the registry)."""
    values = ", ".join(
        [
            quote_literal(tw.table),
            quote_literal(tenant),
            quote_literal(tw.connector),
            quote_literal(tw.source),
            quote_literal(keys_text(primary_key)),
            "now()" if created else "NULL",
        ]
    )
    return (
        f"INSERT INTO {registry} (table_name, tenant, connector, "
        f"source_table, primary_key, created_at) VALUES ({values}) "
        "ON CONFLICT (table_name) DO NOTHING"
    )


def change_sql(
    name: Name,
    tenant: str,
    tw: TableWrite,
    change: TableChange,
    found: Sequence[SchemaChange],
    first_sight: bool,
) -> list[str]:
    """The registry row of a table created (or seen for the first time by this process: it
    may be from before the registry), and the history rows ``found`` in ``change``."""
    sql = []
    if first_sight or change.create:
        registry = name(REGISTRY_TABLE)
        key = change.info.primary_key
        sql.append(register_sql(registry, tenant, tw, key, created=change.create))
    if found:
        sql.append(history_sql(name(HISTORY_TABLE), found))
    return sql


def key_noted_sql(name: Name, differs: SchemaChange) -> str:
    """Whether the history has this key difference already (count)."""
    return (
        f"SELECT count(*) FROM {name(HISTORY_TABLE)} WHERE table_name = "
        f"{quote_literal(differs.table)} AND kind = 'key_differs' AND detail = "
        f"{quote_literal(differs.detail or '')}"
    )


def touch_sql(name: Name, table: str, batch_id: str) -> str:
    """The registry's last batch and write of ``table``."""
    return (
        f"UPDATE {name(REGISTRY_TABLE)} SET last_batch_id = {quote_literal(batch_id)}, "
        f"last_write_at = now() WHERE table_name = {quote_literal(table)}"
    )


def history_sql(history: str, changes: Sequence[SchemaChange]) -> str:
    rows = ", ".join(
        "("
        + ", ".join(
            [
                _text(c.table),
                "now()",
                _text(c.batch_id),
                _text(c.kind),
                _text(c.column),
                _text(c.old_type),
                _text(c.new_type),
                _text(c.detail),
            ]
        )
        + ")"
        for c in changes
    )
    return (
        f"INSERT INTO {history} (table_name, changed_at, batch_id, "
        f"kind, column_name, old_type, new_type, detail) VALUES {rows}"
    )


def _text(value: str | None) -> str:
    return "NULL" if value is None else quote_literal(value)


def schema_changes(
    tw: TableWrite, change: TableChange, types: Mapping[str, str], float_type: str
) -> list[SchemaChange]:
    """What ``change`` does to the table, for the history: its creation, or the columns it
    adds and widens, each with the batch that brought it."""
    first = tw.batch_ids[0]
    if change.create:
        key = ", ".join(change.info.primary_key) or "none"
        detail = f"primary key ({key}); {len(change.info.columns)} columns"
        return [SchemaChange(tw.table, "table_created", first, detail=detail)]
    added = [
        SchemaChange(tw.table, "column_added", tw.origin.get(c, first), c, None, types[t])
        for c, t in change.add.items()
    ]
    widened = [
        SchemaChange(
            tw.table,
            "type_widened",
            tw.type_origin.get(c, first),
            c,
            float_type if c in change.from_float else types[change.before[c]],
            types[t],
        )
        for c, t in change.widen.items()
    ]
    return added + widened


def key_difference(tw: TableWrite, stored_key: Sequence[str]) -> SchemaChange | None:
    """A write whose schema names another primary key than the stored table's (the stored
    one is kept: docs/sinks.md, Schema evolution)."""
    if not tw.primary_key or list(stored_key) == tw.primary_key:
        return None
    detail = (
        f"stored key ({', '.join(stored_key) or 'none'}); batch key ({', '.join(tw.primary_key)})"
    )
    return SchemaChange(tw.table, "key_differs", tw.batch_ids[0], detail=detail)


def announce(tenant: str, changes: Sequence[SchemaChange]) -> None:
    """Log and count committed changes, once each."""
    for c in changes:
        metrics.SCHEMA_CHANGES.labels(tenant, c.kind).inc()
        log.info(
            "schema_changed",
            kind=c.kind,
            table=c.table,
            column=c.column,
            old_type=c.old_type,
            new_type=c.new_type,
            detail=c.detail,
            batch_id=c.batch_id,
        )
