"""``postgresql://`` / ``postgres://``: the production DCL store, through an asyncpg pool.

The write sequence is ``SqlSink``'s (``_template``). This module owns the pool, the tenant's
schema at open(), PostgreSQL's catalog reads and DDL, the bulk load, and the one mapping of
asyncpg's exceptions (``translate_pg``); the value codecs are ``_pg_values``'. The inbox rows
go first (``INSERT ... ON CONFLICT DO NOTHING RETURNING``: a second writer of the same batch
waits on the first one's row lock, then finds the row and skips the batch). A table's rows
are COPYed straight into it when no key conflicts, else into a temp staging table that the
merge reads. Everything lives in the tenant's schema (``_tenancy``).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from functools import partial
from itertools import chain, repeat
from typing import Any

import asyncpg

from aam_dcl.errors import AamDclError, SinkDataError, SinkUnavailable
from aam_dcl.messages import Batch, Record
from dcl_worker.sinks._claim import check_claim, choose_schema
from dcl_worker.sinks._merge import Staged, first_line
from dcl_worker.sinks._pg_catalog import (
    FLOAT_TYPE,
    alter_table,
    read_table,
    table_of_other_case,
)
from dcl_worker.sinks._pg_connect import (
    CONNECT_TIMEOUT_S,
    SERVER_SETTINGS,
    missing_privilege,
    never_works,
    parse_postgres_url,
    translate_pg,
    where,
)
from dcl_worker.sinks._pg_values import (
    FROM_STAGE,
    STAGE,
    TYPES,
    direct_rows,
    doubles_hold,
    staged_values,
)
from dcl_worker.sinks._registry import REGISTRY_TABLE, SINK_TABLES
from dcl_worker.sinks._sql import (
    BATCH_ID_COLUMN,
    INBOX_TABLE,
    VERSION_COLUMN,
    TableChange,
    TableInfo,
    TableWrite,
    fold,
    qualified,
    quote_ident,
    quote_literal,
)
from dcl_worker.sinks._template import SqlSink

DEFAULT_SCHEMA = "public"
POOL_MAX_SIZE = 10
DIRECT_RETRY_WRITES = 16


class PostgresSink(SqlSink[asyncpg.Connection]):
    scheme = "postgresql"
    store = "PostgreSQL"
    default_schema = DEFAULT_SCHEMA
    types = TYPES
    float_type = FLOAT_TYPE

    def _parse_url(self, url: str) -> str | None:
        self._dsn, schema = parse_postgres_url(url)
        return schema

    def _setup(self) -> None:
        super()._setup()
        self._pool: asyncpg.Pool | None = None
        self._skip_direct: dict[str, int] = {}  # table -> writes left on the staging path

    # --- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        with self._boundary("cannot connect", opening=True):
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=POOL_MAX_SIZE,
                timeout=CONNECT_TIMEOUT_S,
                server_settings=SERVER_SETTINGS,
                # COPY encodes by the column types asyncpg introspected; a cached introspection
                # goes stale when another worker widens a column (binary COPY would then send
                # an int8 into a float8 column). Writes run a handful of statements, so never
                # caching costs little.
                statement_cache_size=0,
            )
        try:
            with self._boundary("cannot prepare the inbox"):
                async with pool.acquire() as con, con.transaction():
                    await self._prepare(con)
            self._pool, pool = pool, None
        finally:
            if pool is not None:  # preparing failed, or was cancelled
                await pool.close()

    async def _prepare(self, con: asyncpg.Connection) -> None:
        # Several workers may start at once: CREATE ... IF NOT EXISTS races otherwise, and
        # only one may decide about adopting an older store's default schema.
        await _advisory_lock(con, "aam-dcl:open")
        try:
            self.schema = await self._settle_schema(con)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise never_works(
                self.url,
                self._where(),
                f"refuses to create the tenant's schema or its tables: {first_line(exc)}: "
                "grant the user CREATE on the database (or on the schema), or create the "
                "schema for it",
            ) from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        self._tables.clear()
        if pool is not None:
            await pool.close()

    async def check(self) -> None:
        """One connection of its own, one read-only transaction: the schema the sink would
        choose, its owner, and the privileges open() and write() need."""
        with self._boundary("cannot connect", opening=True):
            con = await asyncpg.connect(
                self._dsn, timeout=CONNECT_TIMEOUT_S, server_settings=SERVER_SETTINGS
            )
        try:
            with self._boundary("cannot read the catalog", opening=True):
                async with con.transaction(readonly=True):
                    schema = await choose_schema(self, con)
                    exists = await self._stored_schema(con, schema) is not None
                    if exists:
                        await check_claim(self, con, schema)
                    problem = await missing_privilege(con, schema, exists)
            if problem is not None:
                raise never_works(
                    self.url, where(self._dsn, schema), f"the user lacks {problem}: grant it"
                )
        finally:
            await con.close()

    def _where(self) -> str:
        return where(self._dsn, self.schema)

    def _translate(self, exc: Exception, what: str, *, opening: bool = False) -> AamDclError | None:
        return translate_pg(exc, self.url, self._where(), what, opening=opening)

    # --- connections, inbox, catalog, DDL ---------------------------------------------------

    async def _stored_schema(self, con: asyncpg.Connection, schema: str) -> str | None:
        found = await con.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
        return None if found is None else schema

    async def _table_exists(self, con: asyncpg.Connection, schema: str, table: str) -> bool:
        found = await con.fetchval("SELECT to_regclass($1)", qualified(schema, table))
        return found is not None

    async def _upgrade_inbox(self, con: asyncpg.Connection, inbox: str) -> None:
        if not await con.fetchval(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass($1) "
            "AND attname = 'fingerprint' AND NOT attisdropped",
            inbox,
        ):  # checked first: ALTER would lock every writer out
            await con.execute(f"ALTER TABLE {inbox} ADD COLUMN IF NOT EXISTS fingerprint text")

    async def _strings(self, con: asyncpg.Connection, sql: str) -> list[str]:
        return [str(r[0]) for r in await con.fetch(sql)]

    async def _execute(self, con: asyncpg.Connection, sql: str) -> None:
        await con.execute(sql)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise SinkUnavailable("the PostgreSQL sink is not open: call open() first")
        async with self._pool.acquire() as con:
            yield con

    @contextlib.asynccontextmanager
    async def _transaction(self, con: asyncpg.Connection) -> AsyncIterator[None]:
        async with con.transaction():
            yield

    async def _claim_batches(
        self, con: asyncpg.Connection, batches: list[Batch]
    ) -> dict[str, str | None]:
        inserted = await con.fetch(
            f"INSERT INTO {self._name(INBOX_TABLE)} "
            "(batch_id, tenant, connector, applied_at, record_count, fingerprint) "
            "SELECT b, $2, c, now(), n, f "
            "FROM unnest($1::text[], $3::text[], $4::int[], $5::text[]) AS u(b, c, n, f) "
            "ORDER BY b "  # one lock order for every writer
            "ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
            [b.batch_id for b in batches],
            self.tenant,
            [b.connector for b in batches],
            [b.record_count for b in batches],
            [b.fingerprint for b in batches],
        )
        applied = {row[0] for row in inserted}
        present = [b for b in batches if b.batch_id not in applied]
        stored: dict[str, str | None] = {b.batch_id: None for b in present}
        if any(b.fingerprint for b in present):  # rare: Redis dropped most copies
            rows = await con.fetch(
                f"SELECT batch_id, fingerprint FROM {self._name(INBOX_TABLE)} "
                "WHERE batch_id = ANY($1::text[])",
                list(stored),
            )
            stored.update((r[0], r[1]) for r in rows)
        return stored

    async def _lock_refresh(self, con: asyncpg.Connection, table: str, *, exclusive: bool) -> None:
        """Writes of a table share this lock, a write with its full-refresh marker holds it
        alone: it then sees every inbox row of the writes before it, and the writes after it
        see its pending marker (neither could see the other's uncommitted rows otherwise)."""
        key = f"aam-dcl:refresh:{self.schema}.{fold(table)}"
        if exclusive:
            await _advisory_lock(con, key)
        else:
            await con.execute("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))", key)

    async def _lock_refresh_check(self, con: asyncpg.Connection, table: str) -> None:
        # Two writes of a marker's last chunks would each miss the other's uncommitted one.
        await _advisory_lock(con, f"aam-dcl:refresh-check:{self.schema}.{fold(table)}")

    def _key_text(self, keys: list[str]) -> str:
        return f"json_build_array({', '.join(f'({k})::text' for k in keys)})::text"

    async def _rows(self, con: asyncpg.Connection, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await con.fetch(sql)]

    async def _lock_table(self, con: asyncpg.Connection, table: str) -> None:
        # One lock for names that differ only in case.
        await _advisory_lock(con, f"aam-dcl:{self.schema}.{fold(table)}")

    async def _table_of_other_case(self, con: asyncpg.Connection, table: str) -> str | None:
        return await table_of_other_case(con, self.schema, table)

    async def _read_table(self, con: asyncpg.Connection, table: str) -> TableInfo | None:
        return await read_table(con, self._name(table))

    async def _alter_table(self, con: asyncpg.Connection, table: str, change: TableChange) -> None:
        await alter_table(con, self._name(table), change)

    async def _scalar(self, con: asyncpg.Connection, sql: str) -> Any:
        return await con.fetchval(sql)

    async def _data_tables(self, con: asyncpg.Connection) -> list[str]:
        rows = await con.fetch(
            "SELECT c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
            "AND c.relkind IN ('r', 'p') AND c.relname <> ALL($2::text[]) "
            "ORDER BY 1",
            self.schema,
            list(SINK_TABLES),
        )
        return [str(r[0]) for r in rows]

    def _touch_sql(self, table: str, batch_id: str) -> str:
        """As the template's, but a row another writer holds is left to it (SKIP LOCKED): every
        write of the table would wait for the others' commits otherwise; that writer records
        its own batch as the last one."""
        registry, name = self._name(REGISTRY_TABLE), quote_literal(table)
        return (
            f"UPDATE {registry} SET last_batch_id = {quote_literal(batch_id)}, "
            f"last_write_at = now() WHERE table_name = {name} AND ctid = (SELECT ctid FROM "
            f"{registry} WHERE table_name = {name} FOR UPDATE SKIP LOCKED)"
        )

    # --- rows -------------------------------------------------------------------------------

    async def _load_direct(
        self,
        con: asyncpg.Connection,
        tw: TableWrite,
        logical: dict[str, str],
        primary_key: list[str],
    ) -> bool:
        """COPY straight into the table when no row conflicts: about twice as fast as staging.

        Tried for every append and upsert: if a key is already stored, or occurs twice in the
        write, the COPY fails on the primary key and the savepoint is rolled back, and the table
        takes the staging path (which keeps the newest of a key's rows) for its next
        DIRECT_RETRY_WRITES writes (an updating sync would otherwise fail a COPY every time).
        Anything else unexpected (a missing key, a value Python cannot parse, a column type
        another worker changed) also returns False: the staging path then decides, with the
        server's own casts and errors. Only new keys get in this way, so no stored version needs
        comparing: the staging path's upsert does that.

        The rows are built a batch at a time while COPY sends them (``direct_rows``), so the
        server is already storing the first rows while later ones are prepared.

        Not for a write whose numeric columns hold floats: asyncpg's numeric encoding costs
        about 1 µs a value, so those are staged as doubles (converted exactly by the server)
        and inserted from there, new keys only first (``_merge``), the same bargain as this.
        """
        table = tw.table
        if primary_key and self._skip_direct.get(table, 0) > 0:
            self._skip_direct[table] -= 1
            return False
        if any(logical[c] == "json" for c in primary_key) or tw.tombstoned:
            return False  # a tombstoned key must not come back: the merge checks them
        if _staged_floats(tw, logical):  # numerics of floats: cheaper staged as doubles
            return False
        try:
            async with con.transaction():
                await con.copy_records_to_table(
                    table,
                    schema_name=self.schema,
                    columns=[*logical, BATCH_ID_COLUMN, VERSION_COLUMN],
                    records=chain.from_iterable(
                        map(partial(direct_rows, table, logical), tw.parts)
                    ),
                )
        except asyncpg.UniqueViolationError:  # a stored key, or one twice in this write
            self._skip_direct[table] = DIRECT_RETRY_WRITES
            return False
        except asyncpg.NotNullViolationError:  # a missing key: the staging path names it
            return False
        except (TypeError, ValueError, OverflowError):
            return False
        return True

    async def _stage(
        self, con: asyncpg.Connection, tw: TableWrite, logical: dict[str, str], tag: str
    ) -> Staged:
        """COPY the rows into a temp table (``ON COMMIT DROP``) of types asyncpg encodes straight
        from JSON values; the merge casts datetime, date and json."""
        records: list[Record] = list(chain.from_iterable(p.records for p in tw.parts))
        where = _write_where(tw)
        columns = [staged_values(records, c, kind, where) for c, kind in logical.items()]
        values = [v for v, _ in columns]
        staged = {c: kind for c, (_, kind) in zip(logical, columns, strict=True)}
        batch_ids = list(chain.from_iterable(repeat(p.batch_id, len(p.records)) for p in tw.parts))
        versions = list(chain.from_iterable(repeat(p.version, len(p.records)) for p in tw.parts))
        defs = [f"{quote_ident(c)} {STAGE[kind]}" for c, kind in staged.items()]
        # asyncpg caches the column types COPY encodes for, by table name: a staging table of
        # another shape must never reuse a name, so the name carries a digest of its shape.
        stage = (
            f"_dcl_stage_{tag}_{hashlib.blake2b(repr(defs).encode(), digest_size=8).hexdigest()}"
        )
        await con.execute(
            f"CREATE TEMP TABLE {stage} ({', '.join(defs)}, "
            f"{BATCH_ID_COLUMN} text, {VERSION_COLUMN} bigint, _dcl_seq integer) ON COMMIT DROP"
        )
        try:
            await con.copy_records_to_table(
                stage, records=zip(*values, batch_ids, versions, range(len(records)), strict=True)
            )
        except (TypeError, ValueError, OverflowError) as exc:  # asyncpg could not encode a value
            raise SinkDataError(
                f"{tw.where()}: a value cannot be sent to PostgreSQL: {exc}"
            ) from exc
        return Staged(
            source=f"{stage} s",
            exprs={c: _expr(c, logical[c], kind) for c, kind in staged.items()},
            tiebreak=["_dcl_seq"],
            casts={  # a staged float always reads as a numeric: never probed
                c: TYPES[kind]
                for c, kind in staged.items()
                if STAGE[kind] != TYPES.get(kind, STAGE[kind])
            },
            location=stage,
            new_keys_first="float" in staged.values() and not self._skip_direct.get(tw.table),
        )

    async def _merge(
        self, con: asyncpg.Connection, tw: TableWrite, staged: Staged, primary_key: list[str]
    ) -> None:
        """The merge; first, where the direct COPY was left out for the staged doubles, a plain
        insert of the staged rows (new keys only, as the direct path), which a stored key or a
        key twice in the write turns into the merge."""
        if primary_key and staged.new_keys_first:
            try:
                async with con.transaction():
                    await con.execute(self._merge_sql(tw, staged, []))
                return
            except asyncpg.UniqueViolationError:
                self._skip_direct[tw.table] = DIRECT_RETRY_WRITES
        async with con.transaction():  # a savepoint, so a failure can be probed
            await con.execute(self._merge_sql(tw, staged, primary_key))

    async def _probe(self, con: asyncpg.Connection, staged: Staged, column: str) -> str | None:
        try:
            async with con.transaction():
                await con.execute(f"SELECT count({staged.exprs[column]}) FROM {staged.source}")
        except asyncpg.DataError as exc:
            return first_line(exc)
        return None


def _staged_floats(tw: TableWrite, logical: dict[str, str]) -> bool:
    """Whether the first batch's numeric columns hold floats (the staging path sends those as
    doubles, about 1 µs a value cheaper than asyncpg's encoding of a numeric)."""
    records = tw.parts[0].records
    return any(
        kind == "numeric" and doubles_hold(list(map(dict.get, records, repeat(column))))
        for column, kind in logical.items()
    )


async def _advisory_lock(con: asyncpg.Connection, key: str) -> None:
    await con.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)


def _expr(column: str, logical: str, staged: str) -> str:
    ref = f"s.{quote_ident(column)}"
    if staged in FROM_STAGE:
        return ref + FROM_STAGE[staged]
    return ref if STAGE[staged] == TYPES[logical] else f"{ref}::{TYPES[logical]}"


def _write_where(tw: TableWrite) -> Callable[[int], str]:
    return lambda index: f"batch {tw.batch_of_row(index)}: table {tw.table}"
