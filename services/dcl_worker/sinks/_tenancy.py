"""Which schema a tenant's tables and inbox live in, and who may write there.

The rule (``tenant_schema``): tenant ``default`` keeps the store's default schema
(``public`` in PostgreSQL, ``main`` in DuckDB), so a single-tenant store looks as it always
did; every other tenant T writes into ``dcl_T``. Tenant ids are 1-64 letters, digits,
``_ . -``; a name longer than 63 bytes (PostgreSQL would cut it silently) becomes ``dcl_``,
the first 42 characters, ``_`` and 16 hex digits of the id's blake2b digest. ``?schema=``
in DCL_SINK_URL overrides the rule.

Every schema records its owner in ``_dcl_owner(tenant)``, written by the first worker that
opens it; a worker of another tenant refuses to start there (ConfigError). That also catches
what the names cannot: DuckDB's ``dcl_TX`` and ``dcl_tx`` are one schema.

A store from before tenant schemas (an inbox in the default schema, no owner recorded) is
adopted by the tenant whose batches its inbox holds, and stays that tenant's schema (its
owner row says so); one that holds batches of several tenants, this one among them, stops
start-up until the operator records which tenant keeps it. The sinks run the SQL; the
decisions are here, once for both stores.
"""

from __future__ import annotations

import hashlib

from aam_dcl.errors import ConfigError, SinkDataError
from dcl_worker.sinks._sql import check_table_name

DEFAULT_TENANT = "default"
OWNER_TABLE = "_dcl_owner"
SCHEMA_PREFIX = "dcl_"
_MAX_BYTES = 63  # PostgreSQL's identifier limit (NAMEDATALEN - 1)
_KEEP_CHARS = 42  # 4 + 42 + 1 + 16 = 63


def tenant_schema(tenant: str, default_schema: str) -> str:
    """The schema of ``tenant``'s tables and inbox when DCL_SINK_URL names none."""
    if tenant == DEFAULT_TENANT:
        return default_schema
    name = SCHEMA_PREFIX + tenant
    if len(name.encode()) <= _MAX_BYTES:
        return name
    digest = hashlib.blake2b(tenant.encode(), digest_size=8).hexdigest()
    return f"{SCHEMA_PREFIX}{tenant[:_KEEP_CHARS]}_{digest}"


def url_schema(schema: str) -> str:
    """``schema`` as ``?schema=`` in DCL_SINK_URL names it; ConfigError if it cannot be one."""
    try:
        check_table_name(schema, "-")
    except SinkDataError:
        raise ConfigError(
            f"DCL_SINK_URL has an invalid schema={schema!r}: use 1-63 bytes without control "
            "characters"
        ) from None
    return schema


def check_owner(schema: str, tenant: str, owners: list[str], others_in_inbox: list[str]) -> bool:
    """Whether ``tenant`` may write into ``schema``; True: record it as the owner first.

    ``owners``: the schema's ``_dcl_owner`` rows; ``others_in_inbox``: tenants other than
    ``tenant`` whose batches its inbox holds (asked only when no owner is recorded). Raises
    ConfigError naming both tenants and the schema when another tenant's data is there.
    """
    if owners:
        if set(owners) == {tenant}:
            return False
        owner = ", ".join(repr(t) for t in sorted(set(owners)) if t != tenant)
        raise ConfigError(
            f"DCL_SINK_URL: schema {schema!r} belongs to tenant {owner}; this worker's "
            f"tenant {tenant!r} refuses to write there (nothing was written). Give each tenant "
            f"its own schema: drop ?schema= to use {tenant_schema(tenant, 'public')!r}, or name "
            "another one (DuckDB: names that differ only in case are one schema)"
        )
    if others_in_inbox:
        raise ConfigError(
            f"DCL_SINK_URL: schema {schema!r} holds batches of tenant(s) "
            f"{', '.join(map(repr, others_in_inbox))}, written before schemas recorded their "
            f"owner; tenant {tenant!r} refuses to write there (nothing was written). Pick "
            f"another schema with ?schema=, or record the owner (a row in {schema}."
            f"{OWNER_TABLE}): docs/sinks.md, Tenants"
        )
    return True


def adopt_legacy(schema: str, tenant: str, legacy_tenants: list[str]) -> bool:
    """Whether ``tenant`` keeps writing into ``schema``, the default schema of a store from
    before tenant schemas, instead of a new schema of its own.

    ``legacy_tenants``: the tenants whose batches that schema's inbox holds (it records no
    owner). Only this tenant's: adopt it. Others' only: not ours, take a new schema. This
    tenant's and others' (the mix this rule exists to end): ConfigError, the operator decides.
    """
    if tenant not in legacy_tenants:
        return False
    if len(legacy_tenants) == 1:
        return True
    others = ", ".join(repr(t) for t in legacy_tenants if t != tenant)
    raise ConfigError(
        f"DCL_SINK_URL: schema {schema!r} holds batches of tenant {tenant!r} and of {others}, "
        "written before each tenant had a schema of its own (nothing was written). Record "
        f"which tenant keeps it (a row in {schema}.{OWNER_TABLE}); the others then get "
        "schemas of their own: docs/sinks.md, Tenants"
    )
