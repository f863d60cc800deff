"""End to end: the fake Salesforce -> aam-bridge (type: salesforce) -> Redis -> dcl-worker ->
DuckDB, a full run, then changes at the source (updates, creates, soft deletes) and an
incremental run."""

from __future__ import annotations

import redis.asyncio as aioredis

from aam_bridge.connectors.base import ConnectorConfig
from aam_dcl.config import Settings
from tests.fakes.salesforce import (
    CLIENT_ID,
    FakeSalesforce,
    account,
    add_crm_objects,
    expected_record,
    opportunity,
    seed,
)
from tests.integration.conftest import running_worker
from tests.integration.connector_pipeline import assert_store_matches, run_and_drain

SECRET = "e2e-secret"


def live(sf: FakeSalesforce, object_name: str) -> dict[str, dict[str, object]]:
    obj = sf.objects[object_name]
    return {row["Id"]: expected_record(obj, row) for row in sf.live_rows(object_name)}


async def test_the_store_holds_what_salesforce_holds_after_a_full_and_an_incremental_run(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Soft-deleted rows (IsDeleted, still returned by queryAll) reach the store as deletes
    and must be marked deleted there (_dcl_deleted_at), not left live."""
    settings = settings.model_copy(update={"batch_chunk_size": 25})
    async with FakeSalesforce(client_secret=SECRET, page_size=20) as sf:
        add_crm_objects(sf)
        seed(sf, opportunities=70, accounts=15)
        options = {
            "login_url": sf.login_url,
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "objects": ["Opportunity", "Account"],
            "requests_per_second": 1000,
        }
        config = ConnectorConfig("salesforce", "salesforce", "salesforce-e2e", None, options)
        async with running_worker(settings):
            await run_and_drain(settings, redis, config)
            opportunities = [row["Id"] for row in sf.live_rows("Opportunity")]
            for ident in opportunities[::9]:
                sf.update("Opportunity", ident, StageName="Closed Won", Amount=None)
            created = [sf.insert("Opportunity", **opportunity(100 + n)) for n in range(3)]
            gone = set(opportunities[5:8])
            for ident in gone:
                sf.delete("Opportunity", ident)
            accounts = [row["Id"] for row in sf.live_rows("Account")]
            sf.update("Account", accounts[0], Name="Renamed", BillingCity=None)
            sf.delete("Account", accounts[1])
            sf.insert("Account", **account(99))
            await run_and_drain(settings, redis, config)
    assert set(created) <= set(live(sf, "Opportunity"))
    assert not gone & set(live(sf, "Opportunity"))
    opps = live(sf, "Opportunity")
    assert assert_store_matches(settings, "salesforce__opportunity", "Id", opps, gone), (
        "the store has no delete mark to check"
    )
    accts = live(sf, "Account")
    assert assert_store_matches(settings, "salesforce__account", "Id", accts, {accounts[1]})
