"""A worker killed right after XREADGROUP leaves its entries pending; when they are handled
later, after another worker has already applied a newer run's version of the same rows, the
store must keep the newer version (the final state is the connector's latest state).

Real processes, in the order a kill -9 produces: worker A reads run 1's entries and dies
(simulated by reading them as A from here), the bridge publishes run 2 (every row changes),
worker B applies run 2, then A comes back under its name and re-reads its own pending entries.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aam_bridge.connectors.base import ConnectorConfig
from aam_dcl import keys
from tests.chaos import verify
from tests.chaos.harness import ChaosRedis, Daemon, redis_client
from tests.support import wait_until

DEADLINE_S = 60.0
RECORDS = 50  # per table; 3 tables, so one entry per table and run with chunks of 200
STREAM = keys.stream("default", "salesforce")
GROUP = keys.group("default")


async def test_entries_of_a_dead_worker_handled_after_a_newer_run_do_not_roll_rows_back(
    tmp_path: Path,
) -> None:
    deadline = time.monotonic() + DEADLINE_S
    redis = ChaosRedis(tmp_path / "redis")
    client = redis_client(redis.url)
    options = {"records": RECORDS, "seed": 9, "change_rate": 1.0, "new_rate": 0.0}
    connectors = tmp_path / "connectors.yaml"
    connectors.write_text(
        "connectors:\n  - name: salesforce\n    type: demo\n    schedule: once\n"
        f"    options: {options}\n".replace("'", "")
    )
    db = tmp_path / "dcl.duckdb"
    common = {"REDIS_URL": redis.url, "METRICS_PORT": "0", "LOG_FORMAT": "json"}
    worker_env = {**common, "DCL_SINK_URL": f"duckdb://{db}", "DCL_BLOCK_MS": "200"}
    bridge = Daemon(
        "aam-bridge", "bridge", {**common, "AAM_CONNECTORS_FILE": str(connectors)},
        tmp_path / "bridge.log",
    )  # fmt: skip
    worker_a = Daemon(
        "dcl-worker", "a", {**worker_env, "DCL_CONSUMER_NAME": "a"}, tmp_path / "a.log"
    )
    worker_b = Daemon(
        "dcl-worker", "b", {**worker_env, "DCL_CONSUMER_NAME": "b"}, tmp_path / "b.log"
    )

    async def settled(pending: int) -> bool:
        info = await client.xinfo_stream(STREAM)
        group = (await client.xinfo_groups(STREAM))[0]
        return bool(
            group["pending"] == pending and group["last-delivered-id"] == info["last-generated-id"]
        )

    async def poll(what: str, pending: int) -> None:
        await wait_until(lambda: settled(pending), deadline - time.monotonic(), what)

    try:
        bridge.start()  # run 1
        assert await asyncio.to_thread(bridge.wait, DEADLINE_S) == 0, bridge.tail()
        # Worker A reads run 1 and is killed before writing: its entries stay pending on A.
        read = await client.xreadgroup(GROUP, "a", {STREAM: ">"}, count=100)
        run_1 = len(read[0][1])
        bridge.start()  # run 2: every row gets a newer version
        assert await asyncio.to_thread(bridge.wait, DEADLINE_S) == 0, bridge.tail()

        worker_b.start()  # applies run 2 (A's entries are not idle long enough to reclaim)
        await poll("worker b to apply run 2", pending=run_1)
        assert worker_b.terminate() == 0, worker_b.tail()
        worker_a.start()  # back under its name: first re-reads its own pending run-1 entries
        await poll("worker a to finish its pending entries", pending=0)
        assert worker_a.terminate() == 0, worker_a.tail()
    finally:
        for daemon in (bridge, worker_a, worker_b):
            if daemon.running:
                daemon.kill9()
        await client.aclose()
        redis.stop()

    config = ConnectorConfig("salesforce", "demo", "salesforce-default", None, options)
    expected = await verify.expected_state([config], {"salesforce": 2})
    verdict = verify.compare(expected, verify.read_duckdb(db))
    assert verdict.missing == verdict.duplicated == verdict.unexpected == 0, verdict.samples
    assert verdict.mismatched == 0, (
        f"{verdict.mismatched} of {verdict.expected_rows} rows hold run 1's version after "
        "run 2 was applied:\n" + "\n".join(verdict.samples[:3])
    )
