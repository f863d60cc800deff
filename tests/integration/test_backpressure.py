"""No unread entry is ever trimmed: back-pressure instead of MAXLEN data loss."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from aam_bridge.connectors.demo import DemoConnector
from aam_bridge.connectors.registry import create
from aam_bridge.main import serve as serve_bridge
from aam_dcl import keys
from aam_dcl.config import Settings
from tests.integration.conftest import demo_configs, running_worker
from tests.integration.test_pipeline import store_rows
from tests.support import drained, sample, wait_until

MAXLEN = 50
CHUNK = 10
RECORDS = 840  # per table: 3 tables x 84 chunks = 252 entries, about 5 x MAXLEN


async def test_stopped_worker_then_5x_maxlen_published_every_record_lands(
    settings: Settings, redis: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"stream_maxlen": MAXLEN, "batch_chunk_size": CHUNK})
    (config,) = demo_configs(records=RECORDS)[:1]
    stream = keys.stream("default", config.name)
    labels = {"tenant": "default", "connector": config.name}
    waited_before = sample("aam_bridge_backpressure_seconds_total", **labels)
    deleted_before = sample("dcl_worker_deleted_pending_entries_total", **labels)

    bridge = asyncio.create_task(serve_bridge(settings, asyncio.Event(), [config]))

    async def blocked() -> bool:
        return sample("aam_bridge_backpressure_active", **labels) == 1

    await wait_until(blocked, what="the bridge to apply back-pressure")
    info = await redis.xinfo_stream(stream)
    assert info["entries-added"] == info["length"] <= MAXLEN, "nothing may be trimmed yet"
    assert not bridge.done()

    async with running_worker(settings):
        await asyncio.wait_for(bridge, 60)
        await wait_until(lambda: drained(redis), what="the worker to catch up")

    info = await redis.xinfo_stream(stream)
    assert info["entries-added"] >= 5 * MAXLEN
    assert info["length"] < info["entries-added"], "trimming still happens, of acked entries"
    assert sample("aam_bridge_backpressure_seconds_total", **labels) > waited_before
    assert sample("dcl_worker_deleted_pending_entries_total", **labels) == deleted_before
    connector = create(config)
    assert isinstance(connector, DemoConnector)
    for spec in await connector.tables():
        rows = store_rows(settings, f"{config.name}__{spec.name}", list(spec.primary_key))
        assert set(rows) == set(connector.expected_state(spec.name, 0)), spec.name


async def test_trim_policy_trim_is_the_guides_plain_trimming_and_loses_unread_entries(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """The documented risk of AAM_TRIM_POLICY=trim: a stopped worker loses entries."""
    settings = settings.model_copy(
        update={"stream_maxlen": MAXLEN, "batch_chunk_size": CHUNK, "trim_policy": "trim"}
    )
    (config,) = demo_configs(records=RECORDS)[:1]
    await asyncio.wait_for(serve_bridge(settings, asyncio.Event(), [config]), 60)
    info = await redis.xinfo_stream(keys.stream("default", config.name))
    assert info["entries-added"] >= 5 * MAXLEN
    assert info["length"] < info["entries-added"]  # unread entries were trimmed away


async def read_slowly(
    redis: aioredis.Redis, stream: str, group: str, until: asyncio.Event
) -> list[str]:
    """A downstream service's plain redis-py loop on its own group: 2 entries per read, slow
    (about 60 a second, while the worker takes thousands)."""
    batch_ids: list[str] = []
    while True:
        reply = await redis.xreadgroup(group, "downstream-1", {stream: ">"}, count=2, block=50)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                batch_ids.append(fields[b"payload"].split(b'"batch_id":"')[1].split(b'"')[0])
                await redis.xack(stream, group, entry_id)
        if not reply and until.is_set():
            return [b.decode() for b in batch_ids]
        await asyncio.sleep(0.03)  # the slow reader's pace: nothing to wait for


async def test_a_second_slower_group_on_the_stream_receives_every_entry(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Trimming and back-pressure follow the slowest group, not dcl_engine alone: a downstream
    group created before the bridge runs gets every entry while the worker drains its own."""
    settings = settings.model_copy(update={"stream_maxlen": MAXLEN, "batch_chunk_size": CHUNK})
    (config,) = demo_configs(records=RECORDS)[:1]
    stream = keys.stream("default", config.name)
    await redis.xgroup_create(stream, "downstream", id="0", mkstream=True)
    done = asyncio.Event()
    reader = asyncio.create_task(read_slowly(redis, stream, "downstream", done))
    async with running_worker(settings):
        await asyncio.wait_for(serve_bridge(settings, asyncio.Event(), [config]), 90)
        await wait_until(lambda: drained(redis), what="the worker to catch up")
        done.set()
        received = await asyncio.wait_for(reader, 60)
    processed = {m.decode() for m in await redis.smembers(keys.processed_set("default"))}
    info = await redis.xinfo_stream(stream)
    assert info["entries-added"] >= 5 * MAXLEN
    assert len(received) == info["entries-added"], "the downstream group missed entries"
    assert set(received) == processed


async def test_a_group_named_in_aam_ignore_groups_does_not_hold_the_bridge(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A group nobody reads any more, once ignored, neither blocks publishing nor the trim."""
    settings = settings.model_copy(
        update={"stream_maxlen": MAXLEN, "batch_chunk_size": CHUNK, "ignore_groups_csv": "gone"}
    )
    (config,) = demo_configs(records=RECORDS)[:1]
    stream = keys.stream("default", config.name)
    await redis.xgroup_create(stream, "gone", id="0", mkstream=True)
    async with running_worker(settings):
        await asyncio.wait_for(serve_bridge(settings, asyncio.Event(), [config]), 90)
        await wait_until(lambda: drained(redis), what="the worker to catch up")
    info = await redis.xinfo_stream(stream)
    assert info["length"] < info["entries-added"], "acknowledged entries were trimmed"
