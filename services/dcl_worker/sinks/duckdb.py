"""``duckdb://<path>``: the embedded DCL store, one DuckDB file.

The write sequence is ``SqlSink``'s (``_template``). This module owns the connection, the
tenant's schema at open(), the NDJSON bulk load, and the one mapping of DuckDB's exceptions
(``translate_duckdb``); the catalog and DDL are ``_duckdb_catalog``'s.

DuckDB is synchronous: every call runs in a worker thread (``_in_thread``), and one call at a
time holds the connection (an asyncio.Lock, for a write's whole transaction), because several
stream loops share one sink. Rows go in bulk: a table's records are dumped as NDJSON (one
line per batch) next to the database and read by the merge with ``read_json(...)`` and
explicit column types; parameterised executemany manages about 400 rows/s. A spool file is
named after the database and this process, so open() can remove what a crashed process left
behind. Tables and inbox live in the tenant's schema (``_tenancy``); the connection's default
schema is set to it, so the catalog SQL names tables without a schema.

DuckDB lets one process open a file: the sink releases it after ``IDLE_RELEASE_S`` without a
call (so ``aam-dcl tables`` can read what landed while the worker waits for work) and opens
it again at the next write; readiness meanwhile only checks the file is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any, ParamSpec, TypeVar

import duckdb

from aam_dcl.errors import AamDclError, SinkDataError, SinkUnavailable
from aam_dcl.messages import Batch
from dcl_worker.sinks._claim import check_claim, choose_schema
from dcl_worker.sinks._decimals import fits_duckdb
from dcl_worker.sinks._duckdb_catalog import (
    FLOAT_TYPE,
    TYPES,
    alter_table,
    first_column,
    read_table,
    stored_schema,
    table_exists,
    table_of_other_case,
)
from dcl_worker.sinks._duckdb_file import check_path, parse_duckdb_url, translate_duckdb
from dcl_worker.sinks._duckdb_spool import (
    POS,
    SEQ,
    probe,
    remove,
    remove_leftover_spools,
    spool,
    spool_name,
    staged_rows,
)
from dcl_worker.sinks._merge import Staged
from dcl_worker.sinks._registry import SINK_TABLES
from dcl_worker.sinks._sql import (
    INBOX_TABLE,
    TableChange,
    TableInfo,
    TableWrite,
    quote_ident,
    quote_literal,
)
from dcl_worker.sinks._template import SqlSink

P = ParamSpec("P")
IDLE_RELEASE_S = 2.0  # an idle sink closes the file so that another process may read it
T = TypeVar("T")

DEFAULT_SCHEMA = "main"
# The database is invalidated after these: reconnect before the next call.
_BROKEN = (duckdb.FatalException, duckdb.InternalException, duckdb.ConnectionException)


@dataclass(slots=True)
class _Session:
    """The connection, held for one call, and the spool files of the write in progress."""

    con: duckdb.DuckDBPyConnection
    spooled: list[str] = field(default_factory=list)


class DuckDBSink(SqlSink[_Session]):
    scheme = "duckdb"
    store = "DuckDB"
    default_schema = DEFAULT_SCHEMA
    types = TYPES
    float_type = FLOAT_TYPE

    def _parse_url(self, url: str) -> str | None:
        self.path, schema = parse_duckdb_url(url)
        return schema

    def _setup(self) -> None:
        super()._setup()
        memory = self.path == ":memory:"
        self._spool_dir = tempfile.gettempdir() if memory else os.path.dirname(self.path) or "."
        self._spool_prefix = f".dcl-{'memory' if memory else os.path.basename(self.path)}-"
        self._con: duckdb.DuckDBPyConnection | None = None
        self._opened = False
        self._lock = asyncio.Lock()
        self._idle: asyncio.TimerHandle | None = None  # releases the file when it fires
        self._release_task: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        async with self._lock:
            if self._con is None:
                self._con = await self._connect()
            self._opened = True

    async def _connect(self) -> duckdb.DuckDBPyConnection:
        """Open the file, settle the tenant's schema and make it the connection's default."""
        if self.path != ":memory:":
            await _in_thread(check_path, self.path)
        with self._boundary("cannot open the file", opening=True):
            con = await _in_thread(duckdb.connect, self.path)
        prepared = False
        try:
            with self._boundary("cannot prepare the file", opening=True):
                session = _Session(con)
                # Naive datetimes are read as UTC.
                await self._execute(session, "SET TimeZone = 'UTC'")
                async with self._transaction(session):
                    schema = await self._settle_schema(session)
                await self._execute(session, f"SET schema = {quote_literal(schema)}")
            prepared = True
        finally:
            if not prepared:  # failed or cancelled; an open transaction is rolled back with it
                await _in_thread(con.close)
        self.schema = schema
        if self.path != ":memory:":  # the temp directory's spool files are anyone's
            await _in_thread(remove_leftover_spools, self._spool_dir, self._spool_prefix)
        return con

    async def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        async with self._lock:
            con, self._con = self._con, None
            self._opened = False
            self._tables.clear()
            if con is not None:
                await _in_thread(con.close)

    def _translate(self, exc: Exception, what: str, *, opening: bool = False) -> AamDclError | None:
        return translate_duckdb(exc, self.path, what, opening=opening)

    async def check(self) -> None:
        """The path (as open() checks it, creating nothing), then, if the file exists, a
        read-only connection: the schema the sink would choose and its owner. A file another
        process has open (a running worker) is SinkUnavailable: DuckDB lets one process in."""
        if self.path == ":memory:" or self._con is not None:
            return
        await _in_thread(check_path, self.path, create=False)
        if not await _in_thread(os.path.exists, self.path):
            return  # open() creates it
        with self._boundary("cannot open the file", opening=True):
            con = await _in_thread(duckdb.connect, self.path, read_only=True)
        try:
            with self._boundary("cannot read the file", opening=True):
                session = _Session(con)
                schema = await choose_schema(self, session)
                if await self._stored_schema(session, schema) is not None:
                    await check_claim(self, session, schema)
        finally:
            await _in_thread(con.close)

    def _name(self, table: str) -> str:
        # The connection's default schema is the tenant's; "x"."t" could name a catalog x.
        return quote_ident(table)

    # --- the template's hooks: each runs its DuckDB calls in the worker thread ------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Session]:
        async with self._lock:
            if self._con is None:
                if not self._opened:
                    raise SinkUnavailable("the DuckDB sink is not open: call open() first")
                self._con = await self._connect()
            con = self._con
            try:
                yield _Session(con)
            except _BROKEN:
                self._con = None  # DuckDB invalidated the database: reconnect on the next call
                self._tables.clear()
                await _in_thread(con.close)
                raise
            finally:
                self._release_when_idle()

    def _release_when_idle(self) -> None:
        if self.path == ":memory:":  # releasing it would drop the database
            return
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(IDLE_RELEASE_S, self._start_release)

    def _start_release(self) -> None:
        self._release_task = asyncio.ensure_future(self._release())

    async def _release(self) -> None:
        """Close the file after IDLE_RELEASE_S without a call; the next call opens it again
        (and reads the tables' shapes afresh: another process may have changed them)."""
        if self._lock.locked():  # in use after all: try again later
            self._release_when_idle()
            return
        async with self._lock:
            con, self._con = self._con, None
            self._tables.clear()
            if con is not None:
                await _in_thread(con.close)

    async def ping(self) -> None:
        if self._opened and self._con is None and self.path != ":memory:":
            await _in_thread(check_path, self.path, create=False)  # released while idle
            return
        await super().ping()

    @contextlib.asynccontextmanager
    async def _transaction(self, s: _Session) -> AsyncIterator[None]:
        committed = False
        try:
            await _in_thread(s.con.begin)  # in the try: a caller cancelled here has begun too
            yield
            await _in_thread(_commit, s)
            committed = True
        finally:
            if not committed:  # the write failed, was cancelled, or its commit failed
                await _in_thread(_roll_back, s)

    async def _stored_schema(self, s: _Session, schema: str) -> str | None:
        return await _in_thread(stored_schema, s.con, schema)

    async def _table_exists(self, s: _Session, schema: str, table: str) -> bool:
        return await _in_thread(table_exists, s.con, schema, table)

    async def _upgrade_inbox(self, s: _Session, inbox: str) -> None:
        await self._execute(s, f"ALTER TABLE {inbox} ADD COLUMN IF NOT EXISTS fingerprint VARCHAR")

    async def _strings(self, s: _Session, sql: str) -> list[str]:
        return await _in_thread(first_column, s.con, sql)

    async def _execute(self, s: _Session, sql: str) -> None:
        await _in_thread(s.con.execute, sql)

    async def _claim_batches(self, s: _Session, batches: list[Batch]) -> dict[str, str | None]:
        return await _in_thread(_claim, s.con, self.tenant, batches)

    async def _read_table(self, s: _Session, table: str) -> TableInfo | None:
        return await _in_thread(read_table, s.con, table)

    async def _table_of_other_case(self, s: _Session, table: str) -> str | None:
        return await _in_thread(table_of_other_case, s.con, table)

    async def _alter_table(self, s: _Session, table: str, change: TableChange) -> None:
        await _in_thread(alter_table, s.con, table, change)

    def _adapt(self, tw: TableWrite) -> None:
        """A numeric column with a value DECIMAL(38, 9) cannot hold exactly is a string column
        in this write (the planner then widens the stored one): never a rounded value."""
        for column, kind in tw.columns.items():
            if kind == "numeric":
                misfit = _first_misfit(tw, column)
                if misfit is not None:
                    tw.columns[column] = "string"
                    tw.type_origin[column] = misfit

    async def _stage(
        self, s: _Session, tw: TableWrite, logical: dict[str, str], tag: str
    ) -> Staged:
        """Spool the rows as NDJSON; the merge reads them with the table's column types."""
        path = os.path.join(self._spool_dir, spool_name(self._spool_prefix))
        s.spooled.append(path)
        longest_line, as_text = await _in_thread(spool, path, tw.where(), tw.parts, logical)
        types = {c: "VARCHAR" if c in as_text else TYPES[kind] for c, kind in logical.items()}
        return Staged(
            source=staged_rows(path, types, longest_line),
            exprs={
                c: f"CAST(s.{quote_ident(c)} AS JSON)" if c in as_text else f"s.{quote_ident(c)}"
                for c in types
            },
            tiebreak=[SEQ, POS],
            casts={c: t for c, t in types.items() if t != "VARCHAR"},  # JSON converts to text
            location=path,
        )

    async def _merge(
        self, s: _Session, tw: TableWrite, staged: Staged, primary_key: list[str]
    ) -> None:
        await self._execute(s, self._merge_sql(tw, staged, primary_key))

    async def _probe(self, s: _Session, staged: Staged, column: str) -> str | None:
        return await _in_thread(probe, s.con, staged.location, column, staged.casts[column])

    def _key_text(self, keys: list[str]) -> str:
        return f"CAST(json_array({', '.join(f'CAST({k} AS VARCHAR)' for k in keys)}) AS VARCHAR)"

    async def _rows(self, s: _Session, sql: str) -> list[tuple[Any, ...]]:
        return await _in_thread(_fetch, s.con, sql)

    async def _scalar(self, s: _Session, sql: str) -> Any:
        return await _in_thread(_scalar, s.con, sql)

    async def _data_tables(self, s: _Session) -> list[str]:
        return await _in_thread(
            first_column,
            s.con,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema() AND table_type = 'BASE TABLE' AND table_name NOT IN "
            "(SELECT unnest(?::VARCHAR[])) ORDER BY 1",
            [list(SINK_TABLES)],
        )


async def _in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn`` in a worker thread. A thread cannot be stopped: a cancelled caller waits for it
    to end (so no other call uses the connection meanwhile), then sees its cancellation."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise


def _commit(s: _Session) -> None:
    s.con.commit()
    _remove_spools(s)


def _roll_back(s: _Session) -> None:
    # DuckDB may have aborted the transaction already: nothing left to roll back then.
    with contextlib.suppress(duckdb.Error):
        s.con.rollback()
    _remove_spools(s)


def _remove_spools(s: _Session) -> None:
    for path in s.spooled:
        remove(path)


def _claim(
    con: duckdb.DuckDBPyConnection, tenant: str, batches: list[Batch]
) -> dict[str, str | None]:
    rows = con.execute(
        f"SELECT batch_id, fingerprint FROM {INBOX_TABLE} WHERE batch_id IN (SELECT unnest(?))",
        [[b.batch_id for b in batches]],
    ).fetchall()
    stored: dict[str, str | None] = {row[0]: row[1] for row in rows}
    fresh = [b for b in batches if b.batch_id not in stored]
    if fresh:
        con.execute(
            f"INSERT INTO {INBOX_TABLE} (batch_id, tenant, connector, applied_at, "
            "record_count, fingerprint) SELECT unnest(?::VARCHAR[]), ?, "
            "unnest(?::VARCHAR[]), now(), unnest(?::INTEGER[]), unnest(?::VARCHAR[])",
            [
                [b.batch_id for b in fresh],
                tenant,
                [b.connector for b in fresh],
                [b.record_count for b in fresh],
                [b.fingerprint for b in fresh],
            ],
        )
    return stored


def _fetch(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in con.execute(sql).fetchall()]


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    row = con.execute(sql).fetchone()
    return row[0] if row else None


def _first_misfit(tw: TableWrite, column: str) -> str | None:
    """The first batch of ``tw`` with a value of ``column`` that DECIMAL(38, 9) cannot hold.
    All parts' values are checked at once; the culprit is looked for only if one fails."""
    values = list(chain.from_iterable(map(dict.get, p.records, repeat(column)) for p in tw.parts))
    try:
        if fits_duckdb(values):
            return None
    except (TypeError, ValueError):
        pass  # find the batch, below, and name it
    for part in tw.parts:
        try:
            if not fits_duckdb(list(map(dict.get, part.records, repeat(column)))):
                return part.batch_id
        except (TypeError, ValueError) as exc:
            where = f"batch {part.batch_id}: table {tw.table}: column {column}"
            raise SinkDataError(f"{where}: {exc}") from exc
    return None
