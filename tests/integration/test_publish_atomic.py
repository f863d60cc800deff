"""Publish + checkpoint are all or nothing: a chunk Redis refuses never moves the checkpoint.

Redis does not roll back a MULTI when one of its commands fails at run time; these attacks
made the old MULTI write the checkpoint past 150 records it never published. Each test makes
the XADD fail, checks the run fails visibly and the checkpoint stays, then removes the cause
and checks every record lands in the stream exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from aam_bridge import metrics
from aam_bridge.connectors.base import Connector, ConnectorConfig, Page, TableSpec
from aam_bridge.sync import SyncRunner
from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.redis_conn import connect
from tests.support import sample, wait_until

RECORDS = 150
ITEMS = {"tenant": "default", "connector": "items"}  # the labels of the connector's metrics
LAST_POSSIBLE_ID = "18446744073709551615-18446744073709551615"


class Items(Connector):
    """One table of RECORDS records in pages of 50."""

    type_name = "items"

    async def tables(self) -> list[TableSpec]:
        return [TableSpec("items", ("id",))]

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        for start in range(int(cursor or 0), RECORDS, 50):
            yield Page([{"id": i} for i in range(start, start + 50)], str(start + 50))


def runner(settings: Settings, client: aioredis.Redis) -> SyncRunner:
    return SyncRunner(settings, client, Items(ConnectorConfig("items", "items", "i", None, {})))


async def published_ids(redis: aioredis.Redis) -> list[int]:
    ids = []
    for _, fields in await redis.xrange(keys.stream("default", "items")):
        (table,) = orjson.loads(fields[b"payload"])["tables"]
        ids += [r["id"] for r in table["records"]]
    return ids


async def sync_state(redis: aioredis.Redis) -> dict[bytes, bytes]:
    state: dict[bytes, bytes] = await redis.hgetall(keys.sync_state("default", "items"))
    return state


@pytest.mark.parametrize("trim_policy", ["block", "trim"])
async def test_a_stream_that_refuses_xadd_leaves_the_checkpoint_and_loses_nothing(
    settings: Settings, redis: aioredis.Redis, trim_policy: str
) -> None:
    """A stream whose last id is the last possible one: every XADD fails ("exhausted")."""
    settings = settings.model_copy(update={"batch_chunk_size": 20, "trim_policy": trim_policy})
    stream = keys.stream("default", "items")
    await redis.xadd(stream, {"payload": b"{}"}, id=LAST_POSSIBLE_ID)
    errors_before = sample("aam_bridge_publish_errors_total", **ITEMS)
    client = await connect(settings)
    try:
        with pytest.raises(ResponseError, match="last possible ID"):
            await runner(settings, client).run_once()
        assert sample("aam_bridge_publish_errors_total", **ITEMS) == errors_before + 1
        state = await sync_state(redis)
        assert state[b"next_chunk"] == b"1"  # nothing was recorded as published
        assert state[b"pos_cursor"] == b""
        assert await redis.xlen(stream) == 1

        await redis.delete(stream)  # the cause is gone: the run resumes and sends everything
        result = await runner(settings, client).run_once()
    finally:
        await client.aclose()
    assert result.resumed
    assert sorted(await published_ids(redis)) == list(range(RECORDS))


async def test_a_maxlen_redis_refuses_leaves_the_checkpoint_and_loses_nothing(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """MAXLEN beyond a 64-bit integer: Redis refuses the XADD ("value is out of range").

    Settings cap AAM_REDIS_STREAM_MAXLEN, so this goes around validation, as a bug would.
    """
    bad = settings.model_copy(
        update={"batch_chunk_size": 20, "trim_policy": "trim", "stream_maxlen": 10**23}
    )
    client = await connect(bad)
    try:
        with pytest.raises(ResponseError):
            await runner(bad, client).run_once()
        state = await sync_state(redis)
        assert state[b"next_chunk"] == b"1"
        assert await published_ids(redis) == []

        good = bad.model_copy(update={"stream_maxlen": 1000})
        result = await runner(good, client).run_once()
    finally:
        await client.aclose()
    assert result.resumed
    assert sorted(await published_ids(redis)) == list(range(RECORDS))


@pytest.mark.parametrize("trim_policy", ["block", "trim"])
async def test_the_stream_length_gauge_is_the_length_after_the_last_publish(
    settings: Settings, redis: aioredis.Redis, trim_policy: str
) -> None:
    """aam_bridge_stream_length comes with every publish call's reply, not only from the
    back-pressure check (which the trim policy never makes, and block makes before)."""
    settings = settings.model_copy(update={"batch_chunk_size": 20, "trim_policy": trim_policy})
    gauge = metrics.STREAM_LENGTH.labels("default", "items")
    gauge.set(-1)
    client = await connect(settings)
    try:
        await runner(settings, client).run_once()
    finally:
        await client.aclose()
    # 150 records in pages of 50, chunks of at most 20 within a page: 3 x (20 + 20 + 10),
    # then the completion marker of the full read.
    assert await redis.xlen(keys.stream("default", "items")) == 10
    assert sample("aam_bridge_stream_length", **ITEMS) == 10


async def test_a_bridge_whose_publish_fails_logs_the_failure_and_retries(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """The bridge counts the failed run, keeps the connector alive and succeeds once it can."""
    from aam_bridge.bridge import Bridge

    settings = settings.model_copy(update={"batch_chunk_size": 20})
    stream = keys.stream("default", "items")
    await redis.xadd(stream, {"payload": b"{}"}, id=LAST_POSSIBLE_ID)

    def runs(status: str) -> float:
        return sample("aam_bridge_sync_runs_total", **ITEMS, status=status)

    async def run_failed() -> bool:
        return runs("failed") > before

    before = runs("failed")
    succeeded_before = runs("succeeded")
    client = await connect(settings)
    connector = Items(ConnectorConfig("items", "items", "i", None, {}))
    bridge = Bridge(settings, client, [connector], asyncio.Event())
    task = asyncio.create_task(bridge.run())
    try:
        await wait_until(run_failed, 10, "the failed run to be counted")
        assert runs("succeeded") == succeeded_before  # no run succeeded yet
        await redis.delete(stream)
        await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
        await client.aclose()
    assert sorted(await published_ids(redis)) == list(range(RECORDS))
