"""What every cluster run must end with: the demo's records in the store exactly once."""

from __future__ import annotations

from collections.abc import Mapping

from redis.asyncio.cluster import RedisCluster

from aam_bridge.connectors.base import ConnectorConfig
from aam_dcl import keys
from aam_dcl.config import Settings
from tests.integration.test_redis_faults import (
    assert_chunks_contiguous,
    assert_demo_landed_once,
    inbox,
    worker_metric,
)


def processed_records(connectors: list[str]) -> dict[str, float]:
    """The worker's processed-records counters now (to subtract from the ones after a run)."""
    return {c: worker_metric("records_total", c, outcome="processed") for c in connectors}


async def assert_applied_exactly_once(
    settings: Settings,
    configs: list[ConnectorConfig],
    rc: RedisCluster,
    processed_before: Mapping[str, float],
) -> None:
    """Every expected row is in the store (none missing, none extra), each run's chunks are
    all in the store's inbox (no gap), the processed set holds each batch id, and the worker
    applied each record once (its processed counter grew by the record count); no dead letter."""
    connectors = [c.name for c in configs]
    total = await assert_demo_landed_once(settings, configs, 0)
    stored = inbox(settings.sink_url)
    assert sum(stored.values()) == total, "a batch is missing from, or extra in, the store"
    assert_chunks_contiguous(list(stored))
    assert await rc.scard(keys.processed_set(settings.tenant_id)) == len(stored)
    after = processed_records(connectors)
    applied = sum(after[c] - processed_before[c] for c in connectors)
    assert applied == total, "a batch was applied more than once (or not at all)"
    for connector in connectors:
        assert await rc.xlen(keys.dead_letter_stream(settings.tenant_id, connector)) == 0
