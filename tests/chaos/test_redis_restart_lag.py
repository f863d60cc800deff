"""Found by the chaos suite: after Redis restarts from its AOF, XINFO GROUPS ``lag`` can stay
overstated for good, and the bridge's back-pressure (lag + pending) then never lets go.

Why (Redis 7.0): XREADGROUP is written to the AOF as ``XCLAIM ... LASTID <id>`` without the
group's entries-read counter. Replaying it moves ``last-delivered-id`` but not
``entries-read``, which keeps the value of the last AOF rewrite; ``lag = entries-added -
entries-read`` then counts every entry read since that rewrite as unread, forever.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis.asyncio as aioredis

from aam_dcl import keys
from tests.chaos.harness import ChaosRedis, Daemon, redis_client
from tests.support import drained, wait_until

CHUNKS = 900  # entries read after the AOF rewrite: more than the back-pressure limit (800)
DEADLINE_S = 60.0
STREAM = keys.stream("default", "salesforce")


async def run_bridge(bridge: Daemon, what: str) -> None:
    bridge.start()
    rc = await asyncio.to_thread(bridge.wait, DEADLINE_S)
    assert rc == 0, f"{what}: aam-bridge exited with {rc}\n{bridge.tail()}"


async def rewritten(client: aioredis.Redis) -> bool:
    info = await client.info("persistence")
    return not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]


async def test_bridge_publishes_after_redis_restart_when_entries_were_read_since_aof_rewrite(
    tmp_path: Path,
) -> None:
    """Drain 900 entries after an AOF rewrite, kill -9 Redis, restart it: run 3 must finish."""
    deadline = time.monotonic() + DEADLINE_S

    def left_s() -> float:
        return deadline - time.monotonic()

    redis = ChaosRedis(tmp_path / "redis")
    client = redis_client(redis.url)
    connectors = tmp_path / "connectors.yaml"
    connectors.write_text(
        "connectors:\n  - name: salesforce\n    type: demo\n    schedule: once\n"
        # 3 tables: 9000 records = 900 chunks of 10 in every run (later runs change every row)
        "    options: {records: 3000, seed: 5, change_rate: 1.0, new_rate: 0.0}\n"
    )
    common = {"REDIS_URL": redis.url, "METRICS_PORT": "0", "LOG_FORMAT": "json"}
    bridge_env = {**common, "AAM_CONNECTORS_FILE": str(connectors), "AAM_BATCH_CHUNK_SIZE": "10"}
    worker = Daemon(
        "dcl-worker",
        "worker",
        {**common, "DCL_SINK_URL": "null://", "DCL_CONSUMER_NAME": "w1", "DCL_BLOCK_MS": "200"},
        tmp_path / "worker.log",
    )
    bridge = Daemon("aam-bridge", "bridge", bridge_env, tmp_path / "bridge.log")

    async def acked() -> bool:
        """Every entry delivered to the group and acknowledged, judged without ``lag``."""
        return await drained(client, connectors=["salesforce"], trust_lag=False)

    try:
        worker.start()
        await run_bridge(bridge, "run 1")  # 900 entries, read and acknowledged
        await wait_until(acked, left_s(), "the worker to drain run 1")
        # An AOF rewrite (Redis does one on its own as the file grows): the group and its
        # entries-read counter (900) are now in the AOF's base.
        await client.bgrewriteaof()
        await wait_until(lambda: rewritten(client), left_s(), "the AOF rewrite")
        await run_bridge(bridge, "run 2")  # 900 more entries (every row changes)
        await wait_until(acked, left_s(), "the worker to drain run 2")
        assert (await client.xinfo_groups(STREAM))[0]["lag"] == 0

        redis.kill9()
        redis.restart()
        await wait_until(acked, left_s(), "the worker to drain after the restart")
        lag = (await client.xinfo_groups(STREAM))[0]["lag"]

        bridge.start()  # run 3: nothing is unread, so nothing should hold it back
        rc = await asyncio.to_thread(bridge.wait, 30)
        assert rc is not None, (
            f"run 3 did not finish within 30 s: XINFO GROUPS reports lag={lag} while every "
            "entry is delivered and acknowledged, and the bridge's back-pressure waits on it\n"
            + bridge.tail(4)
        )
        assert rc == 0, bridge.tail()
    finally:
        for daemon in (bridge, worker):
            if daemon.running:
                daemon.kill9()
        await client.aclose()
        redis.stop()
