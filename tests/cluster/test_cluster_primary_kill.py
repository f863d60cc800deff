"""A primary of the cluster killed (kill -9) mid-run and restarted from its AOF: nothing lost,
nothing applied twice; the streams on the other primaries keep flowing meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from aam_bridge.main import serve as serve_bridge
from aam_dcl import keys
from tests.cluster.checks import assert_applied_exactly_once, processed_records
from tests.cluster.local_cluster import LocalCluster
from tests.integration.conftest import demo_configs
from tests.integration.test_redis_faults import (
    count_events,
    fault_settings,
    recorded_logs,
    worker_metric,
    worker_task,
)
from tests.support import drained, wait_until

pytestmark = pytest.mark.cluster
T = "default"
DOWN_S = 2.0  # below the cluster's node timeout: the peers never mark the node failed


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of this test's own: it kills one of its nodes."""
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


async def test_a_primary_killed_and_restarted_from_its_aof_loses_nothing_and_applies_once(
    own_cluster: LocalCluster, tmp_path: Path
) -> None:
    configs = demo_configs(records=2000, page_size=100)
    connectors = [c.name for c in configs]
    settings = fault_settings(
        own_cluster.url, tmp_path, batch_chunk_size=10, stream_maxlen=60, read_count=20
    )
    victim = own_cluster.node_of(keys.stream(T, connectors[0]))
    others = [c for c in connectors if own_cluster.node_of(keys.stream(T, c)) != victim]
    assert others, "every stream on the killed node: the test proves less"
    processed = processed_records(connectors)
    redis_errors = {c: worker_metric("redis_errors_total", c) for c in connectors}
    rc = RedisCluster.from_url(own_cluster.url, socket_connect_timeout=1)

    async def read_at_least(names: list[str], n: int) -> bool:
        try:
            for name in names:
                groups = await rc.xinfo_groups(keys.stream(T, name))
                if not groups or (groups[0]["entries-read"] or 0) < n:
                    return False
        except Exception:  # the stream not there yet, or on the node that is down
            return False
        return True

    try:
        with recorded_logs() as events:
            async with worker_task(settings):
                bridge = asyncio.create_task(serve_bridge(settings, asyncio.Event(), configs))
                await wait_until(lambda: read_at_least(connectors, 10), what="all streams read")
                assert not bridge.done(), "the sync ended before the fault: make it longer"
                read_before = {c: await _entries_read(rc, c) for c in others}
                await asyncio.to_thread(victim.stop, True)  # kill -9
                killed_at = time.monotonic()
                await wait_until(
                    lambda: _moved_on(rc, others, read_before),
                    DOWN_S * 5,
                    "a stream of another primary to flow while one is down",
                )
                await asyncio.sleep(max(0.0, DOWN_S - (time.monotonic() - killed_at)))
                await asyncio.to_thread(victim.start)  # from its AOF and nodes.conf
                await asyncio.to_thread(own_cluster.wait_ok)
                await asyncio.wait_for(bridge, 90)
                await wait_until(lambda: drained(rc, T, connectors), 60, "the worker to drain")
        assert count_events(events, "loop_crashed") == 0
        errors = sum(worker_metric("redis_errors_total", c) - redis_errors[c] for c in connectors)
        assert errors > 0, "the worker never saw the kill"

        await assert_applied_exactly_once(settings, configs, rc, processed)
    finally:
        await rc.aclose()


async def _entries_read(rc: RedisCluster, connector: str) -> int:
    groups = await rc.xinfo_groups(keys.stream(T, connector))
    return int(groups[0]["entries-read"] or 0)


async def _moved_on(rc: RedisCluster, connectors: list[str], before: dict[str, int]) -> bool:
    for connector in connectors:
        try:
            if await _entries_read(rc, connector) > before[connector]:
                return True
        except Exception:  # the client re-learns the cluster after the kill
            continue
    return False
