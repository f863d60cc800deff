"""Consume throughput as the deployment grows: 1 Redis vs a 3-primary Redis Cluster, 1 to 3
dcl-worker processes, one tenant's connector streams (null:// sink: the transport and the
worker, not a store).

    .venv/bin/python bench/scaling.py [--records 240000] [--connectors 6] [--workers 1,2,3]

The streams are filled first (entries of 200 records, as the bridge writes them), then the
workers are started and timed until every group is drained; the time includes the workers'
start-up (about a second). Private servers on free loopback ports; nothing else is touched.
Figures are of this machine at this moment: on 2 cores, more processes mostly show that
nothing serialises or breaks; the gains of shards and workers need more cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "shared"), str(ROOT / "services"), str(ROOT)]

from aam_dcl import keys  # noqa: E402
from aam_dcl.messages import Batch, encode, entry  # noqa: E402
from aam_dcl.schema import table_batch  # noqa: E402
from aam_dcl_cli.local_server import start_local_server  # noqa: E402
from bench.sink_speed import crm_rows  # noqa: E402
from tests.cluster.local_cluster import LocalCluster  # noqa: E402

TENANT = "bench"
CHUNK = 200


def fill(client: redis.Redis | redis.RedisCluster, connectors: list[str], records: int) -> None:
    rows = crm_rows(records // len(connectors))
    for name in connectors:
        stream = keys.stream(TENANT, name)
        client.xgroup_create(stream, keys.group(TENANT), id="0", mkstream=True)
        pipe = client.pipeline(transaction=False)
        for n, start in enumerate(range(0, len(rows), CHUNK), 1):
            part = table_batch(
                "deals", rows[start : start + CHUNK], primary_key=["id"], max_samples=8
            )
            batch = Batch(keys.batch_id(name, 1, n), name, f"{name}-1", [part], TENANT, 1.0)
            pipe.xadd(stream, entry(encode(batch)))
        pipe.execute()


def drained(client: redis.Redis | redis.RedisCluster, connectors: list[str]) -> bool:
    for name in connectors:
        for group in client.xinfo_groups(keys.stream(TENANT, name)):
            if group["pending"] or group["lag"] != 0:
                return False
    return True


def run_workers(url: str, cluster: bool, workers: int) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "REDIS_URL": url,
        "REDIS_CLUSTER": "true" if cluster else "false",
        "TENANT_ID": TENANT,
        "DCL_SINK_URL": "null://",
        "METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
        "DCL_DISCOVERY_INTERVAL_S": "0.2",
    }
    binary = str(Path(sys.executable).parent / "dcl-worker")
    return [
        subprocess.Popen(
            [binary],
            env={**env, "DCL_CONSUMER_NAME": f"bench-worker-{i}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]


def measure(url: str, cluster: bool, connectors: list[str], records: int, workers: int) -> float:
    client: redis.Redis | redis.RedisCluster = (
        redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    )
    if cluster:
        client.execute_command("FLUSHALL", target_nodes=redis.RedisCluster.PRIMARIES)
    else:
        client.flushall()
    fill(client, connectors, records)
    started = time.perf_counter()
    procs = run_workers(url, cluster, workers)
    try:
        while not drained(client, connectors):
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        client.close()
    return records / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=240_000)
    parser.add_argument("--connectors", type=int, default=6)
    parser.add_argument("--workers", default="1,2,3")
    args = parser.parse_args()
    connectors = [f"crm{i}" for i in range(args.connectors)]
    counts = [int(w) for w in args.workers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="aam-dcl-scaling-"))
    single = start_local_server(work / "single", prefer="redis")
    cluster = LocalCluster(work / "cluster").start(primaries=3)
    print(f"{args.records:,} records, {args.connectors} connector streams, entries of {CHUNK};")
    print("records/s from the workers' start until every group is drained (null:// sink)")
    print(f"  {'workers':>7}  {'1 Redis':>12}  {'3-primary cluster':>18}")
    try:
        for workers in counts:
            one = measure(single.url, False, connectors, args.records, workers)
            three = measure(cluster.url, True, connectors, args.records, workers)
            print(f"  {workers:>7}  {one:>12,.0f}  {three:>18,.0f}")
    finally:
        single.stop()
        cluster.stop()
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
