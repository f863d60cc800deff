"""Rows deleted at the source, in SQL the same in both stores: deleted keys (soft: the row
kept, ``_dcl_deleted_at`` set; hard: removed, a tombstone kept), full-refresh markers
waiting for their run's chunks (``_dcl_refresh_pending``) and the reconciliation a complete
run triggers.

Versions decide, as for upserts (``_sql.batch_version``): a delete marks or removes a row
only if its version is at least the row's, and a key deleted by a newer batch stays deleted
when an older one arrives late — soft, because the marked row (or, for a key the store has
not seen, a row of only its key) carries the delete's version; hard, because the upsert
skips keys whose tombstone is newer. A reconciled run raises the table's
``refreshed_version``: a versioned batch older than that is skipped whole, since every row
it could write was, at the run's start, either rewritten by the run or gone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dcl_worker.sinks._merge import TARGET
from dcl_worker.sinks._registry import PENDING_TABLE, REGISTRY_TABLE, TOMBSTONE_TABLE
from dcl_worker.sinks._sql import (
    BATCH_ID_COLUMN,
    DELETED_AT_COLUMN,
    INBOX_TABLE,
    INGESTED_AT_COLUMN,
    VERSION_COLUMN,
    Refresh,
    TablePart,
    TableWrite,
    qualified,
    quote_ident,
    quote_literal,
)

SOFT, HARD = "soft", "hard"
DELETE_MODES = (SOFT, HARD)

Name = Callable[[str], str]  # a sink table's name as the dialect writes it


def deletes_ddl(schema: str) -> list[str]:
    """The pending markers and the tombstones, created at open() beside the registry."""
    return [
        f"CREATE TABLE IF NOT EXISTS {qualified(schema, PENDING_TABLE)} ("
        "table_name text NOT NULL, connector text NOT NULL, run_start_ms bigint NOT NULL, "
        "first_chunk bigint NOT NULL, chunks bigint NOT NULL, version bigint NOT NULL, "
        "batch_id text NOT NULL, received_at timestamptz NOT NULL, "
        "PRIMARY KEY (table_name, run_start_ms, first_chunk, chunks))",
        f"CREATE TABLE IF NOT EXISTS {qualified(schema, TOMBSTONE_TABLE)} ("
        "table_name text NOT NULL, key text NOT NULL, version bigint NOT NULL, "
        "batch_id text, deleted_at timestamptz NOT NULL, PRIMARY KEY (table_name, key))",
    ]


@dataclass(slots=True)
class TableState:
    """What a write of one table needs to know first, read under its refresh lock."""

    refreshed_version: int = 0  # versioned parts below it are skipped
    pending: list[Refresh] = field(default_factory=list)  # markers waiting for chunks
    tombstones: bool = False  # upserts must skip keys deleted by a newer version


def state_sql(name: Name, table: str) -> str:
    """One query for ``TableState``: a first row (the floor, whether tombstones exist), then
    one row per pending marker."""
    t = quote_literal(table)
    return (
        f"SELECT 0 AS k, (SELECT refreshed_version FROM {name(REGISTRY_TABLE)} WHERE "
        f"table_name = {t}) AS a, CASE WHEN EXISTS (SELECT 1 FROM {name(TOMBSTONE_TABLE)} "
        f"WHERE table_name = {t}) THEN 1 ELSE 0 END AS b, NULL AS c, NULL AS d, NULL AS e "
        f"UNION ALL SELECT 1, run_start_ms, first_chunk, chunks, batch_id, connector "
        f"FROM {name(PENDING_TABLE)} WHERE table_name = {t} ORDER BY 1, 2, 3, 4"
    )


def parse_state(rows: Sequence[Sequence[Any]]) -> TableState:
    state = TableState()
    for kind, a, b, c, d, e in rows:
        if kind == 0:
            state.refreshed_version, state.tombstones = int(a or 0), bool(b)
        else:
            state.pending.append(Refresh(str(d), str(e), int(a), int(b), int(c)))
    return state


def drop_stale(tw: TableWrite, refreshed_version: int) -> None:
    """Versioned parts older than the table's last reconciled run: skipped (their batches
    stay applied in the inbox, as any older batch that loses)."""
    if refreshed_version:
        tw.parts = [p for p in tw.parts if not 0 < p.version < refreshed_version]
        tw.deletes = [p for p in tw.deletes if not 0 < p.version < refreshed_version]


def key_exprs(exprs: dict[str, str], primary_key: Sequence[str]) -> list[str]:
    return [exprs[c] for c in primary_key]


def soft_delete_sql(
    target: str, source: str, keys: list[str], order: str, primary_key: Sequence[str]
) -> str:
    """Mark the rows of the deleted keys (the newest delete of each key): a stored row whose
    version is not newer is marked, a key the table lacks becomes a row of only its key,
    version and mark (so an older batch arriving later cannot bring it back)."""
    meta = [BATCH_ID_COLUMN, VERSION_COLUMN, INGESTED_AT_COLUMN, DELETED_AT_COLUMN]
    names = ", ".join([*map(quote_ident, primary_key), *meta])
    key_list = ", ".join(keys)
    sets = ", ".join(
        [
            *(f"{c} = excluded.{c}" for c in meta[:3]),
            f"{DELETED_AT_COLUMN} = coalesce({TARGET}.{DELETED_AT_COLUMN}, "
            f"excluded.{DELETED_AT_COLUMN})",  # deleted twice: the first time stays
        ]
    )
    return (
        f"INSERT INTO {target} AS {TARGET} ({names}) SELECT DISTINCT ON ({key_list}) "
        f"{key_list}, s.{BATCH_ID_COLUMN}, s.{VERSION_COLUMN}, now(), now() FROM {source} "
        f"ORDER BY {order} ON CONFLICT ({', '.join(map(quote_ident, primary_key))}) "
        f"DO UPDATE SET {sets} WHERE {TARGET}.{VERSION_COLUMN} <= excluded.{VERSION_COLUMN}"
    )


def hard_delete_sql(
    target: str, source: str, keys: list[str], order: str, primary_key: Sequence[str]
) -> str:
    """Remove the stored rows of the deleted keys whose version is not newer."""
    picked = ", ".join(f"{k} AS _dcl_k{i}" for i, k in enumerate(keys))
    match = " AND ".join(
        f"{target}.{quote_ident(c)} = d._dcl_k{i}" for i, c in enumerate(primary_key)
    )
    return (
        f"DELETE FROM {target} USING (SELECT DISTINCT ON ({', '.join(keys)}) {picked}, "
        f"s.{VERSION_COLUMN} AS _dcl_v FROM {source} ORDER BY {order}) d "
        f"WHERE {match} AND {target}.{VERSION_COLUMN} <= d._dcl_v"
    )


def tombstone_sql(name: Name, table: str, source: str, key_text: str, tiebreak: list[str]) -> str:
    """Record the deleted keys' tombstones (the newest version of each key wins)."""
    tombs = name(TOMBSTONE_TABLE)
    order = ", ".join([key_text, *(f"s.{c} DESC" for c in [VERSION_COLUMN, *tiebreak])])
    return (
        f"INSERT INTO {tombs} AS tb (table_name, key, version, batch_id, deleted_at) "
        f"SELECT DISTINCT ON ({key_text}) {quote_literal(table)}, {key_text}, "
        f"s.{VERSION_COLUMN}, s.{BATCH_ID_COLUMN}, now() FROM {source} ORDER BY {order} "
        "ON CONFLICT (table_name, key) DO UPDATE SET version = excluded.version, "
        "batch_id = excluded.batch_id, deleted_at = excluded.deleted_at "
        "WHERE tb.version <= excluded.version"
    )


