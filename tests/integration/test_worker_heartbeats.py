"""Several workers in one group: heartbeats tell live consumers from dead ones, a dead one's
entries are reclaimed and applied once, and once it holds none it leaves the group."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import orjson
import redis.asyncio as aioredis

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.messages import Batch
from aam_dcl.redis_conn import RedisClient, connect
from dcl_worker.heartbeat import HEARTBEAT_TTL_S
from dcl_worker.sinks.registry import create_sink
from dcl_worker.worker import Worker
from tests.integration.test_worker import GROUP, SlowSink, make_batch, publish
from tests.support import drained, invoke_cli, wait_until

CONNECTORS = ("crm", "erp")
BATCHES = 30
EXPIRY_S = HEARTBEAT_TTL_S + 3  # the dead consumer shows as dead for a while before removal


class RecordingSink(SlowSink):
    """A null sink that records every batch id it is asked to write; ``hang`` never returns
    from a write (a worker stuck mid-batch when it dies)."""

    def __init__(self, written: list[str], *, hang: bool = False) -> None:
        super().__init__(create_sink("null://", "default"), delay_s=0)
        self.written, self.hang = written, hang

    async def write(self, batches: Sequence[Batch]) -> set[str]:
        if self.hang:
            await asyncio.Event().wait()
        self.written += [b.batch_id for b in batches]
        return await self.inner.write(batches)


async def consumers(redis: aioredis.Redis) -> dict[str, set[str]]:
    """Per connector, the names of the group's consumers."""
    out = {}
    for connector in CONNECTORS:
        rows = await redis.xinfo_consumers(keys.stream("default", connector), GROUP)
        out[connector] = {row["name"].decode() for row in rows}
    return out


async def pending_states(redis_url: str) -> dict[str, set[tuple[str, bool]]]:
    """``aam-dcl pending --json``: per connector, (consumer, alive) pairs."""
    result = await invoke_cli(["pending", "--json"], {"REDIS_URL": redis_url})
    assert result.exit_code == 0, result.output
    return {
        report["connector"]: {(c["name"], c["alive"]) for c in report["consumers"]}
        for report in orjson.loads(result.output)
    }


async def test_three_workers_one_dies_its_entries_land_once_it_shows_dead_and_is_removed(
    settings: Settings, redis: aioredis.Redis, redis_url: str
) -> None:
    """Worker C takes entries of both streams and dies mid-batch (its tasks cancelled, no
    clean-up); A and B reclaim them: every batch is written once. ``aam-dcl pending`` then
    shows C dead and A, B alive, and after DCL_CONSUMER_EXPIRY_S C is removed from the group
    (A and B, idle but with heartbeats, stay)."""
    for connector in CONNECTORS:
        await redis.xgroup_create(keys.stream("default", connector), GROUP, id="0", mkstream=True)
        await publish(redis, connector, range(1, BATCHES + 1))
    settings = settings.model_copy(
        update={"claim_idle_ms": 1000, "read_count": 5, "consumer_expiry_s": EXPIRY_S}
    )
    written: list[str] = []
    clients: list[RedisClient] = []
    stopping = asyncio.Event()

    async def start(name: str, *, hang: bool = False) -> tuple[Worker, asyncio.Task[None]]:
        client = await connect(settings)
        clients.append(client)
        worker = Worker(
            settings.model_copy(update={"consumer_name": name}),
            client, RecordingSink(written, hang=hang), stopping,
        )  # fmt: skip
        return worker, asyncio.create_task(worker.run())

    c, c_task = await start("worker-c", hang=True)
    live: list[asyncio.Task[None]] = []
    try:

        async def c_holds_entries_of_both() -> bool:
            summaries = [await redis.xpending(keys.stream("default", n), GROUP) for n in CONNECTORS]
            return all(any(row["name"] == b"worker-c" for row in s["consumers"]) for s in summaries)

        await wait_until(c_holds_entries_of_both, what="C to take entries of both streams")
        for task in [*c.tasks.values(), c_task]:  # dies: no drain, no ack, no heartbeat
            task.cancel()
        await asyncio.gather(*c.tasks.values(), c_task, return_exceptions=True)
        for name in ("worker-a", "worker-b"):
            live.append((await start(name))[1])

        await wait_until(lambda: drained(redis), what="A and B to reclaim and finish everything")
        everything = {make_batch(n, i).batch_id for n in CONNECTORS for i in range(1, BATCHES + 1)}
        assert sorted(written) == sorted(everything), "a batch written twice or never"

        async def c_shown_dead() -> bool:
            states = await pending_states(redis_url)
            return all(
                states[n] == {("worker-a", True), ("worker-b", True), ("worker-c", False)}
                for n in CONNECTORS
            )

        await wait_until(c_shown_dead, timeout_s=HEARTBEAT_TTL_S + 5, what="pending: C dead")

        async def c_removed() -> bool:
            return all(
                names == {"worker-a", "worker-b"} for names in (await consumers(redis)).values()
            )

        await wait_until(c_removed, timeout_s=EXPIRY_S + 10, what="C removed from the group")
    finally:
        stopping.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*live, return_exceptions=True), 30)
        for client in clients:
            await client.aclose()
