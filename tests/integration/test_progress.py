"""Progress you can see at INFO: the bridge logs one line per table per interval during a
run, the worker one per stream per interval while work flows, and neither while idle."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis

from aam_dcl.config import Settings
from aam_dcl.logs import configure_logging
from tests.integration.conftest import demo_configs, run_bridge_once, running_worker
from tests.integration.test_redis_faults import recorded_logs
from tests.support import drained, sample, wait_until


@contextmanager
def info_logs() -> Iterator[list[dict[str, Any]]]:
    configure_logging("INFO", "console")
    try:
        with recorded_logs() as events:
            yield events
    finally:
        configure_logging("WARNING", "console")


def named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == name]


async def test_bridge_and_worker_log_progress_lines_while_work_flows(
    settings: Settings, redis: aioredis.Redis
) -> None:
    settings = settings.model_copy(
        update={"progress_interval_s": 0.01, "batch_chunk_size": 50, "sink_url": "null://"}
    )
    configs = demo_configs(records=3000)[:1]
    labels = {"tenant": "default", "connector": configs[0].name}
    published_before = sample("aam_bridge_records_published_total", **labels)
    processed_before = sample("dcl_worker_records_total", **labels, outcome="processed")

    async def every_record_counted() -> bool:
        published = sample("aam_bridge_records_published_total", **labels) - published_before
        processed = sample("dcl_worker_records_total", **labels, outcome="processed")
        return processed - processed_before == published

    with info_logs() as events:
        async with running_worker(settings):
            await run_bridge_once(settings, configs)
            await wait_until(lambda: drained(redis), what="the records to land")
            # The worker counts and logs a batch's progress after its ack: once it has counted
            # every published record, its last progress line is out.
            await wait_until(every_record_counted, what="the worker to count every record")
            idle_from = len(events)
            await asyncio.sleep(0.3)  # nothing to poll: an idle pipeline logs no progress
            idle = events[idle_from:]
    bridge = named(events, "sync_progress")
    assert bridge, "the bridge logged no progress during the run"
    line = bridge[-1]
    assert {"table", "pages", "records", "records_per_s", "cursor", "total_records"} <= set(line)
    finished = named(events, "sync_run_finished")
    assert finished
    assert finished[-1]["records"] > 0
    worker = named(events, "stream_progress")
    assert worker, "the worker logged no progress while writing"
    assert {"batches", "records", "records_per_s", "lag", "pending", "total_records"} <= set(
        worker[-1]
    )
    assert not named(idle, "stream_progress")
    assert not named(idle, "sync_progress")