def tombstone_filter(name: Name, table: str, key_text: str) -> str:
    """The upsert's condition on a staged row: no newer tombstone of its key."""
    return (
        f"NOT EXISTS (SELECT 1 FROM {name(TOMBSTONE_TABLE)} tb WHERE tb.table_name = "
        f"{quote_literal(table)} AND tb.key = {key_text} AND tb.version > s.{VERSION_COLUMN})"
    )


def applied_chunks_sql(name: Name, refresh: Refresh) -> str:
    """How many of the run's chunks of the table the inbox holds (the write's own rows are
    visible to it; other workers' once they commit)."""
    prefix = quote_literal(f"{refresh.connector}_{refresh.run_start_ms}_")  # keys.batch_id
    last = refresh.first_chunk + refresh.chunks - 1
    return (
        f"SELECT count(*) FROM {name(INBOX_TABLE)} WHERE batch_id IN (SELECT {prefix} || "
        f"CAST(g.n AS VARCHAR) FROM generate_series({refresh.first_chunk}, {last}) AS g(n))"
    )


def reconcile_sql(target: str, refresh: Refresh, mode: str) -> str:
    """The rows the run did not write (older than its first version), deleted: marked with the
    run's version (soft), or removed (hard)."""
    older = f"{VERSION_COLUMN} < {refresh.version}"
    if mode == HARD:
        return f"DELETE FROM {target} WHERE {older}"
    return (
        f"UPDATE {target} SET {DELETED_AT_COLUMN} = now(), {VERSION_COLUMN} = {refresh.version}, "
        f"{BATCH_ID_COLUMN} = {quote_literal(refresh.batch_id)}, {INGESTED_AT_COLUMN} = now() "
        f"WHERE {older} AND {DELETED_AT_COLUMN} IS NULL"
    )


