"""Helpers to run the daemons in-process against the private Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aam_bridge.connectors.base import ConnectorConfig
from aam_bridge.main import serve as serve_bridge
from aam_dcl.config import Settings
from dcl_worker.main import serve as serve_worker

# Kept importable from here until every test imports them from tests.support (they moved).
from tests.support import drained, wait_until  # noqa: F401 - re-exported


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
