"""``duckdb://<path>``: the embedded DCL store, one DuckDB file.

DuckDB is synchronous: every call runs in a worker thread, one at a time (an asyncio.Lock),
because several stream loops share one sink. Rows go in bulk: a write's records are dumped
as NDJSON (one line per batch) next to the database and loaded with one
``INSERT ... SELECT ... FROM read_json(...)`` per table, with explicit column types;
parameterised executemany manages about 400 rows/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import duckdb
import orjson

from aam_dcl.errors import ConfigError, SinkDataError, SinkError, SinkUnavailable
from aam_dcl.messages import Batch
from dcl_worker.sinks._sql import (
    BATCH_ID_COLUMN,
    INBOX_TABLE,
    INGESTED_AT_COLUMN,
    RESERVED_PREFIX,
    VERSION_COLUMN,
    TableChange,
    TableInfo,
    TableWrite,
    plan_change,
    plan_writes,
    quote_ident,
    quote_literal,
    unique_batches,
    upsert_clause,
)
from dcl_worker.sinks.base import Sink

T = TypeVar("T")

TYPES = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "numeric": "DOUBLE",
    "boolean": "BOOLEAN",
    "datetime": "TIMESTAMPTZ",
    "date": "DATE",
    "json": "JSON",
}
# information_schema spelling -> logical type; anything else (a column made by hand) is
# treated as string, which never asks for a change.
_FROM_STORE = {
    "VARCHAR": "string",
    "BIGINT": "integer",
    "DOUBLE": "numeric",
    "BOOLEAN": "boolean",
    "TIMESTAMP WITH TIME ZONE": "datetime",
    "DATE": "date",
    "JSON": "json",
}
_SEQ, _POS, _ROWS, _ROW = "_dcl_seq", "_dcl_pos", "_dcl_rows", "_dcl_row"
_TARGET = "_dcl_target"  # the INSERT's alias for the data table, for the upsert's WHERE
_MIN_OBJECT_BYTES = 16 * 1024 * 1024  # read_json's default maximum_object_size

# Errors that say the store cannot be used right now, as opposed to rejecting the data.
_UNAVAILABLE = (
    duckdb.IOException,
    duckdb.OutOfMemoryException,
    duckdb.TransactionException,
    duckdb.FatalException,
    duckdb.InternalException,
    duckdb.ConnectionException,
)
# The database is invalidated after these: reconnect before the next call.
_BROKEN = (duckdb.FatalException, duckdb.InternalException, duckdb.ConnectionException)


def parse_duckdb_url(url: str) -> str:
    """Everything after ``duckdb://`` is the file path (``:memory:`` for a throwaway store)."""
    path = url.removeprefix("duckdb://")
    if not path:
        raise ConfigError(
            f"DCL_SINK_URL={url!r} has no file path: use duckdb:///abs/dcl.duckdb "
            "or duckdb://./data/dcl.duckdb"
        )
    return path


class _RowsRejected(Exception):
    """DuckDB refused a table's rows; carries what is needed to name the culprit column."""

    def __init__(self, tw: TableWrite, path: str, types: dict[str, str], exc: duckdb.Error):
        super().__init__(str(exc))
        self.tw, self.path, self.types, self.exc = tw, path, types, exc


