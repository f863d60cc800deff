"""Helpers to run the daemons in-process against the private Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from aam_bridge.connectors.base import ConnectorConfig
from aam_bridge.main import serve as serve_bridge
from aam_dcl import keys
from aam_dcl.config import Settings
from dcl_worker.main import serve as serve_worker


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout_s: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until true; fail the test with ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def demo_configs(records: int, **options: Any) -> list[ConnectorConfig]:
    return [
        ConnectorConfig(
            name=name,
            type="demo",
            connector_config_id=f"{name}-demo-001",
            schedule_s=None,
            options={"flavor": name, "records": records, "seed": 7, **options},
        )
        for name in ("salesforce", "hubspot", "dynamics")
    ]


@pytest.fixture
def settings(redis_url: str, duckdb_url: str) -> Settings:
    """Settings for in-process daemons: private Redis, a fresh DuckDB file, quick loops."""
    return Settings(
        redis_url=redis_url,
        sink_url=duckdb_url,
        metrics_port=0,
        metrics_host="127.0.0.1",
        discovery_interval_s=0.1,
        block_ms=100,
        consumer_name="test-worker",
        log_format="console",
    )


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[asyncio.Event]:
    """A dcl-worker task for the duration of the block (stopped gracefully at the end)."""
    stopping = asyncio.Event()
    task = asyncio.create_task(serve_worker(settings, stopping))
    try:
        yield stopping
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


async def run_bridge_once(settings: Settings, configs: list[ConnectorConfig]) -> None:
    await asyncio.wait_for(serve_bridge(settings, asyncio.Event(), configs), 120)


async def drained(client: aioredis.Redis, tenant: str = "default") -> bool:
    """Every stream of the tenant has a group with no lag and nothing pending."""
    found = False
    async for key in client.scan_iter(match=keys.stream_pattern(tenant), _type="stream"):
        found = True
        groups = {g["name"].decode(): g for g in await client.xinfo_groups(key)}
        group = groups.get(keys.group(tenant))
        if group is None or group["pending"] or group["lag"] != 0:
            return False
    return found
