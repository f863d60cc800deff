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


async def stream_batch_ids(client: aioredis.Redis, connector: str) -> list[str]:
    entries = await client.xrange(keys.stream("default", connector))
    return [orjson.loads(f[b"payload"])["batch_id"] for _, f in entries]


async def test_demo_records_land_exactly_once_and_second_run_adds_only_the_changes(
    settings: Settings, redis: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"stream_maxlen": 100_000})
    configs = demo_configs(records=450, page_size=100)
    async with running_worker(settings):
        await run_bridge_once(settings, configs)
        await wait_until(lambda: drained(redis), what="worker to drain run 1")
        first_ids = {c.name: await stream_batch_ids(redis, c.name) for c in configs}
        await run_bridge_once(settings, configs)
        await wait_until(lambda: drained(redis), what="worker to drain run 2")

    for config in configs:
        connector = create(config)
        assert isinstance(connector, DemoConnector)
        ids = await stream_batch_ids(redis, config.name)
        second_run = ids[len(first_ids[config.name]) :]
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
        # Batch ids: one run start per run, chunks numbered 1..n, never repeated.
        assert len(ids) == len(set(ids))
        runs = {i.rsplit("_", 2)[1] for i in ids}
        assert len(runs) == 2
        numbers = sorted(int(i.rsplit("_", 1)[1]) for i in second_run)
        assert numbers == list(range(1, len(second_run) + 1))
        published_2 = 0
        for _, fields in (await redis.xrange(keys.stream("default", config.name)))[
            len(first_ids[config.name]) :
        ]:
            published_2 += sum(
                len(t.get("records") or []) for t in orjson.loads(fields[b"payload"])["tables"]
            )
        assert published_2 == changes, f"{config.name}: run 2 must publish only the changes"
    all_ids = [i for c in configs for i in await stream_batch_ids(redis, c.name)]
    assert await redis.scard(keys.processed_set("default")) == len(all_ids)


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
