"""aam-bridge keeps going when a connector fails, and resumes the run it was in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from aam_bridge.bridge import Bridge
from aam_bridge.connectors.base import Connector, ConnectorConfig, Page, TableSpec
from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.redis_conn import connect
from tests.integration.test_progress import info_logs
from tests.support import sample


class FlakyConnector(Connector):
    """Two pages of one table; the second read of the first run raises like a buggy connector."""

    type_name = "flaky"

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__(config)
        self.failures_left = 1

    async def tables(self) -> list[TableSpec]:
        return [TableSpec("items", ("id",))]

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        start = int(cursor or 0)
        for page in range(start, 4):
            if page == 2 and self.failures_left:
                self.failures_left -= 1
                raise KeyError("a bug in the connector")
            yield Page([{"id": page * 10 + i} for i in range(10)], str(page + 1))


async def test_a_failing_connector_is_retried_and_its_run_resumed_without_gap_or_repeat(
    settings: Settings, redis: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"batch_chunk_size": 10})
    config = ConnectorConfig("flaky", "flaky", "flaky-1", None, {})
    failed = {"tenant": "default", "connector": "flaky", "status": "failed"}
    failed_before = sample("aam_bridge_sync_runs_total", **failed)
    client = await connect(settings)
    try:
        bridge = Bridge(settings, client, [FlakyConnector(config)], asyncio.Event())
        with info_logs() as events:
            await asyncio.wait_for(bridge.run(), 30)
    finally:
        await client.aclose()
    assert sample("aam_bridge_sync_runs_total", **failed) == failed_before + 1
    (finished,) = [e for e in events if e["event"] == "sync_run_finished"]
    assert finished["resumed"]
    entries = await redis.xrange(keys.stream("default", "flaky"))
    ids = [f[b"payload"].split(b'"batch_id":"')[1].split(b'"')[0].decode() for _, f in entries]
    # Chunks 1-4, then 5: the completion marker of the table's full read.
    assert [int(i.rsplit("_", 1)[1]) for i in ids] == [1, 2, 3, 4, 5]
    assert b'"full_refresh":{"run_start_ms":' in entries[-1][1][b"payload"]
    assert len({i.rsplit("_", 2)[1] for i in ids}) == 1  # the resumed run kept its start time
