"""``aam-dcl sync CONNECTOR --full / --now``: a running bridge takes the request, no restart.

The demo connector's incremental reads are small generations, its full read is every row:
so the records of a run tell which kind of run it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from click.testing import Result

from aam_bridge.bridge import Bridge
from aam_bridge.connectors.base import ConnectorConfig, TableSpec
from aam_bridge.connectors.demo import DemoConnector
from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.errors import ConnectorError
from aam_dcl.redis_conn import connect
from aam_dcl_cli.syncs import sync_runs
from tests.support import invoke_cli, wait_until

RECORDS = 200  # rows of each demo table in a full read


async def cli(redis_url: str, *args: str) -> Result:
    return await invoke_cli(args, {"REDIS_URL": redis_url, "TENANT_ID": "default"})


@pytest.fixture
async def bridge(settings: Settings) -> AsyncIterator[Bridge]:
    """A bridge running one demo connector every hour: after its first run it waits."""
    config = ConnectorConfig(
        "crm", "demo", "crm-1", schedule_s=3600, options={"records": RECORDS, "seed": 3}
    )
    client = await connect(settings)
    stopping = asyncio.Event()
    running = Bridge(settings, client, [DemoConnector(config)], stopping)
    task = asyncio.create_task(running.run())
    try:
        yield running
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)
        await client.aclose()


async def last_records(client: aioredis.Redis) -> int | None:
    (run,) = await sync_runs(client, "default")
    return run.records


async def test_now_runs_at_once_and_full_reads_everything_again(
    bridge: Bridge, redis: aioredis.Redis, redis_url: str
) -> None:
    await wait_until(lambda: _at_least(redis, 1), what="the first run")
    full = await last_records(redis)
    assert full is not None
    assert full > RECORDS  # every table in full

    result = await cli(redis_url, "sync", "crm", "--now")
    assert result.exit_code == 0, result.output
    assert "requested a run now of default/crm" in result.output
    await wait_until(lambda: _at_least(redis, 2), timeout_s=10, what="the requested run")
    incremental = await last_records(redis)
    assert incremental is not None
    assert incremental < full / 4  # a demo generation: a few percent of the rows

    result = await cli(redis_url, "sync", "crm", "--full", "--now")
    assert result.exit_code == 0, result.output
    await wait_until(lambda: _at_least(redis, 3), timeout_s=10, what="the full run")
    assert await last_records(redis) == full
    state = await redis.hgetall(keys.sync_state("default", "crm"))
    assert keys.SYNC_REQUEST_FULL.encode() not in state  # taken
    assert keys.SYNC_REQUEST_NOW.encode() not in state
    (run,) = await sync_runs(redis, "default")
    assert run.status == "succeeded"
    assert run.requested == []


async def test_full_alone_waits_for_the_next_run_and_is_shown_as_requested(
    bridge: Bridge, redis: aioredis.Redis, redis_url: str
) -> None:
    await wait_until(lambda: _at_least(redis, 1), what="the first run")
    result = await cli(redis_url, "sync", "crm", "--full")
    assert result.exit_code == 0, result.output
    assert "at the start of its next run" in result.output
    await asyncio.sleep(1.5)  # longer than the bridge's look for requests: it must not run
    (run,) = await sync_runs(redis, "default")
    assert (run.runs, run.requested) == (1, ["full"])


async def test_a_request_for_an_unknown_connector_or_without_what_is_refused(
    redis: aioredis.Redis, redis_url: str
) -> None:
    result = await cli(redis_url, "sync", "crmm", "--now")
    assert result.exit_code == 1
    assert "no connector 'crmm' in tenant 'default'" in result.output
    assert "Traceback" not in result.output
    result = await cli(redis_url, "sync", "crm")
    assert result.exit_code == 2
    assert "--full, --now, or both" in result.output
    assert await redis.keys("aam:sync:*") == []  # nothing written


async def _at_least(client: aioredis.Redis, n: int) -> bool:
    state = await client.hgetall(keys.sync_state("default", "crm"))
    return int(state.get(b"runs", b"0")) >= n and not state.get(b"run_start_ms")


class Broken(DemoConnector):
    async def tables(self) -> list[TableSpec]:
        raise ConnectorError("injected: the source refuses us")


async def test_a_failed_run_is_recorded_with_its_error(
    settings: Settings, redis: aioredis.Redis
) -> None:
    config = ConnectorConfig("crm", "demo", "crm-1", schedule_s=None, options={"records": 1})
    client = await connect(settings)
    stopping = asyncio.Event()
    task = asyncio.create_task(Bridge(settings, client, [Broken(config)], stopping).run())

    async def failed() -> bool:
        runs = await sync_runs(redis, "default")
        return bool(runs) and runs[0].status == "failed"

    try:
        await wait_until(failed, what="a failed run recorded")
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)
        await client.aclose()
    (run,) = await sync_runs(redis, "default")
    assert run.error == "injected: the source refuses us"
    assert run.to_json()["last_run"]["status"] == "failed"  # type: ignore[index]
