"""How staged rows get into a data table: ``Staged`` (a write's rows where the store reads
them: a temp table, or a spool file read as JSON) and the ``INSERT ... SELECT`` that appends or
upserts them, the same SQL in both stores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dcl_worker.sinks._sql import (
    BATCH_ID_COLUMN,
    DELETED_AT_COLUMN,
    INGESTED_AT_COLUMN,
    VERSION_COLUMN,
    quote_ident,
)

TARGET = "_dcl_target"  # the INSERT's alias for the data table, for ON CONFLICT ... WHERE


@dataclass(slots=True)
class Staged:
    """A table's rows where the merge reads them: a temp table, or a spool file read as JSON."""

    source: str  # the FROM item, aliased ``s``
    exprs: dict[str, str]  # column -> its value in ``s``, cast to the table's type where needed
    tiebreak: list[str]  # columns of ``s`` that keep stream order among one version's rows
    casts: dict[str, str]  # column -> store type, where a cast may reject values (the probe's)
    location: str  # the temp table or the file, for the dialect's probe
    new_keys_first: bool = False  # try a plain insert first (PostgreSQL: staged, not COPYed)


def merge_sql(
    target: str, staged: Staged, primary_key: Sequence[str], where: str | None = None
) -> str:
    """The ``INSERT ... SELECT`` of staged rows into ``target``: appended without a primary key;
    with one, one row per key (the newest version, then the last in stream order), upserted.

    The upsert never lets an older version replace a newer row. ``>=`` rather than ``>``: a
    re-sent copy of the stored batch (equal version) writes the same values again, and
    version-0 rows (ids of another format) keep last-write-wins among themselves. A row it
    replaces is live again (a newer version than its delete). ``where`` filters the staged
    rows (the tombstones' condition, ``_deletes``).
    """
    columns = list(staged.exprs)
    meta = [BATCH_ID_COLUMN, VERSION_COLUMN, INGESTED_AT_COLUMN]
    names = ", ".join([*map(quote_ident, columns), *meta])
    values = ", ".join(staged.exprs.values())
    insert = f"INSERT INTO {target} AS {TARGET} ({names}) SELECT "
    select = f"{values}, s.{BATCH_ID_COLUMN}, s.{VERSION_COLUMN}, now() FROM {staged.source}"
    if where:
        select += f" WHERE {where}"
    if not primary_key:
        return insert + select
    keys = ", ".join(staged.exprs[c] for c in primary_key)
    updates = [c for c in columns if c not in primary_key] + meta
    sets = ", ".join(
        [
            *(f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in updates),
            f"{DELETED_AT_COLUMN} = NULL",
        ]
    )
    return (
        f"{insert}DISTINCT ON ({keys}) {select} ORDER BY {order_by(staged, primary_key)} "
        f"ON CONFLICT ({', '.join(map(quote_ident, primary_key))}) DO UPDATE SET {sets} "
        f"WHERE {TARGET}.{VERSION_COLUMN} <= excluded.{VERSION_COLUMN}"
    )


def order_by(staged: Staged, primary_key: Sequence[str]) -> str:
    """Each key's rows newest version first, then last in stream order: DISTINCT ON's pick."""
    keys = [staged.exprs[c] for c in primary_key]
    return ", ".join([*keys, *(f"s.{c} DESC" for c in [VERSION_COLUMN, *staged.tiebreak])])


def first_line(exc: BaseException) -> str:
    """The first line of a driver's message (DuckDB's go on with hints and context)."""
    return (str(exc).strip().splitlines() or [repr(exc)])[0]
