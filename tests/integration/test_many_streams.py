"""Any number of streams per tenant is consumed, with a handful of connections.

One blocked XREADGROUP per stream ran the client out of connections at about 120 streams:
entries stayed pending for minutes and the log filled with warnings. The worker now reads
every stream in a few multi-stream calls.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.messages import encode
from tests.integration.conftest import running_worker
from tests.integration.test_redis_faults import recorded_logs
from tests.integration.test_worker import make_batch
from tests.support import drained, sample, wait_until

STREAMS = 500


async def publish_one_each(redis: aioredis.Redis, connectors: list[str], n: int) -> None:
    pipe = redis.pipeline(transaction=False)
    for connector in connectors:
        pipe.xadd(keys.stream("default", connector), {"payload": encode(make_batch(connector, n))})
    await pipe.execute()


async def worker_connections(redis: aioredis.Redis) -> int:
    """Connections of clients other than this test's own client."""
    clients = await redis.client_list()
    own = await redis.client_id()
    return sum(1 for c in clients if int(c["id"]) != own)


async def test_a_worker_consumes_500_streams_within_seconds_with_few_connections_and_a_quiet_log(
    settings: Settings, redis: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"block_ms": 2000, "sink_url": "null://"})
    connectors = [f"c{i:03d}" for i in range(STREAMS)]
    await publish_one_each(redis, connectors, 1)
    with recorded_logs() as events:
        async with running_worker(settings):
            await wait_until(lambda: drained(redis), 60, "500 streams' first entries to land")
            assert await redis.scard(keys.processed_set("default")) == STREAMS

            # A new entry on every stream, the worker blocked on all of them.
            started = time.monotonic()
            await publish_one_each(redis, connectors, 2)
            await wait_until(lambda: drained(redis), 30, "500 new entries to land")
            took_s = time.monotonic() - started
            assert await redis.scard(keys.processed_set("default")) == 2 * STREAMS
            connections = await worker_connections(redis)
    assert took_s < 15, f"new entries took {took_s:.1f}s to land on 500 streams"
    assert connections <= 20, f"the worker holds {connections} connections for 500 streams"
    noisy = [e for e in events if e.get("log_level") in ("warning", "error", "critical")]
    assert noisy == [], noisy[:5]


async def test_one_stream_deleted_under_the_multi_stream_read_does_not_stop_the_others(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """NOGROUP for one stream of the combined read re-creates that group; the rest flows."""
    connectors = [f"d{i}" for i in range(5)]
    await publish_one_each(redis, connectors, 1)
    async with running_worker(settings):
        await wait_until(lambda: drained(redis), 30, "first entries")
        await redis.delete(keys.stream("default", "d2"))
        await publish_one_each(redis, connectors, 2)
        await wait_until(lambda: drained(redis), 30, "entries after the delete")
        processed = await redis.smembers(keys.processed_set("default"))
    expected = {keys.batch_id(c, 1700000000000, n).encode() for c in connectors for n in (1, 2)}
    assert processed == expected


async def test_a_stream_whose_connector_part_is_no_valid_name_is_logged_once_and_counted(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """``aam:dcl:default:bad:name`` is not silently ignored: one warning naming the key and
    the reason, however many discovery rounds pass, and dcl_worker_ignored_streams says 1."""
    await redis.xadd("aam:dcl:default:bad:name", {"payload": b"{}"})
    await publish_one_each(redis, ["good"], 1)
    with recorded_logs() as events:
        async with running_worker(settings):  # discovery every 0.1 s
            good = keys.batch_id("good", 1700000000000, 1)

            async def landed() -> bool:
                return bool(await redis.sismember(keys.processed_set("default"), good))

            await wait_until(landed, what="the good stream")
            # Nothing to poll: six more discovery rounds (every 0.1 s) must not warn again.
            await asyncio.sleep(0.6)
    ignored = [e for e in events if e.get("event") == "stream_ignored"]
    assert len(ignored) == 1, ignored
    assert ignored[0]["stream"] == "aam:dcl:default:bad:name"
    assert "bad:name" in ignored[0]["reason"]
    assert sample("dcl_worker_ignored_streams", tenant="default") == 1
    assert await redis.xlen("aam:dcl:default:bad:name") == 1  # left alone, not consumed
