"""Several bridges: one lease holder per connector, fenced writes, takeover after a pause or a
kill -9 — and every record still lands exactly once, in one run with no gap."""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from aam_bridge.bridge import Bridge
from aam_bridge.connectors.base import ConnectorConfig
from aam_bridge.connectors.registry import create
from aam_bridge.lease import Lease
from aam_bridge.publisher import Publisher
from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.errors import LeaseLost
from aam_dcl.redis_conn import connect
from aam_dcl_cli.local_server import free_port
from tests.integration.test_processes import assert_one_run_with_every_record_once, daemon
from tests.support import sample, wait_until

CONNECTOR = "salesforce"
LABELS = {"tenant": "default", "connector": CONNECTOR}


async def test_a_stale_token_writes_nothing_and_is_counted(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Two leases in turn: the first holder's token, once a second holder took over, neither
    XADDs nor moves the checkpoint; LeaseLost is raised and counted; the new token writes."""
    stream = keys.stream("default", CONNECTOR)
    client = await connect(settings)
    try:
        first = Lease(settings, client, CONNECTOR)
        assert await first.acquire()
        second = Lease(settings, client, CONNECTOR)
        assert not await second.acquire(), "a held lease is not taken"
        publisher = Publisher(settings, client, CONNECTOR)
        await publisher.ensure_group()
        publisher.token = first.token
        await publisher.publish([b"{}"], {"next_chunk": 2})

        await redis.delete(keys.lease("default", CONNECTOR))  # as if it expired
        assert await second.acquire()
        assert second.token is not None
        assert first.token is not None
        assert second.token > first.token
        assert not await first.renew(), "the old holder finds its lease taken"
        before = sample("aam_bridge_fenced_writes_total", **LABELS)
        with pytest.raises(LeaseLost, match="FENCED"):
            await publisher.publish([b"{}", b"{}"], {"next_chunk": 4})
        with pytest.raises(LeaseLost):
            await publisher.save({"next_chunk": 9})
        assert sample("aam_bridge_fenced_writes_total", **LABELS) == before + 2
        assert await redis.xlen(stream) == 1
        assert await redis.hget(keys.sync_state("default", CONNECTOR), "next_chunk") == b"2"

        publisher.token = second.token
        await publisher.publish([b"{}"], {"next_chunk": 3})
        assert await redis.xlen(stream) == 2
        assert await second.renew()
        await second.release()
        assert not await redis.exists(keys.lease("default", CONNECTOR))
    finally:
        await client.aclose()


async def test_a_lease_that_expired_untaken_is_taken_back_by_its_holder(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A holder slow past its TTL, whom nobody replaced, keeps its token on renewal."""
    client = await connect(settings)
    try:
        lease = Lease(settings, client, CONNECTOR)
        assert await lease.acquire()
        token = lease.token
        await redis.delete(keys.lease("default", CONNECTOR))
        assert await lease.renew()
        assert lease.token == token
        assert await redis.get(keys.lease("default", CONNECTOR)) == lease.value.encode()
    finally:
        await client.aclose()


async def test_a_once_connector_finished_by_another_bridge_is_not_run_again(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Two bridges in-process: the second waits for the lease while the first runs the
    connector; taking the lease after the run ended, it sees that run and skips its own."""
    configs = [
        ConnectorConfig(
            CONNECTOR, "demo", "sf-1", None, {"records": 500, "page_size": 20, "page_delay_ms": 20}
        )
    ]
    stopping = asyncio.Event()
    clients = [await connect(settings), await connect(settings)]
    one = Bridge(
        settings.model_copy(update={"bridge_name": "one"}), clients[0],
        [create(c) for c in configs], stopping,
    )  # fmt: skip
    two = Bridge(
        settings.model_copy(update={"bridge_name": "two"}), clients[1],
        [create(c) for c in configs], stopping,
    )  # fmt: skip
    lease_key = keys.lease("default", CONNECTOR)
    try:
        first = asyncio.create_task(one.run())

        async def one_holds() -> bool:
            return (await redis.get(lease_key) or b"").startswith(b"one:")

        await wait_until(one_holds, what="bridge one holds the lease")
        second = asyncio.create_task(two.run())
        await asyncio.wait_for(asyncio.gather(first, second), 60)
    finally:
        stopping.set()
        for client in clients:
            await client.aclose()
    entries = await redis.xrange(keys.stream("default", CONNECTOR))
    ids = [orjson.loads(fields[b"payload"])["batch_id"] for _, fields in entries]
    assert len({i.rsplit("_", 2)[1] for i in ids}) == 1, "the connector ran twice"
    assert not await redis.exists(lease_key), "the last holder freed the lease"


def fenced_writes(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("aam_bridge_fenced_writes_total{") and f'"{CONNECTOR}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("aam_bridge_fenced_writes_total is missing from /metrics")


async def test_two_bridges_paused_and_killed_publish_every_record_once(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """Bridge A holds the lease and is SIGSTOPped past AAM_LEASE_TTL_MS; B takes over and
    resumes the run; A, resumed, has its next write refused (counted on its /metrics) and
    waits; B is killed -9 mid-run; A takes over again and finishes. The stream holds one run,
    chunks 1..N once each, and every record once."""
    records = 1500
    connectors_file = tmp_path / "connectors.yaml"
    connectors_file.write_text(
        "connectors:\n"
        f"  - name: {CONNECTOR}\n"
        "    type: demo\n"
        "    connector_config_id: salesforce-demo-001\n"
        "    schedule: once\n"
        f"    options: {{records: {records}, page_size: 20, page_delay_ms: 25, seed: 5}}\n"
    )
    env = {
        "REDIS_URL": redis_url,
        "AAM_CONNECTORS_FILE": str(connectors_file),
        "AAM_BATCH_CHUNK_SIZE": "20",
        "AAM_REDIS_STREAM_MAXLEN": "1000000",
        "AAM_LEASE_TTL_MS": "1500",
        "METRICS_HOST": "127.0.0.1",
    }
    stream = keys.stream("default", CONNECTOR)
    lease_key = keys.lease("default", CONNECTOR)
    port_a = free_port()
    a = daemon(
        "aam-bridge", {**env, "BRIDGE_NAME": "bridge-a", "METRICS_PORT": str(port_a)},
        tmp_path / "a.log",
    )  # fmt: skip
    b = None
    try:

        async def holder_is(name: str) -> bool:
            value = await redis.get(lease_key)
            return value is not None and value.startswith(name.encode())

        async def entries_at_least(n: int) -> bool:
            return int(await redis.xlen(stream)) >= n

        await wait_until(lambda: holder_is("bridge-a"), what="bridge A holds the lease")
        b = daemon(
            "aam-bridge", {**env, "BRIDGE_NAME": "bridge-b", "METRICS_PORT": "0"},
            tmp_path / "b.log",
        )  # fmt: skip
        await wait_until(lambda: entries_at_least(20), what="A publishing")
        a.send_signal(signal.SIGSTOP)
        at_stop = int(await redis.xlen(stream))
        await wait_until(lambda: holder_is("bridge-b"), what="B takes the lease over")
        await wait_until(lambda: entries_at_least(at_stop + 20), what="B publishing")
        a.send_signal(signal.SIGCONT)

        async def a_was_fenced() -> bool:
            return await asyncio.to_thread(fenced_writes, port_a) >= 1

        await wait_until(a_was_fenced, what="A's late write refused and counted")
        assert b"publish_fenced" in (tmp_path / "a.log").read_bytes()
        assert await holder_is("bridge-b"), "the refused bridge did not take the lease back"
        b.send_signal(signal.SIGKILL)
        b.wait()
        assert await asyncio.to_thread(a.wait, 120) == 0, (tmp_path / "a.log").read_text()[-3000:]
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()

    batches = [orjson.loads(fields[b"payload"]) for _, fields in await redis.xrange(stream)]
    await assert_one_run_with_every_record_once(batches, records, seed=5)
