"""End to end: the fake Dataverse -> aam-bridge (type: dynamics) -> Redis -> dcl-worker ->
DuckDB, a full run, then changes at the source (updates, creates, deletes on the table with
change tracking) and an incremental run."""

from __future__ import annotations

import redis.asyncio as aioredis

from aam_bridge.connectors.base import ConnectorConfig
from aam_dcl.config import Settings
from tests.fakes.dataverse import (
    CLIENT_ID,
    TENANT,
    FakeDataverse,
    account,
    add_crm_entities,
    expected_record,
    opportunity,
    seed,
)
from tests.integration.conftest import running_worker
from tests.integration.connector_pipeline import assert_store_matches, run_and_drain

SECRET = "e2e-secret"


def live(dv: FakeDataverse, entity_set: str) -> dict[str, dict[str, object]]:
    entity = dv.entities[entity_set]
    return {k: expected_record(entity, row) for k, row in entity.rows.items()}


async def test_the_store_holds_what_dataverse_holds_after_a_full_and_an_incremental_run(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Deleted accounts (change tracking) reach the store as deletes: marked where the store
    has _dcl_deleted_at, else only checked not to be live. Opportunities have no change
    tracking, so only their updates and creates are checked."""
    settings = settings.model_copy(update={"batch_chunk_size": 25})
    async with FakeDataverse(client_secret=SECRET, page_size=20) as dv:
        add_crm_entities(dv)
        seed(dv, accounts=45, opportunities=30)
        options = {
            "url": dv.url,
            "authority": dv.authority,
            "tenant_id": TENANT,
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "entities": ["accounts", "opportunities"],
            "requests_per_second": 1000,
        }
        config = ConnectorConfig("dynamics", "dynamics", "dynamics-e2e", None, options)
        async with running_worker(settings):
            await run_and_drain(settings, redis, config)
            accounts = sorted(dv.entities["accounts"].rows)
            for ident in accounts[::7]:
                dv.update("accounts", ident, name="Renamed", revenue=None)
            gone = set(accounts[3:6])
            for ident in gone:
                dv.delete("accounts", ident)
            dv.insert("accounts", **account(200))
            for ident in list(dv.entities["opportunities"].rows)[::4]:
                dv.update("opportunities", ident, stepname="3-Close")
            dv.insert("opportunities", **opportunity(200, accounts[0]))
            await run_and_drain(settings, redis, config)
    assert_store_matches(settings, "dynamics__accounts", "accountid", live(dv, "accounts"), gone)
    opportunities = live(dv, "opportunities")
    assert_store_matches(settings, "dynamics__opportunities", "opportunityid", opportunities, set())