def refreshed_sql(name: Name, table: str, version: int) -> list[str]:
    """After a reconciliation: the table's floor raised, the markers and tombstones it covers
    dropped (a tombstone below the floor can only stop version-0 rows)."""
    t = quote_literal(table)
    return [
        f"UPDATE {name(REGISTRY_TABLE)} SET refreshed_version = greatest(refreshed_version, "
        f"{version}) WHERE table_name = {t}",
        f"DELETE FROM {name(PENDING_TABLE)} WHERE table_name = {t} AND version <= {version}",
        f"DELETE FROM {name(TOMBSTONE_TABLE)} WHERE table_name = {t} AND version < {version}",
    ]


def pending_sql(name: Name, table: str, refresh: Refresh) -> str:
    values = ", ".join(
        [
            quote_literal(table),
            quote_literal(refresh.connector),
            str(refresh.run_start_ms),
            str(refresh.first_chunk),
            str(refresh.chunks),
            str(refresh.version),
            quote_literal(refresh.batch_id),
            "now()",
        ]
    )
    return (
        f"INSERT INTO {name(PENDING_TABLE)} (table_name, connector, run_start_ms, first_chunk, "
        f"chunks, version, batch_id, received_at) VALUES ({values}) "
        "ON CONFLICT (table_name, run_start_ms, first_chunk, chunks) DO NOTHING"
    )


def forget_pending_sql(name: Name, table: str, refresh: Refresh) -> str:
    return (
        f"DELETE FROM {name(PENDING_TABLE)} WHERE table_name = {quote_literal(table)} AND "
        f"run_start_ms = {refresh.run_start_ms} AND first_chunk = {refresh.first_chunk} AND "
        f"chunks = {refresh.chunks}"
    )


def relevant(tw: TableWrite, pending: Sequence[Refresh]) -> list[Refresh]:
    """The write's own markers, then the pending ones a chunk of this write belongs to (the
    only writes that can complete them); each run's marker once."""
    found: dict[tuple[int, int, int], Refresh] = {}
    for refresh in [*tw.refreshes, *(p for p in pending if any(map(p.covers, tw.batch_ids)))]:
        found.setdefault((refresh.run_start_ms, refresh.first_chunk, refresh.chunks), refresh)
    return sorted(found.values(), key=lambda r: r.version)


def deleted_write(tw: TableWrite, primary_key: Sequence[str]) -> TableWrite:
    """The write's deleted keys as a write of their own (one part per batch), for staging."""
    parts = [TablePart(p.batch_id, p.records, p.version) for p in tw.deletes]
    return TableWrite(
        tw.table,
        {c: tw.columns.get(c, "string") for c in primary_key},
        list(primary_key),
        tw.connector,
        tw.source,
        parts=parts,
        batch_ids=[p.batch_id for p in parts],
    )
