"""End to end: the fake HubSpot -> aam-bridge (type: hubspot) -> Redis -> dcl-worker -> DuckDB,
a full run, then changes at the source (updates, creates, archives) and an incremental run."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from aam_bridge.connectors.base import ConnectorConfig
from aam_bridge.connectors.hubspot import HubSpotConnector
from aam_dcl.config import Settings
from tests.fakes.hubspot import FakeHubSpot, add_crm_objects, company, deal, expected_record, seed
from tests.integration.conftest import running_worker
from tests.integration.connector_pipeline import assert_store_matches, run_and_drain

TOKEN = "e2e-token"


def live(hub: FakeHubSpot, object_type: str) -> dict[str, dict[str, object]]:
    obj = hub.objects[object_type]
    return {i: expected_record(obj, i, row) for i, row in hub.live_rows(object_type).items()}


async def test_the_store_holds_what_hubspot_holds_after_a_full_and_an_incremental_run(
    settings: Settings, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(HubSpotConnector, "search_requests_per_second", 1000.0)
    settings = settings.model_copy(update={"batch_chunk_size": 25})
    async with FakeHubSpot(token=TOKEN, page_size=20) as hub:
        add_crm_objects(hub)
        seed(hub, deals=70, companies=15)
        options = {
            "base_url": hub.base_url,
            "access_token": TOKEN,
            "objects": ["deals", "companies"],
            "requests_per_second": 1000,
        }
        config = ConnectorConfig("hubspot", "hubspot", "hubspot-e2e", None, options)
        async with running_worker(settings):
            await run_and_drain(settings, redis, config)
            for ident in list(hub.live_rows("deals"))[::9]:
                hub.update("deals", ident, dealstage="closedwon", amount=None)
            created = [hub.insert("deals", **deal(100 + n)) for n in range(3)]
            gone = set(list(hub.live_rows("deals"))[5:8])
            for ident in gone:
                hub.archive("deals", ident)
            hub.update("companies", next(iter(hub.live_rows("companies"))), name="Renamed")
            hub.insert("companies", **company(99))
            await run_and_drain(settings, redis, config)
    assert set(created) <= set(live(hub, "deals"))
    # Archived deals: marked deleted once the store marks deletes (_dcl_deleted_at); until
    # then the check is that every live row is stored as HubSpot holds it.
    assert_store_matches(settings, "hubspot__deals", "id", live(hub, "deals"), gone)
    assert_store_matches(settings, "hubspot__companies", "id", live(hub, "companies"), set())
