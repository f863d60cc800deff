"""The daemons as real processes: kill -9 of the bridge mid-run, SIGTERM of the worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import orjson
import redis.asyncio as aioredis

from aam_bridge.connectors.base import ConnectorConfig
from aam_bridge.connectors.demo import DemoConnector
from aam_dcl import keys
from aam_dcl.messages import Batch, encode
from aam_dcl.schema import table_batch
from tests.support import wait_until

BIN = Path(sys.executable).parent


def daemon(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, "METRICS_PORT": "0", "LOG_FORMAT": "json", **env}
    with log.open("ab") as out:
        return subprocess.Popen([str(BIN / name)], env=full_env, stdout=out, stderr=out)


async def assert_one_run_with_every_record_once(
    batches: list[Any], records: int, *, seed: int
) -> None:
    """The demo salesforce connector's ``batches`` (decoded payloads, in stream order) are one
    run: batch ids never repeated, chunks 1..N with no gap, every record exactly once."""
    ids = [b["batch_id"] for b in batches]
    assert len(set(ids)) == len(ids), "a chunk was re-sent"
    assert {i.rsplit("_", 2)[1] for i in ids} == {ids[0].rsplit("_", 2)[1]}, "one run, one start"
    assert [int(i.rsplit("_", 1)[1]) for i in ids] == list(range(1, len(ids) + 1)), "gap in chunks"

    connector = DemoConnector(
        ConnectorConfig("salesforce", "demo", "x", None, {"records": records, "seed": seed})
    )
    for spec in await connector.tables():
        expected = connector.expected_state(spec.name, 0)
        got = [
            tuple(r[k] for k in spec.primary_key)
            for b in batches
            for t in b["tables"]
            if t["name"] == spec.name
            for r in t["records"]
        ]
        assert len(got) == len(expected), (
            f"{spec.name}: {len(got)} published, {len(expected)} expected"
        )
        assert set(got) == set(expected)


async def test_bridge_killed_mid_run_resumes_with_the_same_ids_and_no_gap(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """kill -9 the bridge twice while it publishes; the finished stream has every record once."""
    records = 6000
    connectors_file = tmp_path / "connectors.yaml"
    connectors_file.write_text(
        "connectors:\n"
        "  - name: salesforce\n"
        "    type: demo\n"
        "    connector_config_id: salesforce-demo-001\n"
        "    schedule: once\n"
        f"    options: {{flavor: salesforce, records: {records}, page_size: 70, seed: 3}}\n"
    )
    env = {
        "REDIS_URL": redis_url,
        "AAM_CONNECTORS_FILE": str(connectors_file),
        "AAM_BATCH_CHUNK_SIZE": "50",
        "AAM_REDIS_STREAM_MAXLEN": "1000000",
        "AAM_LEASE_TTL_MS": "2000",  # the killed bridge's lease: the next one waits this long
    }
    stream = keys.stream("default", "salesforce")
    log = tmp_path / "bridge.log"
    for kill_at in (60, 200):
        proc = daemon("aam-bridge", env, log)

        async def published(n: int = kill_at) -> bool:
            return int(await redis.xlen(stream)) >= n

        await wait_until(published, what=f"{kill_at} entries")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = await redis.hgetall(keys.sync_state("default", "salesforce"))
        assert state[b"run_start_ms"], "the run must be marked as unfinished"
    proc = daemon("aam-bridge", env, log)
    assert await asyncio.to_thread(proc.wait, 120) == 0, log.read_text()[-3000:]

    entries = await redis.xrange(stream)
    batches = [orjson.loads(fields[b"payload"]) for _, fields in entries]
    await assert_one_run_with_every_record_once(batches, records, seed=3)


async def test_worker_sigterm_mid_processing_acks_in_flight_and_exits_zero(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    stream = keys.stream("default", "hubspot")
    await redis.xgroup_create(stream, keys.group("default"), id="0", mkstream=True)
    records = [{"id": i, "name": f"deal {i}", "amount": i * 1.5} for i in range(200)]
    pipe = redis.pipeline(transaction=False)
    for n in range(1, 601):
        batch = Batch(
            batch_id=f"hubspot_1_{n}",
            connector="hubspot",
            connector_config_id="hubspot-1",
            tables=[
                table_batch(
                    "deals",
                    [dict(r, id=n * 1000 + r["id"]) for r in records],
                    primary_key=["id"],
                    max_samples=2,
                )
            ],
        )
        pipe.xadd(stream, {"payload": encode(batch)})
    await pipe.execute()
    db = tmp_path / "dcl.duckdb"
    env = {
        "REDIS_URL": redis_url,
        "DCL_SINK_URL": f"duckdb://{db}",
        "DCL_READ_COUNT": "10",
        "DCL_CONSUMER_NAME": "w1",
    }
    log = tmp_path / "worker.log"
    proc = daemon("dcl-worker", env, log)

    async def some_processed() -> bool:
        return int(await redis.scard(keys.processed_set("default"))) >= 20

    await wait_until(some_processed, what="the worker to process batches")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 60) == 0, log.read_text()[-3000:]

    pending = await redis.xpending(stream, keys.group("default"))
    assert pending["pending"] == 0, "in-flight batches must be acked before exit"
    processed = int(await redis.scard(keys.processed_set("default")))
    assert 20 <= processed < 600, "stopped mid-stream"
    with duckdb.connect(str(db), read_only=True) as con:
        (rows,) = con.execute("SELECT count(*) FROM hubspot__deals").fetchone() or (0,)
    assert rows == processed * 200
    assert b"shutdown_requested" in log.read_bytes()
