"""What the SQL sinks share: store names, identifier rules, row versions, and a write planned
per table.

A write() is turned into one ``TableWrite`` per data table (all batches' parts of that
table, in stream order) and, per table, a ``TableChange`` that says which DDL brings the
stored table up to the incoming schema. The dialects only render SQL and move rows.

Everything that makes a batch unstorable for good is found here, before the store sees
it, and raised as ``PoisonBatch`` naming the batch: a table wider than ``max_columns``,
two names that differ only in case (one name in DuckDB), a reused batch id whose content
differs from the applied one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aam_dcl import keys
from aam_dcl.errors import PoisonBatch, SinkDataError
from aam_dcl.messages import Batch, FullRefresh, Record, fingerprints_conflict
from aam_dcl.schema import infer_column_type, merge_types

INBOX_TABLE = "_dcl_inbox"
BATCH_ID_COLUMN = "_dcl_batch_id"
INGESTED_AT_COLUMN = "_dcl_ingested_at"
VERSION_COLUMN = "_dcl_version"  # the producer's order of the batch that last wrote the row
DELETED_AT_COLUMN = "_dcl_deleted_at"  # when the row was deleted at the source; NULL: live
RESERVED_PREFIX = "_dcl_"  # the sink's own columns; payload columns may not use it
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL truncates longer names silently: reject instead
DEFAULT_MAX_COLUMNS = 1000  # DCL_MAX_COLUMNS' default (aam_dcl.config)
MAX_CHUNK_NUMBER = 999_999  # chunks of one run share run_start_ms; later ones sort last
_CHUNKS_PER_MS = MAX_CHUNK_NUMBER + 1
_MAX_VERSION = 2**63 - 1  # bigint


@functools.lru_cache(maxsize=4096)  # a write's parts share a handful of ids
def batch_version(batch_id: str) -> int:
    """The producer's order of a batch, from ``{connector}_{run_start_ms}_{chunk_number}``.

    ``run_start_ms * 1_000_000 + min(chunk_number, 999_999)``: a later run, or a later chunk
    of the same run, has a higher version. Parsed from the right (connector names may hold
    ``_``). An id of another shape (another producer's format), or one whose version would not
    fit a bigint, is version 0: it never replaces a versioned row, and among version-0 rows
    the last write wins as before.
    """
    parsed = keys.parse_batch_id(batch_id)
    if parsed is None:
        return 0
    _, run_start_ms, chunk_number = parsed
    version = run_start_ms * _CHUNKS_PER_MS + min(chunk_number, MAX_CHUNK_NUMBER)
    return version if version <= _MAX_VERSION else 0


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def qualified(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def store_table_name(connector: str, table: str) -> str:
    return f"{connector}__{table}"


_ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_FOLD = str.maketrans(_ASCII_UPPER, _ASCII_UPPER.lower())
# The same folding in SQL (both stores have translate()); lower() would follow the locale.
FOLD_SQL = f"translate({{}}, '{_ASCII_UPPER}', '{_ASCII_UPPER.lower()}')"


@functools.lru_cache(maxsize=8192)
def fold(name: str) -> str:
    """The name as DuckDB compares identifiers: ASCII letters ignore case, nothing else does
    (``É`` and ``é`` are two names there too). Both stores refuse names equal under it."""
    return name.translate(_FOLD)


@functools.lru_cache(maxsize=4096)  # the same few names recur in every batch
def _identifier_problem(name: str) -> str | None:
    if not name:
        return "is empty"
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if size > MAX_IDENTIFIER_BYTES:
        return f"is longer than {MAX_IDENTIFIER_BYTES} bytes"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "contains control characters"
    return None


def shown(name: str) -> str:
    """``name`` for a message: quoted, and cut when it is long (names of thousands of chars)."""
    return repr(name) if len(name) <= 80 else f"{name[:60]!r}... ({len(name)} characters)"


def check_table_name(name: str, batch_id: str) -> None:
    problem = _identifier_problem(name)
    if problem is not None:
        raise SinkDataError(
            f"batch {batch_id}: table name {shown(name)} {problem}; cannot store it"
        )


def check_column_name(table: str, column: str, batch_id: str) -> None:
    problem = _identifier_problem(column)
    if problem is None and fold(column).startswith(RESERVED_PREFIX):  # _DCL_x is _dcl_x in DuckDB
        problem = f"starts with the reserved prefix {RESERVED_PREFIX!r}"
    if problem is not None:
        raise SinkDataError(
            f"batch {batch_id}: table {table}: column name {shown(column)} {problem}; "
            "cannot store it"
        )


@dataclass(slots=True)
class TablePart:
    """One batch's records for one table."""

    batch_id: str
    records: list[Record]
    version: int  # batch_version(batch_id)


@dataclass(frozen=True, slots=True)
class Refresh:
    """A full-refresh marker for one table: its run's chunks are ``{connector}_{run}_{n}``
    for n in ``first_chunk .. first_chunk + chunks - 1``."""

    batch_id: str  # the marker's own batch
    connector: str
    run_start_ms: int
    first_chunk: int
    chunks: int

    @classmethod
    def of(cls, batch: Batch, marker: FullRefresh) -> Refresh:
        return cls(
            batch.batch_id,
            batch.connector,
            marker.run_start_ms,
            marker.first_chunk,
            marker.chunks,
        )

    @property
    def version(self) -> int:
        """The run's first version of this table: the rows it did not write are older."""
        return batch_version(keys.batch_id(self.connector, self.run_start_ms, self.first_chunk))

    def covers(self, batch_id: str) -> bool:
        """Whether ``batch_id`` is one of the run's chunks of this table."""
        parsed = keys.parse_batch_id(batch_id)
        return parsed is not None and (
            parsed[:2] == (self.connector, self.run_start_ms)
            and self.first_chunk <= parsed[2] < self.first_chunk + self.chunks
        )


@dataclass(slots=True)
class TableWrite:
    """Everything one write() does to one data table."""

    table: str  # the store's table name, {connector}__{table}
    columns: dict[str, str]  # column -> incoming logical type, first-seen order
    primary_key: list[str]
    connector: str = ""
    source: str = ""  # the connector's name of the table
    parts: list[TablePart] = field(default_factory=list)  # non-empty parts, stream order
    deletes: list[TablePart] = field(default_factory=list)  # deleted keys, stream order
    refreshes: list[Refresh] = field(default_factory=list)  # full-refresh markers
    # False when every part is a marker (no columns, records or deletes): no DDL for it.
    shaped: bool = False
    tombstoned: bool = False  # the store holds tombstones of this table (set by the sink)
    batch_ids: list[str] = field(default_factory=list)  # every contributing batch
    origin: dict[str, str] = field(default_factory=dict)  # column -> first batch that brought it
    type_origin: dict[str, str] = field(default_factory=dict)  # column -> batch that set its type
    folded: dict[str, str] = field(default_factory=dict)  # fold(column) -> column

    @property
    def row_count(self) -> int:
        return sum(len(p.records) for p in self.parts)

    def where(self, column: str | None = None) -> str:
        """'batch X, table T, column C' for error messages (the batch when there is one)."""
        ids = self.batch_ids
        batches = (
            f"batch {ids[0]}"
            if len(ids) == 1
            else f"batches {', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''}"
        )
        return f"{batches}: table {self.table}" + (f": column {column}" if column else "")

    def batch_of_row(self, index: int) -> str:
        for part in self.parts:
            if index < len(part.records):
                return part.batch_id
            index -= len(part.records)
        return self.batch_ids[-1]


@dataclass(slots=True)
class TableInfo:
    """A stored table as the sink knows it: column -> logical type, and its primary key."""

    columns: dict[str, str]
    primary_key: list[str]
    versioned: bool = True  # False: created before VERSION_COLUMN existed; added on first use
    # False: INGESTED_AT_COLUMN has no server default (a PostgreSQL table from before it got
    # ``DEFAULT now()``); set on first use, so COPY need not send the time with every row.
    ingested_default: bool = True
    deletable: bool = True  # False: from before DELETED_AT_COLUMN; added on first use
    # numeric columns stored as floating point (from before numeric was exact): widened to
    # the exact type on first use.
    inexact: list[str] = field(default_factory=list)


@dataclass(slots=True)
class TableChange:
    """The DDL that brings a stored table up to a write's columns."""

    create: bool
    add: dict[str, str]  # new column -> logical type
    widen: dict[str, str]  # existing column -> wider logical type
    info: TableInfo  # the table after the change
    add_version: bool = False  # add VERSION_COLUMN (bigint, default 0) to an older table
    set_ingested_default: bool = False  # give an older table's INGESTED_AT_COLUMN its default
    add_deleted_at: bool = False  # add DELETED_AT_COLUMN (nullable) to an older table
    from_float: list[str] = field(default_factory=list)  # widened from floating point
    before: dict[str, str] = field(default_factory=dict)  # widened column -> its stored type

    @property
    def needed(self) -> bool:
        return (
            self.create
            or self.add_version
            or self.set_ingested_default
            or self.add_deleted_at
            or bool(self.add)
            or bool(self.widen)
        )


def plan_writes(
    batches: Iterable[Batch], max_columns: int = DEFAULT_MAX_COLUMNS
) -> list[TableWrite]:
    """Group batches' tables by store table (sorted by name, so locks are taken in one order).

    Raises PoisonBatch naming the batch for a table of more than ``max_columns`` columns
    (declared plus undeclared record fields) and for two table or column names that differ
    only in case; SinkDataError for a name that cannot be an identifier.
    """
    writes: dict[str, TableWrite] = {}
    tables: dict[str, str] = {}  # fold(table) -> table
    for batch in batches:
        for tb in batch.tables:
            name = store_table_name(batch.connector, tb.name)
            tw = writes.get(name)
            if tw is None:
                check_table_name(name, batch.batch_id)
                _check_fold(tables, name, batch.batch_id, "table")
                tw = writes[name] = TableWrite(name, {}, [], batch.connector, tb.name)
            tw.batch_ids.append(batch.batch_id)
            if len(tb.schema.columns) > max_columns:  # before looking at 10 000 names one by one
                raise too_many_columns(tw, batch.batch_id, len(tb.schema.columns), max_columns)
            for col in tb.schema.columns:
                _add_column(tw, col.name, col.type, batch.batch_id)
            if tb.schema.primary_key and not tw.primary_key:
                tw.primary_key = list(tb.schema.primary_key)
            tw.shaped = tw.shaped or bool(tb.schema.columns or tb.records or tb.deleted)
            if tb.deleted:
                _add_deletes(tw, tb.deleted, tb.schema.primary_key, batch.batch_id)
            if tb.full_refresh is not None:
                tw.refreshes.append(Refresh.of(batch, tb.full_refresh))
            if tb.records:
                _add_undeclared_columns(tw, tb.records, batch.batch_id, max_columns)
                tw.parts.append(
                    TablePart(batch.batch_id, tb.records, batch_version(batch.batch_id))
                )
            if len(tw.columns) > max_columns:
                raise too_many_columns(tw, batch.batch_id, len(tw.columns), max_columns)
            for key in tw.primary_key:
                if key not in tw.columns:
                    raise SinkDataError(
                        f"batch {batch.batch_id}: table {name}: primary key column {key!r} "
                        "is not among the schema's columns"
                    )
    return [writes[name] for name in sorted(writes)]


def _add_deletes(
    tw: TableWrite, deleted: list[Record], primary_key: Sequence[str], batch_id: str
) -> None:
    """A batch's deleted keys; key columns its schema does not declare (a part of deletes
    only) are typed from the keys' values."""
    if primary_key:
        check_deleted_keys(tw, deleted, primary_key, batch_id)
    for key in primary_key:
        if key not in tw.columns:
            _add_column(tw, key, infer_column_type([d[key] for d in deleted]), batch_id)
    tw.deletes.append(TablePart(batch_id, deleted, batch_version(batch_id)))


def check_deleted_keys(
    tw: TableWrite, deleted: list[Record], primary_key: Sequence[str], batch_id: str
) -> None:
    """Every deleted key names a value for each primary-key column, else PoisonBatch (a table
    without a primary key cannot match deleted rows at all)."""
    if not primary_key:
        raise PoisonBatch(
            batch_id,
            "bad_deleted_key",
            f"batch {batch_id}: table {tw.table} has no primary key: its deleted rows "
            f"({len(deleted)} keys) cannot be matched; declare the table's primary key",
        )
    for key in deleted:
        missing = [c for c in primary_key if key.get(c) is None]
        if missing:
            raise PoisonBatch(
                batch_id,
                "bad_deleted_key",
                f"batch {batch_id}: table {tw.table}: deleted key {repr(key)[:200]} has no "
                f"value for primary-key column(s) {', '.join(map(repr, missing))}; the "
                f"table's key is ({', '.join(primary_key) or 'none'})",
            )


def _add_column(tw: TableWrite, name: str, logical: str, batch_id: str) -> None:
    known = tw.columns.get(name)
    if known is None:  # a new name: checked once per write, not once per batch
        check_column_name(tw.table, name, batch_id)
        _check_fold(tw.folded, name, batch_id, f"table {tw.table}: column")
        tw.origin[name] = batch_id
    merged = merge_types(known, logical)
    if merged != known:
        tw.type_origin[name] = batch_id
    tw.columns[name] = merged


def _check_fold(seen: dict[str, str], name: str, batch_id: str, what: str) -> None:
    """Record ``name`` under its folded form; refuse a second spelling of it."""
    other = seen.setdefault(fold(name), name)
    if other != name:
        raise PoisonBatch(
            batch_id,
            "name_collision",
            f"batch {batch_id}: {what} {name!r} collides with {other!r} in the same write: "
            "names that differ only in case are one name in DuckDB; rename one of them",
        )


def too_many_columns(tw: TableWrite, batch_id: str, count: int, limit: int) -> PoisonBatch:
    return PoisonBatch(
        batch_id,
        "too_many_columns",
        f"batch {batch_id}: table {tw.table} would have {count} columns, over "
        f"DCL_MAX_COLUMNS={limit}: split the table or raise DCL_MAX_COLUMNS (at most 1500)",
    )


def _add_undeclared_columns(
    tw: TableWrite, records: list[Record], batch_id: str, max_columns: int
) -> None:
    """Fields that records carry but the schema does not declare are kept, typed by inference."""
    seen: set[str] = set().union(*records)
    new = sorted(seen.difference(tw.columns))  # sorted: the same columns, errors every time
    if len(tw.columns) + len(new) > max_columns:  # before inferring 10 000 columns' types
        raise too_many_columns(tw, batch_id, len(tw.columns) + len(new), max_columns)
    for name in new:
        found = infer_column_type([r.get(name) for r in records])
        _add_column(tw, name, found, batch_id)


def plan_change(
    existing: TableInfo | None, columns: dict[str, str], primary_key: Sequence[str]
) -> TableChange:
    """Create, add columns, widen types (never narrow): what a write needs from the table."""
    if existing is None:
        return TableChange(True, dict(columns), {}, TableInfo(dict(columns), list(primary_key)))
    add: dict[str, str] = {}
    # A floating-point column becomes exact (or string, if this write needs that) first.
    widen = {c: merge_types("numeric", columns.get(c, "numeric")) for c in existing.inexact}
    after = {**existing.columns, **widen}
    for name, incoming in columns.items():
        stored = after.get(name)
        if stored is None:
            add[name] = after[name] = incoming
            continue
        wider = merge_types(stored, incoming)
        if wider != stored:
            widen[name] = after[name] = wider
    info = TableInfo(after, list(existing.primary_key))
    return TableChange(
        False,
        add,
        widen,
        info,
        add_version=not existing.versioned,
        set_ingested_default=not existing.ingested_default,
        add_deleted_at=not existing.deletable,
        from_float=list(existing.inexact),
        before={c: existing.columns[c] for c in widen},
    )


def plan_table(
    existing: TableInfo | None, tw: TableWrite, max_columns: int = DEFAULT_MAX_COLUMNS
) -> TableChange:
    """``plan_change`` after checking the write against the stored table: a new column that
    differs from a stored one only in case, or more than ``max_columns`` columns in all, is
    PoisonBatch naming the batch that brought it (before any DDL runs)."""
    if existing is not None:
        stored = {fold(c): c for c in existing.columns}
        new = [c for c in tw.columns if c not in existing.columns]
        for column in new:
            other = stored.get(fold(column))
            if other is not None:
                batch_id = tw.origin.get(column, tw.batch_ids[-1])
                raise PoisonBatch(
                    batch_id,
                    "name_collision",
                    f"batch {batch_id}: table {tw.table}: column {column!r} collides with the "
                    f"stored column {other!r}: names that differ only in case are one name in "
                    "DuckDB; rename the column",
                )
        count = len(existing.columns) + len(new)
        if new and count > max_columns:  # a table already wider (a lower limit) still takes rows
            # The batch whose columns first pass the limit.
            first_over = new[max(0, max_columns - len(existing.columns))]
            batch_id = tw.origin.get(first_over, tw.batch_ids[-1])
            raise too_many_columns(tw, batch_id, count, max_columns)
    return plan_change(existing, tw.columns, tw.primary_key)


def table_collision(tw: TableWrite, stored: str) -> PoisonBatch:
    """A stored table whose name differs from the write's only in case (``Bar`` vs ``bar``)."""
    batch_id = tw.batch_ids[0]
    return PoisonBatch(
        batch_id,
        "name_collision",
        f"batch {batch_id}: table {tw.table!r} collides with the stored table {stored!r}: "
        "names that differ only in case are one table in DuckDB; rename one of them",
    )


def check_fingerprints(batches: Iterable[Batch], stored: dict[str, str | None]) -> None:
    """A batch id already applied (``stored``: id -> its fingerprint) with other content is
    PoisonBatch ``batch_id_conflict``; an identical re-send, or one without a fingerprint on
    either side, is a quiet duplicate."""
    for batch in batches:
        if batch.batch_id in stored and fingerprints_conflict(
            stored[batch.batch_id], batch.fingerprint
        ):
            raise PoisonBatch(
                batch.batch_id,
                "batch_id_conflict",
                f"batch {batch.batch_id} was already applied with other content (fingerprint "
                f"{stored[batch.batch_id]}, this copy {batch.fingerprint}): a producer reused "
                "the id; the first copy's rows stay, this one is not applied",
            )


def unique_batches(batches: Sequence[Batch]) -> list[Batch]:
    """First occurrence of each id: an id repeated within one call is applied once."""
    seen: set[str] = set()
    out: list[Batch] = []
    for batch in batches:
        if batch.batch_id not in seen:
            seen.add(batch.batch_id)
            out.append(batch)
    return out
