"""``postgresql://`` / ``postgres://``: the production DCL store, through an asyncpg pool.

One write() is one transaction. The inbox rows go first (``INSERT ... ON CONFLICT DO
NOTHING RETURNING``: a second writer of the same batch waits on the first one's row lock,
then finds the row and skips the batch, unless its content differs: PoisonBatch). Then, per
table, the rows are COPYed into a temp staging table and merged with ``INSERT ... SELECT
DISTINCT ON ... ON CONFLICT DO UPDATE``, which replaces a stored row only with an equal or
newer ``_dcl_version``. Everything lives in the tenant's schema (``_tenancy``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from functools import partial
from itertools import chain, repeat
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from aam_dcl.errors import ConfigError, SinkDataError, SinkError, SinkUnavailable
from aam_dcl.messages import Batch, Record
from dcl_worker.sinks._pg_values import STAGE, TYPES, column_values, direct_rows
from dcl_worker.sinks._sql import (
    BATCH_ID_COLUMN,
    DEFAULT_MAX_COLUMNS,
    FOLD_SQL,
    INBOX_TABLE,
    INGESTED_AT_COLUMN,
    RESERVED_PREFIX,
    VERSION_COLUMN,
    TableChange,
    TableInfo,
    TableWrite,
    check_fingerprints,
    check_table_name,
    fold,
    plan_table,
    plan_writes,
    quote_ident,
    table_collision,
    unique_batches,
    upsert_clause,
)
from dcl_worker.sinks._tenancy import OWNER_TABLE, adopt_legacy, check_owner, tenant_schema
from dcl_worker.sinks.base import Sink

_FROM_STORE = {sql: logical for logical, sql in TYPES.items()}
# SQLSTATE classes that mean "the store is not usable now", not "this data is bad":
# connection, transaction rollback (deadlock), resources, operator intervention,
# object not in prerequisite state (lock timeout), system and internal errors.
_UNAVAILABLE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58", "XX"})
DEFAULT_SCHEMA = "public"
CONNECT_TIMEOUT_S = 10.0
POOL_MAX_SIZE = 10
DIRECT_RETRY_WRITES = 16
_TARGET = "_dcl_target"  # the INSERT's alias for the data table, for the upsert's WHERE
_VERSION_DEF = f"{VERSION_COLUMN} bigint NOT NULL DEFAULT 0"
# The transaction's start time, as the inbox's applied_at: COPY need not send it with every row
# (encoding a timestamptz costs asyncpg more than any other column).
_INGESTED_AT_DEF = f"{INGESTED_AT_COLUMN} timestamptz DEFAULT now()"


def parse_postgres_url(url: str) -> tuple[str, str | None]:
    """(asyncpg DSN, the schema ``?schema=`` names, or None: the tenant's, by ``_tenancy``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    if not schemas:
        return url, None
    schema = schemas[-1]
    try:
        check_table_name(schema, "-")
    except SinkDataError:
        raise ConfigError(
            f"DCL_SINK_URL has an invalid schema={schema!r}: use 1-63 bytes without control "
            "characters"
        ) from None
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


class PostgresSink(Sink):
    scheme = "postgresql"

    def __init__(self, url: str, tenant: str, *, max_columns: int = DEFAULT_MAX_COLUMNS) -> None:
        super().__init__(url, tenant, max_columns=max_columns)
        self._dsn, self._explicit_schema = parse_postgres_url(url)
        # The rule's schema; open() may keep an older store's default schema instead.
        self.schema = self._explicit_schema or tenant_schema(tenant, DEFAULT_SCHEMA)
        self._pool: asyncpg.Pool | None = None
        self._tables: dict[str, TableInfo] = {}  # committed knowledge only
        self._skip_direct: dict[str, int] = {}  # table -> writes left on the staging path

    def _name(self, table: str) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(table)}"

    # --- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=POOL_MAX_SIZE,
                timeout=CONNECT_TIMEOUT_S,
                server_settings={"timezone": "UTC", "application_name": "dcl-worker"},
                # COPY encodes by the column types asyncpg introspected; a cached introspection
                # goes stale when another worker widens a column (binary COPY would then send
                # an int8 into a float8 column). Writes run a handful of statements, so never
                # caching costs little.
                statement_cache_size=0,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise SinkUnavailable(f"cannot connect to PostgreSQL ({self._where()}): {exc}") from exc
        try:
            async with pool.acquire() as con, con.transaction():
                # Several workers may start at once: CREATE ... IF NOT EXISTS races otherwise,
                # and only one may decide about adopting an older store's default schema.
                await con.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "aam-dcl:open"
                )
                self.schema = await self._choose_schema(con)
                await self._claim_schema(con)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, asyncpg.InsufficientPrivilegeError):
                raise ConfigError(
                    f"DCL_SINK_URL: PostgreSQL ({self._where()}) refuses to create the tenant's "
                    f"schema or inbox: {exc}. Grant CREATE on the database (or the schema), or "
                    "create the schema for the worker's user"
                ) from exc
            raise self._translate(exc, "cannot prepare the inbox") from exc
        self._pool = pool

    async def _choose_schema(self, con: asyncpg.Connection) -> str:
        """``?schema=``, else the tenant's by rule, unless this is a store from before tenant
        schemas whose default schema this tenant has adopted (or adopts now)."""
        if self._explicit_schema is not None:
            return self._explicit_schema
        own = tenant_schema(self.tenant, DEFAULT_SCHEMA)
        if own == DEFAULT_SCHEMA or await _schema_exists(con, own):
            return own
        if await _table_exists(con, DEFAULT_SCHEMA, OWNER_TABLE):
            owners = await con.fetch(
                f"SELECT tenant FROM {_qualified(DEFAULT_SCHEMA, OWNER_TABLE)}"
            )
            return DEFAULT_SCHEMA if [r[0] for r in owners] == [self.tenant] else own
        if await _table_exists(con, DEFAULT_SCHEMA, INBOX_TABLE):
            rows = await con.fetch(
                f"SELECT DISTINCT tenant FROM {_qualified(DEFAULT_SCHEMA, INBOX_TABLE)} "
                "WHERE tenant IS NOT NULL ORDER BY 1"
            )
            if adopt_legacy(DEFAULT_SCHEMA, self.tenant, [r[0] for r in rows]):
                return DEFAULT_SCHEMA
        return own

    async def _claim_schema(self, con: asyncpg.Connection) -> None:
        """Create the schema, refuse it if another tenant owns it, record the owner, then
        create the inbox (or give an older one its fingerprint column)."""
        if not await _schema_exists(con, self.schema):
            await con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema)}")
        owner, inbox = self._name(OWNER_TABLE), self._name(INBOX_TABLE)
        await con.execute(f"CREATE TABLE IF NOT EXISTS {owner} (tenant text NOT NULL)")
        owners = [r[0] for r in await con.fetch(f"SELECT tenant FROM {owner}")]
        had_inbox = await _table_exists(con, self.schema, INBOX_TABLE)
        others: list[str] = []
        if not owners and had_inbox:
            rows = await con.fetch(
                f"SELECT DISTINCT tenant FROM {inbox} WHERE tenant <> $1 ORDER BY 1", self.tenant
            )
            others = [r[0] for r in rows]
        if check_owner(self.schema, self.tenant, owners, others):
            await con.execute(f"INSERT INTO {owner} (tenant) VALUES ($1)", self.tenant)
        await con.execute(
            f"CREATE TABLE IF NOT EXISTS {inbox} (batch_id text PRIMARY KEY, tenant text, "
            "connector text, applied_at timestamptz, record_count int, fingerprint text)"
        )
        if had_inbox and not await con.fetchval(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass($1) "
            "AND attname = 'fingerprint' AND NOT attisdropped",
            inbox,
        ):  # an inbox from before fingerprints; checked first: ALTER would lock every writer out
            await con.execute(f"ALTER TABLE {inbox} ADD COLUMN IF NOT EXISTS fingerprint text")

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        self._tables.clear()
        if pool is not None:
            await pool.close()

    async def ping(self) -> None:
        pool = self._require_pool()
        try:
            async with pool.acquire() as con:
                await con.execute("SELECT 1")
        except BaseException as exc:
            raise self._translate(exc, "ping failed") from exc

    async def count_rows(self) -> dict[str, int]:
        """Rows per data table of the schema (the inbox and the owner record excluded)."""
        pool = self._require_pool()
        try:
            async with pool.acquire() as con:
                names = await con.fetch(
                    "SELECT c.relname FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
                    "AND c.relkind IN ('r', 'p') AND c.relname <> ALL($2::text[]) "
                    "ORDER BY 1",
                    self.schema,
                    [INBOX_TABLE, OWNER_TABLE],
                )
                return {
                    r[0]: int(await con.fetchval(f"SELECT count(*) FROM {self._name(r[0])}"))
                    for r in names
                }
        except BaseException as exc:
            raise self._translate(exc, "counting rows") from exc

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise SinkUnavailable("the PostgreSQL sink is not open: call open() first")
        return self._pool

    def _where(self) -> str:
        parts = urlsplit(self._dsn)
        return f"{parts.hostname}:{parts.port or 5432}{parts.path}, schema {self.schema}"

    def _translate(self, exc: BaseException, what: str) -> BaseException:
        """Our error tree for a foreign exception; anything else is returned unchanged."""
        if isinstance(exc, SinkError):
            return exc
        if isinstance(exc, asyncpg.PostgresError):
            state = str(getattr(exc, "sqlstate", "") or "")
            if state[:2] in _UNAVAILABLE_CLASSES:
                return SinkUnavailable(f"PostgreSQL ({self._where()}): {what}: {exc}")
            return SinkDataError(f"PostgreSQL rejected the write: {what}: {exc}")
        if isinstance(exc, OSError | asyncio.TimeoutError | asyncpg.InterfaceError):
            return SinkUnavailable(f"PostgreSQL ({self._where()}): {what}: {exc!r}")
        return exc

    # --- writing --------------------------------------------------------------------------

    async def write(self, batches: Sequence[Batch]) -> set[str]:
        todo = unique_batches(batches)
        if not todo:
            return set()
        pool = self._require_pool()
        known: dict[str, TableInfo] = {}
        ids = [b.batch_id for b in todo]
        try:
            async with pool.acquire() as con, con.transaction():
                inserted = await con.fetch(
                    f"INSERT INTO {self._name(INBOX_TABLE)} "
                    "(batch_id, tenant, connector, applied_at, record_count, fingerprint) "
                    "SELECT b, $2, c, now(), n, f "
                    "FROM unnest($1::text[], $3::text[], $4::int[], $5::text[]) AS u(b, c, n, f) "
                    "ORDER BY b "  # one lock order for every writer
                    "ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
                    ids,
                    self.tenant,
                    [b.connector for b in todo],
                    [b.record_count for b in todo],
                    [b.fingerprint for b in todo],
                )
                applied = {row[0] for row in inserted}
                present = [b for b in todo if b.batch_id not in applied]
                if any(b.fingerprint for b in present):  # rare: Redis dropped most copies
                    stored = await con.fetch(
                        f"SELECT batch_id, fingerprint FROM {self._name(INBOX_TABLE)} "
                        "WHERE batch_id = ANY($1::text[])",
                        [b.batch_id for b in present],
                    )
                    check_fingerprints(present, {r[0]: r[1] for r in stored})
                fresh = [b for b in todo if b.batch_id in applied]
                for n, tw in enumerate(plan_writes(fresh, self.max_columns)):
                    known[tw.table] = await self._apply(con, tw, n)
        except BaseException as exc:
            raise self._translate(exc, f"writing batches {', '.join(ids[:3])}") from exc
        self._tables.update(known)
        return set(ids) - applied

    async def _apply(self, con: asyncpg.Connection, tw: TableWrite, n: int) -> TableInfo:
        info = self._tables.get(tw.table)
        change = plan_table(info, tw, self.max_columns)
        if info is None or change.needed:
            # Serialise DDL on this table across workers (one lock for names that differ only
            # in case), then decide on the current catalog.
            await con.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"aam-dcl:{self.schema}.{fold(tw.table)}",
            )
            stored = await self._read_table(con, tw.table)
            if stored is None:
                await self._check_table_case(con, tw)
            change = plan_table(stored, tw, self.max_columns)
            if change.needed:
                await self._alter(con, tw.table, change)
        if tw.parts:
            await self._insert(con, tw, change.info, f"_dcl_stage_{n}")
        return change.info

    async def _check_table_case(self, con: asyncpg.Connection, tw: TableWrite) -> None:
        """Refuse a new table whose name differs from a stored one's only in case."""
        other = await con.fetchval(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
            f"AND {FOLD_SQL.format('c.relname')} = $2 AND c.relname <> $3 LIMIT 1",
            self.schema,
            fold(tw.table),
            tw.table,
        )
        if other is not None:
            raise table_collision(tw, other)

    async def _read_table(self, con: asyncpg.Connection, table: str) -> TableInfo | None:
        rows = await con.fetch(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, "
            "array_position(i.indkey::int2[], a.attnum) AS key_pos, a.atthasdef "
            "FROM pg_attribute a LEFT JOIN pg_index i "
            "ON i.indrelid = a.attrelid AND i.indisprimary "
            "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            self._name(table),
        )
        if not rows:
            return None
        columns = {
            r["attname"]: _FROM_STORE.get(r["type"], "string")
            for r in rows
            if not r["attname"].startswith(RESERVED_PREFIX)
        }
        keyed = sorted((r["key_pos"], r["attname"]) for r in rows if r["key_pos"] is not None)
        versioned = any(r["attname"] == VERSION_COLUMN for r in rows)
        ingested_default = any(r["attname"] == INGESTED_AT_COLUMN and r["atthasdef"] for r in rows)
        return TableInfo(columns, [name for _, name in keyed], versioned, ingested_default)

    async def _alter(self, con: asyncpg.Connection, table: str, change: TableChange) -> None:
        name = self._name(table)
        if change.create:
            info = change.info
            defs = [f"{quote_ident(c)} {TYPES[t]}" for c, t in info.columns.items()]
            defs += [f"{BATCH_ID_COLUMN} text", _VERSION_DEF, _INGESTED_AT_DEF]
            if info.primary_key:
                defs.append(f"PRIMARY KEY ({', '.join(map(quote_ident, info.primary_key))})")
            await con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(defs)})")
            return
        # A table from before row versions: its rows are version 0 (no rewrite: a constant default).
        steps = [f"ADD COLUMN IF NOT EXISTS {_VERSION_DEF}"] if change.add_version else []
        if change.set_ingested_default:  # catalog only: no rewrite, stored times stay
            steps.append(f"ALTER COLUMN {INGESTED_AT_COLUMN} SET DEFAULT now()")
        steps += [
            f"ADD COLUMN IF NOT EXISTS {quote_ident(c)} {TYPES[t]}" for c, t in change.add.items()
        ]
        steps += [
            f"ALTER COLUMN {quote_ident(c)} TYPE {TYPES[t]} USING {quote_ident(c)}::{TYPES[t]}"
            for c, t in change.widen.items()
        ]
        await con.execute(f"ALTER TABLE {name} {', '.join(steps)}")

    async def _insert(
        self, con: asyncpg.Connection, tw: TableWrite, info: TableInfo, stage: str
    ) -> None:
        columns = list(dict.fromkeys([*tw.columns, *info.primary_key]))
        logical = {c: info.columns.get(c, "string") for c in columns}
        if await self._copy_direct(con, tw, info.primary_key, logical):
            return
        records: list[Record] = list(chain.from_iterable(p.records for p in tw.parts))
        where = _write_where(tw)
        values = [column_values(records, c, logical[c], where) for c in columns]
        batch_ids = list(chain.from_iterable(repeat(p.batch_id, len(p.records)) for p in tw.parts))
        versions = list(chain.from_iterable(repeat(p.version, len(p.records)) for p in tw.parts))
        defs = [f"{quote_ident(c)} {STAGE[logical[c]]}" for c in columns]
        # asyncpg caches the column types COPY encodes for, by table name: a staging table of
        # another shape must never reuse a name, so the name carries a digest of its shape.
        stage = f"{stage}_{hashlib.blake2b(repr(defs).encode(), digest_size=8).hexdigest()}"
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

        exprs = {c: _expr(c, logical[c]) for c in columns}
        names = ", ".join(map(quote_ident, columns))
        select = ", ".join(exprs[c] for c in columns)
        meta = [BATCH_ID_COLUMN, VERSION_COLUMN, INGESTED_AT_COLUMN]
        sql = f"INSERT INTO {self._name(tw.table)} AS {_TARGET} ({names}, {', '.join(meta)}) "
        select += f", s.{BATCH_ID_COLUMN}, s.{VERSION_COLUMN}, now() FROM {stage} s"
        pk = info.primary_key
        if pk:
            keys = ", ".join(exprs[c] for c in pk)
            updates = [c for c in columns if c not in pk] + meta
            # One row per key: the newest version, then the last in stream order.
            sql += (
                f"SELECT DISTINCT ON ({keys}) {select} "
                f"ORDER BY {keys}, s.{VERSION_COLUMN} DESC, s._dcl_seq DESC "
                + upsert_clause(pk, updates, _TARGET)
            )
        else:
            sql += f"SELECT {select}"
        try:
            async with con.transaction():  # a savepoint, so a failure can be diagnosed
                await con.execute(sql)
        except asyncpg.PostgresError as exc:
            if str(exc.sqlstate)[:2] in _UNAVAILABLE_CLASSES:
                raise
            raise await _rejected(con, tw, stage, logical, exc) from exc

    async def _copy_direct(
        self, con: asyncpg.Connection, tw: TableWrite, pk: list[str], logical: dict[str, str]
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
        """
        table = tw.table
        if pk and self._skip_direct.get(table, 0) > 0:
            self._skip_direct[table] -= 1
            return False
        if any(logical[c] == "json" for c in pk):
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


async def _schema_exists(con: asyncpg.Connection, schema: str) -> bool:
    found = await con.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
    return found is not None


async def _table_exists(con: asyncpg.Connection, schema: str, table: str) -> bool:
    found = await con.fetchval("SELECT to_regclass($1)", _qualified(schema, table))
    return found is not None


def _qualified(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def _expr(column: str, logical: str) -> str:
    ref = f"s.{quote_ident(column)}"
    return ref if STAGE[logical] == TYPES[logical] else f"{ref}::{TYPES[logical]}"


async def _rejected(
    con: asyncpg.Connection,
    tw: TableWrite,
    stage: str,
    logical: dict[str, str],
    exc: asyncpg.PostgresError,
) -> SinkError:
    """Name the column whose values the server could not cast (one probe per cast column)."""
    for column, kind in logical.items():
        if STAGE[kind] == TYPES[kind]:
            continue
        try:
            async with con.transaction():
                await con.execute(f"SELECT count({_expr(column, kind)}) FROM {stage} s")
        except asyncpg.DataError as probe:
            return SinkDataError(f"{tw.where(column)}: not a valid {TYPES[kind]}: {probe}")
    return SinkDataError(f"{tw.where()}: PostgreSQL rejected the rows: {exc}")


def _write_where(tw: TableWrite) -> Callable[[int], str]:
    return lambda index: f"batch {tw.batch_of_row(index)}: table {tw.table}"
