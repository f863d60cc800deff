"""open(): the tenant's schema chosen and claimed, in SQL the same in both stores (the
decisions are ``_tenancy``'s): ``?schema=`` or the rule's, an older store's default schema
its tenant adopted, the owner record, and the inbox (an older inbox gets its fingerprint
column). Runs in the caller's transaction, through the sink's catalog hooks."""

from __future__ import annotations

from typing import Protocol, TypeVar

from dcl_worker.sinks._sql import INBOX_TABLE, qualified, quote_ident, quote_literal
from dcl_worker.sinks._tenancy import OWNER_TABLE, adopt_legacy, check_owner, tenant_schema

C = TypeVar("C", contravariant=True)


class Catalog(Protocol[C]):
    """What the claim needs of a sink (``SqlSink`` has it)."""

    tenant: str
    default_schema: str
    _explicit_schema: str | None

    async def _stored_schema(self, con: C, schema: str) -> str | None: ...
    async def _table_exists(self, con: C, schema: str, table: str) -> bool: ...
    async def _strings(self, con: C, sql: str) -> list[str]: ...
    async def _execute(self, con: C, sql: str) -> None: ...
    async def _upgrade_inbox(self, con: C, inbox: str) -> None: ...


async def choose_schema(sink: Catalog[C], con: C) -> str:
    """``?schema=``, else the tenant's by rule, unless this is a store from before tenant
    schemas whose default schema this tenant has adopted (or adopts now)."""
    if sink._explicit_schema is not None:
        return sink._explicit_schema
    default = sink.default_schema
    own = tenant_schema(sink.tenant, default)
    if own == default or await sink._stored_schema(con, own) is not None:
        return own
    if await sink._table_exists(con, default, OWNER_TABLE):
        owners = await sink._strings(con, f"SELECT tenant FROM {qualified(default, OWNER_TABLE)}")
        return default if owners == [sink.tenant] else own
    if await sink._table_exists(con, default, INBOX_TABLE):
        tenants = await sink._strings(
            con,
            f"SELECT DISTINCT tenant FROM {qualified(default, INBOX_TABLE)} "
            "WHERE tenant IS NOT NULL ORDER BY 1",
        )
        if adopt_legacy(default, sink.tenant, tenants):
            return default
    return own


async def claim_schema(sink: Catalog[C], con: C, schema: str) -> str:
    """Create the schema, refuse it if another tenant owns it, record the owner, then
    create the inbox (or give an older one its fingerprint column)."""
    stored = await sink._stored_schema(con, schema)
    if stored is None:
        await sink._execute(con, f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        stored = schema
    owner, inbox = qualified(stored, OWNER_TABLE), qualified(stored, INBOX_TABLE)
    tenant = quote_literal(sink.tenant)
    await sink._execute(con, f"CREATE TABLE IF NOT EXISTS {owner} (tenant text NOT NULL)")
    owners = await sink._strings(con, f"SELECT tenant FROM {owner}")
    had_inbox = await sink._table_exists(con, stored, INBOX_TABLE)
    others: list[str] = []
    if not owners and had_inbox:
        others = await sink._strings(
            con, f"SELECT DISTINCT tenant FROM {inbox} WHERE tenant <> {tenant} ORDER BY 1"
        )
    if check_owner(stored, sink.tenant, owners, others):
        await sink._execute(con, f"INSERT INTO {owner} (tenant) VALUES ({tenant})")
    await sink._execute(
        con,
        f"CREATE TABLE IF NOT EXISTS {inbox} (batch_id text PRIMARY KEY, tenant text, "
        "connector text, applied_at timestamptz, record_count int, fingerprint text)",
    )
    if had_inbox:
        await sink._upgrade_inbox(con, inbox)
    return stored


async def check_claim(sink: Catalog[C], con: C, schema: str) -> None:
    """``claim_schema``'s refusal, read-only: ConfigError if another tenant owns ``schema``
    (or, with no owner recorded, its inbox holds another tenant's batches)."""
    owners: list[str] = []
    if await sink._table_exists(con, schema, OWNER_TABLE):
        owners = await sink._strings(con, f"SELECT tenant FROM {qualified(schema, OWNER_TABLE)}")
    others: list[str] = []
    if not owners and await sink._table_exists(con, schema, INBOX_TABLE):
        others = await sink._strings(
            con,
            f"SELECT DISTINCT tenant FROM {qualified(schema, INBOX_TABLE)} "
            f"WHERE tenant <> {quote_literal(sink.tenant)} ORDER BY 1",
        )
    check_owner(schema, sink.tenant, owners, others)
