"""``duckdb://<path>``: the embedded DCL store, one DuckDB file.

DuckDB is synchronous: every call runs in a worker thread, one at a time (an asyncio.Lock),
because several stream loops share one sink. Rows go in bulk: a write's records are dumped
as NDJSON (one line per batch) next to the database and loaded with one
``INSERT ... SELECT ... FROM read_json(...)`` per table, with explicit column types;
parameterised executemany manages about 400 rows/s. A spool file is named after the
database and this process, so open() can remove what a crashed process left behind.
Tables and inbox live in the tenant's schema (``_tenancy``); the connection's default
schema is set to it, so the SQL below names tables without a schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import duckdb
import orjson

from aam_dcl.errors import ConfigError, SinkDataError, SinkError, SinkUnavailable
from aam_dcl.messages import Batch
from dcl_worker.sinks._duckdb_catalog import (
    TYPES,
    alter_table,
    first_column,
    qualified,
    read_table,
    stored_schema,
    table_exists,
    table_of_other_case,
)
from dcl_worker.sinks._sql import (
    BATCH_ID_COLUMN,
    DEFAULT_MAX_COLUMNS,
    INBOX_TABLE,
    INGESTED_AT_COLUMN,
    VERSION_COLUMN,
    TableInfo,
    TableWrite,
    check_fingerprints,
    check_table_name,
    plan_table,
    plan_writes,
    quote_ident,
    quote_literal,
    table_collision,
    unique_batches,
    upsert_clause,
)
from dcl_worker.sinks._tenancy import OWNER_TABLE, adopt_legacy, check_owner, tenant_schema
from dcl_worker.sinks.base import Sink

T = TypeVar("T")

_SEQ, _POS, _ROWS, _ROW = "_dcl_seq", "_dcl_pos", "_dcl_rows", "_dcl_row"
_TARGET = "_dcl_target"  # the INSERT's alias for the data table, for the upsert's WHERE
_MIN_OBJECT_BYTES = 16 * 1024 * 1024  # read_json's default maximum_object_size
DEFAULT_SCHEMA = "main"
# Spool files are .dcl-{database file}-{process}-{uuid}.ndjson: a file of this database that
# another process wrote is a leftover (DuckDB lets one process open a database file at once).
_PROCESS = uuid.uuid4().hex[:12]
_SPOOL = re.compile(r"([0-9a-f]{12})-[0-9a-f]{32}\.ndjson")  # after the prefix
_OLD_SPOOL = re.compile(r"\.dcl-[0-9a-f]{32}\.ndjson")  # before spool names said whose they are
# A path that can never be a database file: ConfigError (exit 2), not a retry forever.
_BAD_PATH_ERRNOS = frozenset({errno.ENOTDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS})

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


def parse_duckdb_url(url: str) -> tuple[str, str | None]:
    """(file path, the schema a trailing ``?schema=NAME`` names, or None: the tenant's).

    Everything else after ``duckdb://`` is the path (``:memory:`` for a throwaway store).
    """
    path = url.removeprefix("duckdb://")
    schema = None
    head, sep, query = path.rpartition("?schema=")
    if sep and head:
        path, schema = head, query
        try:
            check_table_name(schema, "-")
        except SinkDataError:
            raise ConfigError(
                f"DCL_SINK_URL has an invalid schema={schema!r}: use 1-63 bytes without "
                "control characters"
            ) from None
    if not path:
        raise ConfigError(
            f"DCL_SINK_URL={url!r} has no file path: use duckdb:///abs/dcl.duckdb "
            "or duckdb://./data/dcl.duckdb"
        )
    return path, schema


class _RowsRejected(Exception):
    """DuckDB refused a table's rows; carries what is needed to name the culprit column."""

    def __init__(self, tw: TableWrite, path: str, types: dict[str, str], exc: duckdb.Error):
        super().__init__(str(exc))
        self.tw, self.path, self.types, self.exc = tw, path, types, exc


class DuckDBSink(Sink):
    scheme = "duckdb"

    def __init__(self, url: str, tenant: str, *, max_columns: int = DEFAULT_MAX_COLUMNS) -> None:
        super().__init__(url, tenant, max_columns=max_columns)
        self.path, self._explicit_schema = parse_duckdb_url(url)
        # The rule's schema; open() takes the stored spelling, or an older store's main.
        self.schema = self._explicit_schema or tenant_schema(tenant, DEFAULT_SCHEMA)
        memory = self.path == ":memory:"
        self._spool_dir = tempfile.gettempdir() if memory else os.path.dirname(self.path) or "."
        self._spool_prefix = f".dcl-{'memory' if memory else os.path.basename(self.path)}-"
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
        if self.path != ":memory:":
            self._check_path()
        try:
            con = duckdb.connect(self.path)
        except (duckdb.Error, OSError) as exc:
            raise SinkUnavailable(f"cannot open DuckDB file {self.path}: {exc}") from exc
        try:
            con.execute("SET TimeZone = 'UTC'")  # naive datetimes are read as UTC
            con.begin()
            schema = self._claim_schema(con, self._choose_schema(con))
            con.commit()
            con.execute(f"SET schema = {quote_literal(schema)}")
        except BaseException as exc:
            with contextlib.suppress(duckdb.Error):
                con.rollback()
            con.close()
            if isinstance(exc, duckdb.Error):
                raise SinkUnavailable(f"cannot prepare DuckDB file {self.path}: {exc}") from exc
            raise
        self.schema = schema
        if self.path != ":memory:":  # the temp directory's spool files are anyone's
            self._remove_leftover_spools()
        return con

    def _check_path(self) -> None:
        """A directory, or a place the worker cannot write, never becomes a database file."""
        path = Path(self.path)
        if path.is_dir():
            raise ConfigError(
                f"DCL_SINK_URL: the DuckDB path {self.path} is a directory; name a file in it, "
                f"e.g. duckdb://{path / 'dcl.duckdb'}"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno not in _BAD_PATH_ERRNOS:
                raise SinkUnavailable(f"cannot create {path.parent}: {exc}") from exc
            raise ConfigError(
                f"DCL_SINK_URL: cannot create the directory of the DuckDB file {self.path}: "
                f"{exc.strerror}; choose a path the worker can write"
            ) from exc
        for target in (path.parent, path) if path.exists() else (path.parent,):
            if not os.access(target, os.W_OK):  # the spool files go next to the database too
                raise ConfigError(
                    f"DCL_SINK_URL: the DuckDB path {self.path} is not writable ({target}); "
                    "choose a path the worker can write"
                )

    def _choose_schema(self, con: duckdb.DuckDBPyConnection) -> str:
        """``?schema=``, else the tenant's by rule, unless this is a store from before tenant
        schemas whose main schema this tenant has adopted (or adopts now)."""
        if self._explicit_schema is not None:
            return self._explicit_schema
        own = tenant_schema(self.tenant, DEFAULT_SCHEMA)
        if own == DEFAULT_SCHEMA or stored_schema(con, own) is not None:
            return own
        if table_exists(con, DEFAULT_SCHEMA, OWNER_TABLE):
            owners = first_column(
                con, f"SELECT tenant FROM {qualified(DEFAULT_SCHEMA, OWNER_TABLE)}"
            )
            return DEFAULT_SCHEMA if owners == [self.tenant] else own
        if table_exists(con, DEFAULT_SCHEMA, INBOX_TABLE):
            tenants = first_column(
                con,
                f"SELECT DISTINCT tenant FROM {qualified(DEFAULT_SCHEMA, INBOX_TABLE)} "
                "WHERE tenant IS NOT NULL ORDER BY 1",
            )
            if adopt_legacy(DEFAULT_SCHEMA, self.tenant, tenants):
                return DEFAULT_SCHEMA
        return own

    def _claim_schema(self, con: duckdb.DuckDBPyConnection, schema: str) -> str:
        """Create the schema, refuse it if another tenant owns it, record the owner, create the
        inbox (or give an older one its fingerprint column). Returns the stored spelling:
        DuckDB's ``dcl_tx`` is a ``dcl_TX`` made before, which the owner record then names."""
        stored = stored_schema(con, schema)
        if stored is None:
            con.execute(f"CREATE SCHEMA {quote_ident(schema)}")
            stored = schema
        owner, inbox = qualified(stored, OWNER_TABLE), qualified(stored, INBOX_TABLE)
        con.execute(f"CREATE TABLE IF NOT EXISTS {owner} (tenant VARCHAR NOT NULL)")
        owners = first_column(con, f"SELECT tenant FROM {owner}")
        had_inbox = table_exists(con, stored, INBOX_TABLE)
        others: list[str] = []
        if not owners and had_inbox:
            others = first_column(
                con,
                f"SELECT DISTINCT tenant FROM {inbox} WHERE tenant <> ? ORDER BY 1",
                [self.tenant],
            )
        if check_owner(stored, self.tenant, owners, others):
            con.execute(f"INSERT INTO {owner} VALUES (?)", [self.tenant])
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {inbox} (batch_id VARCHAR PRIMARY KEY, "
            "tenant VARCHAR, connector VARCHAR, applied_at TIMESTAMPTZ, record_count INTEGER, "
            "fingerprint VARCHAR)"
        )
        if had_inbox:  # an inbox from before fingerprints gets the column (NULL: not compared)
            con.execute(f"ALTER TABLE {inbox} ADD COLUMN IF NOT EXISTS fingerprint VARCHAR")
        return stored

    def _remove_leftover_spools(self) -> None:
        """Spool files of this database left by an earlier process (killed mid-write)."""
        prefix = self._spool_prefix
        with os.scandir(self._spool_dir) as entries:
            for entry in entries:
                name = entry.name
                spool = name.startswith(prefix) and _SPOOL.fullmatch(name[len(prefix) :])
                if (spool and spool[1] != _PROCESS) or _OLD_SPOOL.fullmatch(name):
                    _remove(entry.path)

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
        """Rows per data table (the inbox and the owner record excluded)."""
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
                f"SELECT batch_id, fingerprint FROM {INBOX_TABLE} "
                "WHERE batch_id IN (SELECT unnest(?))",
                [ids],
            ).fetchall()
            stored = {row[0]: row[1] for row in rows}
            check_fingerprints(batches, stored)
            duplicates = set(stored)
            fresh = [b for b in batches if b.batch_id not in duplicates]
            if fresh:
                con.execute(
                    f"INSERT INTO {INBOX_TABLE} (batch_id, tenant, connector, applied_at, "
                    "record_count, fingerprint) SELECT unnest(?::VARCHAR[]), ?, "
                    "unnest(?::VARCHAR[]), now(), unnest(?::INTEGER[]), unnest(?::VARCHAR[])",
                    [
                        [b.batch_id for b in fresh],
                        self.tenant,
                        [b.connector for b in fresh],
                        [b.record_count for b in fresh],
                        [b.fingerprint for b in fresh],
                    ],
                )
                for tw in plan_writes(fresh, self.max_columns):
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
        info = self._tables.get(tw.table) or read_table(con, tw.table)
        if info is None:
            other = table_of_other_case(con, tw.table)
            if other is not None:
                raise table_collision(tw, other)
        change = plan_table(info, tw, self.max_columns)
        if change.needed:
            alter_table(con, tw.table, change)
        if tw.parts:
            name = f"{self._spool_prefix}{_PROCESS}-{uuid.uuid4().hex}.ndjson"
            path = os.path.join(self._spool_dir, name)
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
            "current_schema() AND table_type = 'BASE TABLE' AND table_name NOT IN (?, ?) "
            "ORDER BY 1",
            [INBOX_TABLE, OWNER_TABLE],
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


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0]


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # never written: failed before spooling
        os.remove(path)
