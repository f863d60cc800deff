"""No unread entry is ever trimmed (DESIGN §4.2): back-pressure instead of MAXLEN data loss."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from aam_bridge import metrics as bridge_metrics
from aam_bridge.connectors.demo import DemoConnector
from aam_bridge.connectors.registry import create
from aam_bridge.main import serve as serve_bridge
from aam_dcl import keys
from aam_dcl.config import Settings
from dcl_worker import metrics as worker_metrics
from tests.integration.conftest import demo_configs, drained, running_worker, wait_until
from tests.integration.test_pipeline import store_rows

MAXLEN = 50
CHUNK = 10
RECORDS = 840  # per table: 3 tables x 84 chunks = 252 entries, about 5 x MAXLEN


def gauge(metric: object, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())  # type: ignore[attr-defined]  # no public getter


async def test_stopped_worker_then_5x_maxlen_published_every_record_lands(
    settings: Settings, redis: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"stream_maxlen": MAXLEN, "batch_chunk_size": CHUNK})
    (config,) = demo_configs(records=RECORDS)[:1]
    stream = keys.stream("default", config.name)
    labels = ("default", config.name)
    waited_before = gauge(bridge_metrics.BACKPRESSURE_SECONDS, *labels)
    deleted_before = gauge(worker_metrics.DELETED_PENDING, *labels)

    bridge = asyncio.create_task(serve_bridge(settings, asyncio.Event(), [config]))

    async def blocked() -> bool:
        return gauge(bridge_metrics.BACKPRESSURE_ACTIVE, *labels) == 1

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
    assert gauge(bridge_metrics.BACKPRESSURE_SECONDS, *labels) > waited_before
    assert gauge(worker_metrics.DELETED_PENDING, *labels) == deleted_before
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
