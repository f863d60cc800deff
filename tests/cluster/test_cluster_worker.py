"""The worker's guarantees on a Redis Cluster: reclaim, dead letters, back-pressure, exactly
once — each across streams that live on different nodes."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.cluster import RedisCluster

from aam_bridge.connectors.demo import DemoConnector
from aam_bridge.main import serve as serve_bridge
from aam_dcl import keys
from aam_dcl.config import Settings
from dcl_worker import metrics
from dcl_worker.sinks.registry import create_sink
from tests.cluster.local_cluster import LocalCluster
from tests.integration.conftest import demo_configs, running_worker
from tests.integration.test_pipeline import store_rows
from tests.integration.test_worker import counter, publish
from tests.support import drained, sample, wait_until

pytestmark = pytest.mark.cluster
T = "default"
GROUP = keys.group(T)
# Connectors whose streams the test cluster spreads over its nodes (checked below).
SPREAD = ["crm", "erp", "billing", "support"]


def test_the_connectors_of_these_tests_live_on_different_nodes(redis_cluster: LocalCluster) -> None:
    nodes = {redis_cluster.node_of(keys.stream(T, c)).port for c in SPREAD}
    assert len(nodes) >= 2


async def test_a_dead_consumers_entries_are_reclaimed_on_every_node(
    cluster_settings: Settings, rc: RedisCluster
) -> None:
    """A consumer read every stream's entries and died: the worker takes them over (XAUTOCLAIM
    on each stream's node), applies them once, and one deleted while pending is counted."""
    deleted_id = b""
    for connector in SPREAD:
        stream = keys.stream(T, connector)
        await rc.xgroup_create(stream, GROUP, id="0", mkstream=True)
        await publish(rc, connector, range(1, 6))
        taken = await rc.xreadgroup(GROUP, "dead-consumer", {stream: ">"}, count=10)
        if connector == SPREAD[0]:
            deleted_id = taken[0][1][0][0]
            await rc.xdel(stream, deleted_id)
    reclaimed = {c: counter(metrics.RECLAIMED, T, c) for c in SPREAD}
    deleted = counter(metrics.DELETED_PENDING, T, SPREAD[0])
    async with running_worker(cluster_settings.model_copy(update={"claim_idle_ms": 200})):
        await wait_until(lambda: drained(rc, T, SPREAD), what="the dead consumer's entries")
    assert deleted_id
    assert await rc.scard(keys.processed_set(T)) == 5 * len(SPREAD) - 1
    for connector in SPREAD:
        expected = 4 if connector == SPREAD[0] else 5
        assert counter(metrics.RECLAIMED, T, connector) - reclaimed[connector] == expected
    assert counter(metrics.DELETED_PENDING, T, SPREAD[0]) - deleted == 1


async def test_poison_is_dead_lettered_beside_its_stream_and_the_streams_keep_flowing(
    cluster_settings: Settings, rc: RedisCluster, redis_cluster: LocalCluster
) -> None:
    """Malformed JSON on two streams of different nodes: each goes to its own dead-letter
    stream (on its stream's node), acked by the same script; good batches around it land."""
    poisoned = SPREAD[:2]
    poison_ids = {}
    for connector in poisoned:
        await publish(rc, connector, range(1, 3))
        poison_ids[connector] = await rc.xadd(keys.stream(T, connector), {"payload": b"{no"})
        await publish(rc, connector, range(3, 5))
    async with running_worker(cluster_settings):
        await wait_until(lambda: drained(rc, T, poisoned), what="the streams to drain")
    assert await rc.scard(keys.processed_set(T)) == 4 * len(poisoned)
    for connector in poisoned:
        dlq = keys.dead_letter_stream(T, connector)
        assert redis_cluster.node_of(dlq) == redis_cluster.node_of(keys.stream(T, connector))
        ((_, dead),) = await rc.xrange(dlq)
        assert dead[b"original_id"] == poison_ids[connector]
        assert dead[b"error_type"] == b"malformed_json"


