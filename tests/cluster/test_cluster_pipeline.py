"""The pipeline on a Redis Cluster by REDIS_URL alone: detection, the key map's slots, the
bridge → worker → DuckDB run with streams on different nodes, and the guide's recipes."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.redis_conn import connect
from aam_dcl_cli.local_server import LocalServer
from tests.cluster.checks import assert_applied_exactly_once, processed_records
from tests.cluster.local_cluster import LocalCluster
from tests.integration.conftest import demo_configs, run_bridge_once, running_worker
from tests.support import drained, wait_until

pytestmark = pytest.mark.cluster
T = "default"
CONNECTORS = ["salesforce", "hubspot", "dynamics"]


async def test_redis_cluster_auto_asks_the_server_and_true_false_decide_without_asking(
    redis_cluster: LocalCluster, redis_server: LocalServer
) -> None:
    """auto: the cluster client on a cluster node's URL, the standalone client on a standalone
    server; false keeps the standalone client even on a cluster."""
    on_cluster = await connect(Settings(redis_url=redis_cluster.url))
    on_server = await connect(Settings(redis_url=redis_server.url))
    forced = await connect(Settings(redis_url=redis_cluster.url, redis_cluster="false"))
    told = await connect(Settings(redis_url=redis_cluster.url, redis_cluster="true"))
    try:
        assert isinstance(on_cluster, RedisCluster)
        assert isinstance(told, RedisCluster)
        assert type(on_server) is aioredis.Redis
        assert type(forced) is aioredis.Redis
        await on_cluster.set("k", 1)  # lands on whichever node serves it
        assert await told.get("k") == b"1"
    finally:
        for client in (on_cluster, on_server, forced, told):
            await client.aclose()


def test_what_one_script_writes_shares_a_slot_and_a_tenants_streams_do_not(
    redis_cluster: LocalCluster,
) -> None:
    """CLUSTER KEYSLOT (the server's own hash) agrees: stream, dead letters and sync state
    share a slot, so do the processed set and its expiry index; the demo's three streams
    land on three different slots, and on more than one node."""
    port = redis_cluster.nodes[0].port

    def slot(key: str) -> int:
        return int(redis_cluster.cli(port, "CLUSTER", "KEYSLOT", key))

    for c in CONNECTORS:
        stream = slot(keys.stream(T, c))
        assert stream == key_slot(keys.stream(T, c).encode())
        assert slot(keys.dead_letter_stream(T, c)) == stream
        assert slot(keys.sync_state(T, c)) == stream
    assert slot(keys.processed_expiry(T)) == slot(keys.processed_set(T))
    assert len({slot(keys.stream(T, c)) for c in CONNECTORS}) == 3
    nodes = {redis_cluster.node_of(keys.stream(T, c)).port for c in CONNECTORS}
    assert len(nodes) >= 2, "the demo's streams all on one node: the test proves less"


async def test_bridge_to_worker_to_duckdb_on_a_cluster_lands_every_record_once(
    cluster_settings: Settings, rc: RedisCluster, redis_cluster: LocalCluster
) -> None:
    """Three connectors whose streams are on different nodes: every record lands once, each
    chunk once, nothing pending; then the guide's redis-cli recipes (with -c) answer as the
    guide says."""
    configs = demo_configs(records=600, page_size=100)
    before = processed_records(CONNECTORS)
    async with running_worker(cluster_settings):
        await run_bridge_once(cluster_settings, configs)
        await wait_until(lambda: drained(rc, T, CONNECTORS), 60, "the worker to drain")
    await assert_applied_exactly_once(cluster_settings, configs, rc, before)
    stored = await rc.scard(keys.processed_set(T))

    port = redis_cluster.nodes[0].port  # any node: -c follows the MOVED redirection
    for c in CONNECTORS:
        stream = keys.stream(T, c)
        assert int(redis_cluster.cli(port, "XLEN", stream, follow=True)) > 0
        groups = redis_cluster.cli(port, "XINFO", "GROUPS", stream, follow=True).split()
        assert groups[groups.index("name") + 1] == keys.group(T)
        assert groups[groups.index("pending") + 1] == "0"
        pending = redis_cluster.cli(port, "XPENDING", stream, keys.group(T), follow=True)
        assert pending.split()[0] == "0"
        assert await rc.hget(keys.sync_state(T, c), "runs") == b"1"
    scard = redis_cluster.cli(port, "SCARD", keys.processed_set(T), follow=True)
    assert int(scard) == stored
    ttl = int(redis_cluster.cli(port, "TTL", keys.processed_set(T), follow=True))
    assert 0 < ttl <= cluster_settings.idempotency_ttl_s
