"""One dcl-worker, several tenants (TENANT_IDS=acme,globex): each tenant's data stays in its
own streams, consumer group, processed set and store schema, even with the same connector
names and batch ids."""

from __future__ import annotations

import duckdb
import pytest
import redis.asyncio as aioredis

from aam_dcl import keys
from aam_dcl.config import Settings
from tests.integration.conftest import demo_configs, run_bridge_once, running_worker
from tests.support import drained, wait_until

TENANTS = ("acme", "globex")


def store_counts(settings: Settings) -> dict[str, dict[str, int]]:
    """Rows per table, per schema of the DuckDB store."""
    path = settings.sink_url.removeprefix("duckdb://")
    with duckdb.connect(path, read_only=True) as con:
        tables = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_name NOT LIKE '\\_dcl\\_%' ESCAPE '\\'"
        ).fetchall()
        out: dict[str, dict[str, int]] = {}
        for schema, table in tables:
            row = con.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchone()
            out.setdefault(schema, {})[table] = int(row[0]) if row else 0
    return out


async def test_one_worker_serves_two_tenants_and_keeps_each_to_its_own(
    settings: Settings, redis: aioredis.Redis
) -> None:
    records = {"acme": 30, "globex": 50}
    for tenant in TENANTS:  # the same connector names, seeds and so batch ids in both
        await run_bridge_once(
            settings.for_tenant(tenant), demo_configs(records[tenant], page_size=10)
        )
    # One of acme's batches also in globex's stream: the same batch id in both tenants.
    ((_, shared),) = await redis.xrange(keys.stream("acme", "salesforce"), count=1)
    await redis.xadd(keys.stream("globex", "salesforce"), shared)
    shared_id = shared[b"payload"].split(b'"batch_id":"')[1].split(b'"')[0]
    worker = settings.model_copy(update={"tenant_ids_csv": ",".join(TENANTS)})
    async with running_worker(worker):
        for tenant in TENANTS:
            await wait_until(lambda t=tenant: drained(redis, t), what=f"{tenant} drained")

    counts = store_counts(settings)
    assert set(counts) >= {"dcl_acme", "dcl_globex"}
    assert "main" not in counts  # nothing for the default tenant
    for tenant in TENANTS:
        tables = counts[f"dcl_{tenant}"]
        assert tables["salesforce__opportunities"] == records[tenant]  # globex: the copy
        # of acme's batch upserts rows of acme's keys into globex's schema, never acme's
    for tenant in TENANTS:
        stream = keys.stream(tenant, "salesforce")
        groups = {g["name"].decode() for g in await redis.xinfo_groups(stream)}
        assert groups == {keys.group(tenant)}
        ids = {m.decode() for m in await redis.smembers(keys.processed_set(tenant))}
        assert ids  # each tenant's batches are marked in its own set ...
    acme = await redis.smembers(keys.processed_set("acme"))
    globex = await redis.smembers(keys.processed_set("globex"))
    assert acme & globex == {shared_id}  # ... the shared id applied once in each tenant
    assert not await redis.exists(keys.processed_set("default"))


def test_tenant_ids_are_validated_like_tenant_id() -> None:
    with pytest.raises(ValueError, match="TENANT_IDS"):
        Settings.model_validate({"TENANT_IDS": "acme,bad:name"})
    assert Settings(TENANT_IDS=" acme , globex ").worker_tenants == ["acme", "globex"]
    assert Settings(TENANT_ID="solo").worker_tenants == ["solo"]