async def test_a_batch_delivered_too_often_is_dead_lettered_once(
    cluster_settings: Settings, rc: RedisCluster
) -> None:
    connector = SPREAD[1]
    stream = keys.stream(T, connector)
    await rc.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await publish(rc, connector, range(1, 2))
    await rc.xreadgroup(GROUP, cluster_settings.consumer_name, {stream: ">"})
    for _ in range(5):
        await rc.xreadgroup(GROUP, cluster_settings.consumer_name, {stream: "0"})
    async with running_worker(cluster_settings.model_copy(update={"max_deliveries": 5})):
        await wait_until(lambda: drained(rc, T, [connector]), what="the batch to be dead-lettered")
    ((_, dead),) = await rc.xrange(keys.dead_letter_stream(T, connector))
    assert dead[b"error_type"] == b"max_deliveries"
    assert await rc.scard(keys.processed_set(T)) == 0


async def test_back_pressure_holds_the_bridge_and_no_unread_entry_is_trimmed(
    cluster_settings: Settings, rc: RedisCluster
) -> None:
    """No worker yet, 5 x MAXLEN to publish: the bridge waits at the watermark on the
    cluster as on one server; then the worker drains it all and every record lands."""
    settings = cluster_settings.model_copy(update={"stream_maxlen": 50, "batch_chunk_size": 10})
    (config,) = demo_configs(records=840)[:1]
    stream = keys.stream(T, config.name)
    labels = {"tenant": T, "connector": config.name}
    bridge = asyncio.create_task(serve_bridge(settings, asyncio.Event(), [config]))

    async def blocked() -> bool:
        return sample("aam_bridge_backpressure_active", **labels) == 1

    await wait_until(blocked, what="the bridge to apply back-pressure")
    info = await rc.xinfo_stream(stream)
    assert info["entries-added"] == info["length"] <= 50, "nothing may be trimmed yet"
    deleted = sample("dcl_worker_deleted_pending_entries_total", **labels)
    async with running_worker(settings):
        await asyncio.wait_for(bridge, 60)
        await wait_until(lambda: drained(rc, T, [config.name]), what="the worker to catch up")
    info = await rc.xinfo_stream(stream)
    assert info["entries-added"] >= 250
    assert sample("dcl_worker_deleted_pending_entries_total", **labels) == deleted
    connector = DemoConnector(config)
    for spec in await connector.tables():
        rows = store_rows(settings, f"{config.name}__{spec.name}", list(spec.primary_key))
        assert set(rows) == set(connector.expected_state(spec.name, 0)), spec.name


async def test_batches_sent_again_and_a_lost_mark_are_never_applied_twice(
    cluster_settings: Settings, rc: RedisCluster
) -> None:
    """Append-only tables (no primary key: a second apply shows as extra rows). Every batch is
    re-sent once while the processed set knows it, and once more after the set and its expiry
    index were deleted (the mark lost): the store's inbox still applies each batch once."""
    for connector in SPREAD:
        await publish(rc, connector, range(1, 4), rows=10, primary_key=())
    async with running_worker(cluster_settings):
        await wait_until(lambda: drained(rc, T, SPREAD), what="the first delivery")
        for connector in SPREAD:
            await publish(rc, connector, range(1, 4), rows=10, primary_key=())
        await wait_until(lambda: drained(rc, T, SPREAD), what="the copies to be acked")
    await rc.delete(keys.processed_set(T), keys.processed_expiry(T))  # one slot: one DEL
    for connector in SPREAD:
        await publish(rc, connector, range(1, 4), rows=10, primary_key=())
    async with running_worker(cluster_settings):
        await wait_until(lambda: drained(rc, T, SPREAD), what="the redelivery")
    sink = create_sink(cluster_settings.sink_url, T)
    await sink.open()
    try:
        assert await sink.count_rows() == {f"{c}__items": 30 for c in SPREAD}
    finally:
        await sink.close()
    assert await rc.scard(keys.processed_set(T)) == 3 * len(SPREAD)
    assert await rc.zcard(keys.processed_expiry(T)) == 3 * len(SPREAD)
