"""Fixtures of the Redis Cluster tests: one private 3-primary cluster per session (flushed per
test), settings that point the daemons at it by REDIS_URL alone, and a test-side client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from aam_dcl.config import Settings
from tests.cluster.local_cluster import LocalCluster
from tests.integration.test_redis_faults import fault_settings


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three primaries (AOF, fsync always), no replicas, on free ports <= 55 535."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
async def rc(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    """A test-side cluster client, every primary flushed before the test."""
    client = RedisCluster.from_url(redis_cluster.url)
    await client.flushall()  # redis-py sends it to every primary
    yield client
    await client.aclose()


@pytest.fixture
def cluster_settings(redis_cluster: LocalCluster, rc: RedisCluster, tmp_path: Path) -> Settings:
    """In-process daemons on the cluster, by REDIS_URL alone (REDIS_CLUSTER=auto)."""
    return fault_settings(
        redis_cluster.url,
        tmp_path,
        consumer_name="cluster-worker",
        discovery_interval_s=0.1,
        block_ms=100,
    )
