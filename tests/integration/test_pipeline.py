"""End to end: demo connector → aam-bridge → Redis Streams → dcl-worker → DuckDB."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import duckdb
import orjson
import redis.asyncio as aioredis

from aam_bridge.connectors.demo import DemoConnector
from aam_bridge.connectors.registry import create
from aam_dcl import keys
from aam_dcl.config import Settings
from dcl_worker import metrics as worker_metrics
from tests.integration.conftest import (
    demo_configs,
    drained,
    run_bridge_once,
    running_worker,
    wait_until,
)
from tests.unit.test_messages import GUIDE_PAYLOAD


def store_rows(
    settings: Settings, table: str, pk: list[str]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    path = settings.sink_url.removeprefix("duckdb://")
    with duckdb.connect(path, read_only=True) as con:
        cur = con.execute(f'SELECT * FROM "{table}"')
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    assert len(rows) == len({tuple(r[k] for k in pk) for r in rows}), f"duplicate keys in {table}"
    return {tuple(r[k] for k in pk): r for r in rows}


def same_value(expected: Any, got: Any) -> bool:
    """Compare a connector's JSON value with what the typed store gives back."""
    if expected is None or got is None:
        return expected is got
    if isinstance(expected, bool) or isinstance(got, bool):
        return bool(expected) == bool(got) and type(expected) is type(got)
    if isinstance(expected, int | float):
        return abs(float(expected) - float(got)) < 1e-6
    if isinstance(expected, dict | list):
        return expected == (orjson.loads(got) if isinstance(got, str) else got)
    if isinstance(got, dt.datetime):
        return dt.datetime.fromisoformat(expected) == got
    if isinstance(got, dt.date):
        return dt.date.fromisoformat(expected) == got
    return bool(expected == got)


async def processed_ids(client: aioredis.Redis, connector: str) -> set[str]:
    """Batch ids of ``connector`` in the processed set (the stream itself is trimmed)."""
    members = await client.smembers(keys.processed_set("default"))
    return {m.decode() for m in members if m.decode().startswith(f"{connector}_")}


def inbox_records(settings: Settings, batch_ids: set[str]) -> int:
    """Records the store's inbox says these batches carried."""
    path = settings.sink_url.removeprefix("duckdb://")
    with duckdb.connect(path, read_only=True) as con:
        rows = con.execute("SELECT batch_id, record_count FROM _dcl_inbox").fetchall()
    return sum(count for batch_id, count in rows if batch_id in batch_ids)


async def test_demo_records_land_exactly_once_and_second_run_adds_only_the_changes(
    settings: Settings, redis: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"stream_maxlen": 100_000})
    configs = demo_configs(records=450, page_size=100)
    async with running_worker(settings):
        await run_bridge_once(settings, configs)
        await wait_until(lambda: drained(redis), what="worker to drain run 1")
        first_ids = {c.name: await processed_ids(redis, c.name) for c in configs}
        await run_bridge_once(settings, configs)
        await wait_until(lambda: drained(redis), what="worker to drain run 2")

    for config in configs:
        connector = create(config)
        assert isinstance(connector, DemoConnector)
        ids = await processed_ids(redis, config.name)
        second_run = ids - first_ids[config.name]
        changes = 0
        for spec in await connector.tables():
            after_1 = connector.expected_state(spec.name, 0)
            after_2 = connector.expected_state(spec.name, 1)
            changes += sum(1 for k, v in after_2.items() if after_1.get(k) != v)
            rows = store_rows(settings, f"{config.name}__{spec.name}", list(spec.primary_key))
            assert set(rows) == set(after_2), f"{config.name}.{spec.name}: keys differ"
            for key, expected in after_2.items():
                got = rows[key]
                for column, value in expected.items():
                    assert same_value(value, got[column]), (config.name, spec.name, key, column)
        # Batch ids: one run start per run, chunks numbered 1..n in each run.
        assert len({i.rsplit("_", 2)[1] for i in ids}) == 2
        numbers = sorted(int(i.rsplit("_", 1)[1]) for i in second_run)
        assert numbers == list(range(1, len(second_run) + 1))
        published_2 = inbox_records(settings, second_run)
        assert published_2 == changes, f"{config.name}: run 2 must publish only the changes"
    # The processed set and the store's inbox agree: every applied batch is marked, once.
    path = settings.sink_url.removeprefix("duckdb://")
    with duckdb.connect(path, read_only=True) as con:
        inbox = {r[0] for r in con.execute("SELECT batch_id FROM _dcl_inbox").fetchall()}
    members = {m.decode() for m in await redis.smembers(keys.processed_set("default"))}
    assert inbox == members


async def test_guide_example_written_with_plain_xadd_is_accepted_and_acknowledged(
    settings: Settings, redis: aioredis.Redis
) -> None:
    stream = keys.stream("default", "salesforce")
    await redis.execute_command("XADD", stream, "*", "payload", GUIDE_PAYLOAD)
    async with running_worker(settings):
        await wait_until(lambda: drained(redis), what="the guide's entry to be acked")
    assert await redis.sismember(keys.processed_set("default"), "salesforce_1762299908994_1")
    assert await redis.xlen(keys.dead_letter_stream("default", "salesforce")) == 0
    path = settings.sink_url.removeprefix("duckdb://")
    with duckdb.connect(path, read_only=True) as con:
        columns = [r[0] for r in con.execute("DESCRIBE salesforce__opportunities").fetchall()]
        count = con.execute("SELECT count(*) FROM salesforce__opportunities").fetchone()
    assert "amount" in columns
    assert "close_date" in columns
    assert count == (0,)  # schema-only: the table is registered, no rows


async def test_worker_with_use_aam_as_source_false_consumes_nothing(
    settings: Settings, redis: aioredis.Redis
) -> None:
    stream = keys.stream("default", "salesforce")
    await redis.execute_command("XADD", stream, "*", "payload", GUIDE_PAYLOAD)
    settings = settings.model_copy(update={"use_aam_as_source": False})
    async with running_worker(settings):
        await asyncio.sleep(1.0)  # nothing can be waited for: the point is that nothing happens
        assert worker_metrics.CONSUMING.labels("default")._value.get() == 0  # no public getter
    assert await redis.xlen(stream) == 1
    groups = await redis.xinfo_groups(stream)
    assert groups == []  # not even a group was created