class DuckDBSink(Sink):
    scheme = "duckdb"

    def __init__(self, url: str, tenant: str) -> None:
        super().__init__(url, tenant)
        self.path = parse_duckdb_url(url)
        self._spool_dir = (
            tempfile.gettempdir() if self.path == ":memory:" else os.path.dirname(self.path) or "."
        )
        self._con: duckdb.DuckDBPyConnection | None = None
        self._opened = False
        self._lock = asyncio.Lock()
        self._tables: dict[str, TableInfo] = {}  # committed knowledge only

    # --- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        async with self._lock:
            if self._con is None:
                self._con = await asyncio.to_thread(self._connect)
            self._opened = True

    def _connect(self) -> duckdb.DuckDBPyConnection:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(self.path)
        except (duckdb.Error, OSError) as exc:
            raise SinkUnavailable(f"cannot open DuckDB file {self.path}: {exc}") from exc
        try:
            con.execute("SET TimeZone = 'UTC'")  # naive datetimes are read as UTC
            con.execute(
                f"CREATE TABLE IF NOT EXISTS {INBOX_TABLE} (batch_id VARCHAR PRIMARY KEY, "
                "tenant VARCHAR, connector VARCHAR, applied_at TIMESTAMPTZ, record_count INTEGER)"
            )
        except duckdb.Error as exc:
            con.close()
            raise SinkUnavailable(f"cannot prepare DuckDB file {self.path}: {exc}") from exc
        return con

    async def close(self) -> None:
        async with self._lock:
            con, self._con = self._con, None
            self._opened = False
            self._tables.clear()
            if con is not None:
                await asyncio.to_thread(con.close)

    async def ping(self) -> None:
        await self._run(lambda con: con.execute("SELECT 1").fetchall())

    async def write(self, batches: Sequence[Batch]) -> set[str]:
        todo = unique_batches(batches)
        return await self._run(lambda con: self._write(con, todo))

    async def count_rows(self) -> dict[str, int]:
        """Rows per data table (the inbox excluded)."""
        return await self._run(self._count_rows)

    async def _run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn`` in a thread, one call at a time; the lock is held until the thread ends."""
        async with self._lock:
            if self._con is None:
                if not self._opened:
                    raise SinkUnavailable("the DuckDB sink is not open: call open() first")
                self._con = await asyncio.to_thread(self._connect)
            con = self._con
            task = asyncio.ensure_future(asyncio.to_thread(fn, con))
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                # The thread cannot be stopped; keep others off the connection until it ends.
                await asyncio.wait({task})
                raise
            except _UNAVAILABLE as exc:
                if isinstance(exc, _BROKEN):
                    self._con = None
                    self._tables.clear()
                    await asyncio.to_thread(con.close)
                raise SinkUnavailable(f"DuckDB file {self.path} is unusable: {exc}") from exc

    # --- the write, in the worker thread ----------------------------------------------------

    def _write(self, con: duckdb.DuckDBPyConnection, batches: list[Batch]) -> set[str]:
        if not batches:
            return set()
        ids = [b.batch_id for b in batches]
        known: dict[str, TableInfo] = {}
        spooled: list[str] = []
        con.begin()
        try:
            rows = con.execute(
                f"SELECT batch_id FROM {INBOX_TABLE} WHERE batch_id IN (SELECT unnest(?))",
                [ids],
            ).fetchall()
            duplicates = {row[0] for row in rows}
            fresh = [b for b in batches if b.batch_id not in duplicates]
            if fresh:
                con.execute(
                    f"INSERT INTO {INBOX_TABLE} SELECT unnest(?::VARCHAR[]), ?, "
                    "unnest(?::VARCHAR[]), now(), unnest(?::INTEGER[])",
                    [
                        [b.batch_id for b in fresh],
                        self.tenant,
                        [b.connector for b in fresh],
                        [b.record_count for b in fresh],
                    ],
                )
                for tw in plan_writes(fresh):
                    known[tw.table] = self._apply(con, tw, spooled)
            con.commit()
        except BaseException as exc:
            self._rollback(con)
            if isinstance(exc, _RowsRejected):
                raise self._rejected(con, exc) from exc.exc
            if isinstance(exc, _UNAVAILABLE):
                raise  # _run maps these (and reconnects when the database is broken)
            if isinstance(exc, duckdb.Error):
                raise SinkDataError(f"DuckDB rejected batches {_ids(ids)}: {exc}") from exc
            if isinstance(exc, OSError):
                raise SinkUnavailable(f"cannot spool rows next to {self.path}: {exc}") from exc
            raise
        finally:
            for path in spooled:
                _remove(path)
        self._tables.update(known)
        return duplicates

    def _rollback(self, con: duckdb.DuckDBPyConnection) -> None:
        # DuckDB may have aborted the transaction already: nothing left to roll back then.
        with contextlib.suppress(duckdb.Error):
            con.rollback()

    def _apply(
        self, con: duckdb.DuckDBPyConnection, tw: TableWrite, spooled: list[str]
    ) -> TableInfo:
        info = self._tables.get(tw.table) or _read_table(con, tw.table)
        change = plan_change(info, tw.columns, tw.primary_key)
        if change.needed:
            _alter(con, tw.table, change)
        if tw.parts:
            path = os.path.join(self._spool_dir, f".dcl-{uuid.uuid4().hex}.ndjson")
            spooled.append(path)
            self._insert(con, tw, change.info, path)
        return change.info

    def _insert(
        self, con: duckdb.DuckDBPyConnection, tw: TableWrite, info: TableInfo, path: str
    ) -> None:
        try:
            lines = [
                orjson.dumps(
                    {
                        _SEQ: n,
                        BATCH_ID_COLUMN: p.batch_id,
                        VERSION_COLUMN: p.version,
                        _ROWS: p.records,
                    }
                )
                for n, p in enumerate(tw.parts)
            ]
        except TypeError as exc:  # orjson.JSONEncodeError: a value JSON cannot hold
            raise SinkDataError(f"{tw.where()}: a record cannot be encoded: {exc}") from exc
        with open(path, "wb") as f:
            f.write(b"\n".join(lines))
        columns = list(dict.fromkeys([*tw.columns, *info.primary_key]))
        types = {c: TYPES.get(info.columns.get(c, "string"), "VARCHAR") for c in columns}
        source = _read_json(path, types, max(map(len, lines)))
        fields = ", ".join(f"{_ROW}.{quote_ident(c)} AS {quote_ident(c)}" for c in columns)
        names = ", ".join(quote_ident(c) for c in columns)
        rows = (
            f"SELECT {_SEQ}, {_POS}, {BATCH_ID_COLUMN}, {VERSION_COLUMN}, {fields} FROM ("
            f"SELECT {_SEQ}, {BATCH_ID_COLUMN}, {VERSION_COLUMN}, unnest({_ROWS}) AS {_ROW}, "
            f"generate_subscripts({_ROWS}, 1) AS {_POS} FROM {source})"
        )
        meta = [BATCH_ID_COLUMN, VERSION_COLUMN, INGESTED_AT_COLUMN]
        target = f"INSERT INTO {quote_ident(tw.table)} AS {_TARGET} ({names}, {', '.join(meta)})"
        values = f"{names}, {BATCH_ID_COLUMN}, {VERSION_COLUMN}, now()"
        pk = info.primary_key
        if pk:
            keys = ", ".join(quote_ident(c) for c in pk)
            updates = [c for c in columns if c not in pk] + meta
            # One row per key: the newest version, then the last in stream order.
            sql = (
                f"{target} SELECT DISTINCT ON ({keys}) {values} FROM ({rows}) "
                f"ORDER BY {keys}, {VERSION_COLUMN} DESC, {_SEQ} DESC, {_POS} DESC "
                + upsert_clause(pk, updates, _TARGET)
            )
        else:
            sql = f"{target} SELECT {values} FROM ({rows})"
        try:
            con.execute(sql)
        except (duckdb.ConversionException, duckdb.InvalidInputException) as exc:
            raise _RowsRejected(tw, path, types, exc) from exc
        except duckdb.Error as exc:
            if isinstance(exc, _UNAVAILABLE):
                raise
            raise SinkDataError(f"{tw.where()}: DuckDB rejected the rows: {exc}") from exc

    def _rejected(self, con: duckdb.DuckDBPyConnection, err: _RowsRejected) -> SinkError:
        """Name the column whose values DuckDB could not convert (probing one column at a time)."""
        for column, sql_type in err.types.items():
            if sql_type == "VARCHAR":
                continue  # any JSON value converts to text
            probe = _read_json(err.path, {column: sql_type}, _MIN_OBJECT_BYTES)
            try:
                con.execute(f"SELECT count({_ROWS}) FROM {probe}").fetchall()
            except (duckdb.ConversionException, duckdb.InvalidInputException) as exc:
                return SinkDataError(
                    f"{err.tw.where(column)}: a value is not a valid {sql_type}: {_first_line(exc)}"
                )
        return SinkDataError(f"{err.tw.where()}: DuckDB rejected the rows: {_first_line(err.exc)}")

    def _count_rows(self, con: duckdb.DuckDBPyConnection) -> dict[str, int]:
        names = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema() AND table_type = 'BASE TABLE' AND table_name <> ? ORDER BY 1",
            [INBOX_TABLE],
        ).fetchall()
        out: dict[str, int] = {}
        for (name,) in names:
            row = con.execute(f"SELECT count(*) FROM {quote_ident(name)}").fetchone()
            out[name] = int(row[0]) if row else 0
        return out


def _read_json(path: str, types: dict[str, str], longest_line: int) -> str:
    fields = ", ".join(f"{quote_ident(c)} {t}" for c, t in types.items())
    columns = (
        f"{{{quote_literal(_SEQ)}: 'INTEGER', {quote_literal(BATCH_ID_COLUMN)}: 'VARCHAR', "
        f"{quote_literal(VERSION_COLUMN)}: 'BIGINT', "
        f"{quote_literal(_ROWS)}: {quote_literal(f'STRUCT({fields})[]')}}}"
    )
    size = max(_MIN_OBJECT_BYTES, longest_line + 1)
    return (
        f"read_json({quote_literal(path)}, format = 'newline_delimited', "
        f"maximum_object_size = {size}, columns = {columns})"
    )


def _read_table(con: duckdb.DuckDBPyConnection, table: str) -> TableInfo | None:
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
    return TableInfo(columns, list(pk[0]) if pk else [], versioned)


def _alter(con: duckdb.DuckDBPyConnection, table: str, change: TableChange) -> None:
    name = quote_ident(table)
    if change.create or set(change.widen) & set(change.info.primary_key):
        # DuckDB cannot change the type of a key column: rebuild the table around it.
        _create(con, table if change.create else f"{table}__dcl_rebuild", change.info)
        if not change.create:
            _copy_into_rebuild(con, table, change.info)
        return
    if change.add_version:  # a table from before row versions: its rows are version 0
        # No IF NOT EXISTS: DuckDB refuses it with NOT NULL. The catalog was read in this
        # transaction, and only this process can open the file.
        con.execute(f"ALTER TABLE {name} ADD COLUMN {VERSION_COLUMN} BIGINT NOT NULL DEFAULT 0")
    for column, logical in change.add.items():
        con.execute(
            f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {quote_ident(column)} {TYPES[logical]}"
        )
    for column, logical in change.widen.items():
        con.execute(
            f"ALTER TABLE {name} ALTER COLUMN {quote_ident(column)} SET DATA TYPE {TYPES[logical]}"
        )


def _create(con: duckdb.DuckDBPyConnection, table: str, info: TableInfo) -> None:
    defs = [f"{quote_ident(c)} {TYPES[t]}" for c, t in info.columns.items()]
    defs += [
        f"{BATCH_ID_COLUMN} VARCHAR",
        f"{VERSION_COLUMN} BIGINT NOT NULL DEFAULT 0",
        f"{INGESTED_AT_COLUMN} TIMESTAMPTZ",
    ]
    if info.primary_key:
        defs.append(f"PRIMARY KEY ({', '.join(quote_ident(c) for c in info.primary_key)})")
    con.execute(f"CREATE TABLE IF NOT EXISTS {quote_ident(table)} ({', '.join(defs)})")


def _copy_into_rebuild(con: duckdb.DuckDBPyConnection, table: str, info: TableInfo) -> None:
    rebuild = f"{table}__dcl_rebuild"
    stored = _read_table(con, table)
    old = stored.columns if stored else {}
    meta = [BATCH_ID_COLUMN, INGESTED_AT_COLUMN]
    if stored and stored.versioned:  # otherwise the rebuilt rows take the default, 0
        meta.append(VERSION_COLUMN)
    columns = [c for c in info.columns if c in old] + meta
    names = ", ".join(quote_ident(c) for c in columns)
    casts = ", ".join(
        f"CAST({quote_ident(c)} AS {TYPES[info.columns[c]]})"
        if c in info.columns
        else quote_ident(c)
        for c in columns
    )
    con.execute(
        f"INSERT INTO {quote_ident(rebuild)} ({names}) SELECT {casts} FROM {quote_ident(table)}"
    )
    con.execute(f"DROP TABLE {quote_ident(table)}")
    con.execute(f"ALTER TABLE {quote_ident(rebuild)} RENAME TO {quote_ident(table)}")


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0]


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # never written: failed before spooling
        os.remove(path)
