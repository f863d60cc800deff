"""Redis faults: refused connections, restart, kill -9, stream deletion, pause.

Each test runs its own Redis (AOF, fsync always) on a private port so that it can stop, kill
and restart it on the same port, runs the worker (and the bridge) in-process, injects the
fault, and checks that every record landed once, nothing is pending, and the daemons retried
with bounded backoff instead of crashing or spinning. The helpers at the top are shared with
the sink-fault and fuzz tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
import redis.asyncio as aioredis
import structlog

from aam_bridge.connectors.base import ConnectorConfig
from aam_bridge.connectors.demo import DemoConnector
from aam_bridge.main import serve as serve_bridge
from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.messages import Batch, encode
from aam_dcl.schema import table_batch
from aam_dcl_cli.local_server import LocalServer, free_port, start_local_server
from dcl_worker.main import serve as serve_worker
from tests import support
from tests.integration.conftest import demo_configs
from tests.integration.tcp_proxy import tcp_proxy
from tests.support import sample, wait_until

TENANT = "default"
# A loop that retries a dead dependency must back off: fewer than this many retries per
# second of outage (plus a little slack for the retries around its edges).
MAX_RETRIES_PER_OUTAGE_S = 20

# --- helpers shared with test_sink_faults.py and test_fuzz.py ---------------------------------


def worker_metric(name: str, connector: str, tenant: str = TENANT, **labels: str) -> float:
    return sample(f"dcl_worker_{name}", tenant=tenant, connector=connector, **labels)


@contextlib.contextmanager
def recorded_logs() -> Iterator[list[dict[str, Any]]]:
    """Every log event (warning and up, as configured) of the block, still printed as usual."""
    events: list[dict[str, Any]] = []
    old = structlog.get_config()["processors"]

    def record(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        events.append(dict(event_dict))
        return event_dict

    structlog.configure(processors=[*old[:-1], record, old[-1]])
    try:
        yield events
    finally:
        structlog.configure(processors=old)


def count_events(events: list[dict[str, Any]], name: str, **match: Any) -> int:
    return sum(
        1 for e in events if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
    )


def assert_bounded(retries: float, outage_s: float, what: str) -> None:
    limit = MAX_RETRIES_PER_OUTAGE_S * outage_s + 10
    assert retries <= limit, f"{what}: {retries} retries for a {outage_s:.1f}s outage (busy loop?)"


def crm_batch(connector: str, n: int, *, records: int = 50, run: int = 1) -> Batch:
    """Batch ``{connector}_{run}_{n}`` of table ``deals``; ids n*10000+i never collide."""
    rows = [
        {"id": n * 10_000 + i, "name": f"deal {n}-{i}", "amount": n + i / 100, "stage": "won"}
        for i in range(records)
    ]
    return Batch(
        batch_id=f"{connector}_{run}_{n}",
        connector=connector,
        connector_config_id=f"{connector}-001",
        tables=[table_batch("deals", rows, primary_key=["id"], max_samples=2)],
        tenant_id=TENANT,
    )


async def xadd_batches(client: aioredis.Redis, batches: list[Batch]) -> list[bytes]:
    pipe = client.pipeline(transaction=False)
    for batch in batches:
        pipe.xadd(keys.stream(TENANT, batch.connector), {"payload": encode(batch)})
    return [bytes(i) for i in await pipe.execute()]


async def pending_count(client: aioredis.Redis, connector: str, tenant: str = TENANT) -> int:
    try:
        info = await client.xpending(keys.stream(tenant, connector), keys.group(tenant))
    except aioredis.ResponseError:  # no group (yet)
        return 0
    return int(info["pending"])


async def drained(client: aioredis.Redis, connectors: list[str], tenant: str = TENANT) -> bool:
    """``tests.support.drained`` of the named connectors (the fault tests always name them)."""
    return await support.drained(client, tenant, connectors)


@contextlib.asynccontextmanager
async def worker_task(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """An in-process dcl-worker for the block; fails the test if it ended by itself."""
    stopping = asyncio.Event()
    task = asyncio.create_task(serve_worker(settings, stopping), name="dcl-worker")
    try:
        yield task
        assert not task.done(), f"the worker ended on its own: {task}"
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


def fault_settings(redis_url: str, tmp_path: Path, **update: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "sink_url": f"duckdb://{tmp_path / 'dcl.duckdb'}",
        "metrics_port": 0,
        "metrics_host": "127.0.0.1",
        "discovery_interval_s": 0.2,
        "block_ms": 200,
        "consumer_name": "fault-worker",
        "log_format": "console",
        "shutdown_grace_s": 10,
        **update,
    }
    return Settings(**values)


# --- this file's fixtures and checks ------------------------------------------------------------


@pytest.fixture
def redis_dir(tmp_path: Path) -> Path:
    return tmp_path / "redis"


@dataclass
class RedisHandle:
    """This test's own server; ``restart`` brings it back on the same port from its AOF."""

    directory: Path
    port: int
    server: LocalServer | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.server = await asyncio.to_thread(
            start_local_server, self.directory, port=self.port, appendonly=True, prefer="redis"
        )

    async def stop(self, *, kill: bool = False) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.stop, kill)

    async def outage(self, down_s: float, *, kill: bool = False) -> float:
        """Stop (or kill -9) the server, hold the outage, restart; returns the outage's length."""
        started = time.monotonic()
        await self.stop(kill=kill)
        await asyncio.sleep(down_s)  # the outage itself: nothing to poll for
        await self.start()
        return time.monotonic() - started


@pytest.fixture
async def own_redis(redis_dir: Path) -> AsyncIterator[RedisHandle]:
    """A private, not yet started, Redis with AOF on a free port (stopped at the end)."""
    handle = RedisHandle(redis_dir, free_port())
    try:
        yield handle
    finally:
        await handle.stop()


@pytest.fixture
async def client(own_redis: RedisHandle) -> AsyncIterator[aioredis.Redis]:
    """A test-side client of ``own_redis`` (reconnects after restarts on its own)."""
    c = aioredis.Redis.from_url(own_redis.url, socket_connect_timeout=2)
    yield c
    await c.aclose()


def store_rows(sink_url: str, table: str, pk: list[str]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """A DuckDB table's rows by primary key; fails on a duplicate key."""
    with duckdb.connect(sink_url.removeprefix("duckdb://"), read_only=True) as con:
        cur = con.execute(f'SELECT * FROM "{table}"')
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    by_key = {tuple(r[k] for k in pk): r for r in rows}
    assert len(by_key) == len(rows), f"duplicate primary keys in {table}"
    return by_key


def inbox(sink_url: str) -> dict[str, int]:
    """batch id -> record count, from the DuckDB store's inbox."""
    with duckdb.connect(sink_url.removeprefix("duckdb://"), read_only=True) as con:
        rows = con.execute("SELECT batch_id, record_count FROM _dcl_inbox").fetchall()
    return {str(b): int(n) for b, n in rows}


async def assert_demo_landed_once(
    settings: Settings, configs: list[ConnectorConfig], generations: int
) -> int:
    """The store holds exactly the connectors' expected rows; returns the record count."""
    total = 0
    for config in configs:
        connector = DemoConnector(config)
        for spec in await connector.tables():
            expected = connector.expected_state(spec.name, generations)
            table = f"{config.name}__{spec.name}"
            rows = store_rows(settings.sink_url, table, list(spec.primary_key))
            missing = set(expected) - set(rows)
            extra = set(rows) - set(expected)
            assert not missing, f"{table}: {len(missing)} rows missing"
            assert not extra, f"{table}: {len(extra)} unexpected rows"
            total += len(expected)
    return total


def assert_chunks_contiguous(batch_ids: list[str]) -> None:
    """Per connector and run: chunks 1..n, no gap and none re-sent under a new id."""
    runs: dict[tuple[str, str], list[int]] = {}
    for batch_id in batch_ids:
        connector, run, chunk = batch_id.rsplit("_", 2)
        runs.setdefault((connector, run), []).append(int(chunk))
    for (connector, run), chunks in runs.items():
        assert sorted(chunks) == list(range(1, len(chunks) + 1)), (connector, run)


async def consumer_blocked(client: aioredis.Redis) -> bool:
    """Some client (the worker) sits in a blocking XREADGROUP."""
    return any(
        c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
        for c in await client.client_list()
    )


async def run_demo_through_outage(
    own_redis: RedisHandle, client: aioredis.Redis, tmp_path: Path, *, kill: bool, start_late: bool
) -> None:
    """Worker and bridge run a demo sync while Redis goes away mid-stream and comes back."""
    configs = demo_configs(records=1200, page_size=100)[:2]
    connectors = [c.name for c in configs]
    settings = fault_settings(
        own_redis.url, tmp_path, batch_chunk_size=10, stream_maxlen=60, read_count=20
    )
    redis_errors = {c: worker_metric("redis_errors_total", c) for c in connectors}
    processed = {c: worker_metric("records_total", c, outcome="processed") for c in connectors}
    failed_runs = {c: sample("aam_bridge_sync_runs_total", tenant=TENANT, connector=c,
                             status="failed") for c in connectors}  # fmt: skip
    outage_s = 0.0
    with recorded_logs() as events:
        if not start_late:
            await own_redis.start()
        async with worker_task(settings):
            bridge = asyncio.create_task(serve_bridge(settings, asyncio.Event(), configs))
            if start_late:
                await asyncio.sleep(2.0)  # the outage before Redis starts: a refused port
                assert not bridge.done(), bridge
                outage_s += 2.0
                await own_redis.start()

            async def mid_stream() -> bool:
                for connector in connectors:
                    if not await client.exists(keys.stream(TENANT, connector)):
                        return False
                    groups = await client.xinfo_groups(keys.stream(TENANT, connector))
                    if not groups or (groups[0]["entries-read"] or 0) < 10:
                        return False
                return True

            await wait_until(mid_stream, what="both streams to be consumed")
            assert not bridge.done(), "the sync ended before the fault: make it longer"
            outage_s += await own_redis.outage(3.0, kill=kill)
            await asyncio.wait_for(bridge, 90)
            await wait_until(lambda: drained(client, connectors), 60, "the worker to drain")
            assert count_events(events, "loop_crashed") == 0

    total = await assert_demo_landed_once(settings, configs, 0)
    stored = inbox(settings.sink_url)
    assert sum(stored.values()) == total, "a batch is missing from, or extra in, the store"
    assert_chunks_contiguous(list(stored))
    assert await client.scard(keys.processed_set(TENANT)) == len(stored)
    got = sum(worker_metric("records_total", c, outcome="processed") - processed[c]
              for c in connectors)  # fmt: skip
    assert got == total, "a batch was applied more than once (or not at all)"
    seen = 0.0
    for connector in connectors:
        assert await client.xlen(keys.dead_letter_stream(TENANT, connector)) == 0
        assert await pending_count(client, connector) == 0
        errors = worker_metric("redis_errors_total", connector) - redis_errors[connector]
        seen += errors
        assert_bounded(errors, outage_s, f"worker consumer {connector}")
        runs = sample("aam_bridge_sync_runs_total", tenant=TENANT, connector=connector,
                      status="failed") - failed_runs[connector]  # fmt: skip
        assert_bounded(runs, outage_s, f"bridge connector {connector}")
    # One reader serves every stream: a command that failed was one stream's handling or the
    # shared read, so the worker as a whole (not each stream) must have seen the outage.
    assert seen > 0, "the worker never saw the outage"
    assert_bounded(count_events(events, "discovery_failed"), outage_s, "worker discovery")


# --- the tests --------------------------------------------------------------------------------


async def test_refused_at_startup_and_restart_mid_run_reconnects_and_lands_everything_once(
    own_redis: RedisHandle, client: aioredis.Redis, tmp_path: Path
) -> None:
    """Worker and bridge start while Redis refuses connections, then Redis stops for ~3 s mid-run
    and restarts from its AOF: both reconnect with bounded backoff, every record lands once."""
    await run_demo_through_outage(own_redis, client, tmp_path, kill=False, start_late=True)


async def test_redis_kill_9_mid_stream_and_aof_restart_lands_everything_once(
    own_redis: RedisHandle, client: aioredis.Redis, tmp_path: Path
) -> None:
    """Redis is killed with SIGKILL mid-stream and restarted from its AOF after ~3 s: no record
    is lost or applied twice, nothing stays pending, and the retries were bounded."""
    await run_demo_through_outage(own_redis, client, tmp_path, kill=True, start_late=False)


async def _delete_stream_then_republish(
    own_redis: RedisHandle, client: aioredis.Redis, tmp_path: Path, *, atomic: bool
) -> list[dict[str, Any]]:
    """Run 1 lands; the stream is deleted under the blocked worker; three of run 1's entries are
    re-sent with plain XADD (recreating the stream) and the bridge publishes run 2."""
    await own_redis.start()
    configs = demo_configs(records=300, page_size=100)[:1]
    connector = configs[0].name
    stream = keys.stream(TENANT, connector)
    settings = fault_settings(own_redis.url, tmp_path, batch_chunk_size=25, stream_maxlen=10_000)
    duplicates = worker_metric("batches_total", connector, outcome="duplicate")
    with recorded_logs() as events:
        async with worker_task(settings):
            await asyncio.wait_for(serve_bridge(settings, asyncio.Event(), configs), 60)
            await wait_until(lambda: drained(client, [connector]), what="run 1 to drain")
            run_1 = [f[b"payload"] for _, f in await client.xrange(stream)]
            await wait_until(lambda: consumer_blocked(client), what="the worker to block")
            pipe = client.pipeline(transaction=atomic)
            pipe.delete(stream)
            for payload in run_1[:3]:
                pipe.xadd(stream, {"payload": payload})
            await pipe.execute()
            await asyncio.wait_for(serve_bridge(settings, asyncio.Event(), configs), 60)
            await wait_until(lambda: drained(client, [connector]), what="run 2 to drain")
            await wait_until(
                lambda: _equal(worker_metric("batches_total", connector, outcome="duplicate"),
                               duplicates + 3),
                what="the three re-sent batches to be dropped as duplicates",
            )  # fmt: skip

    await assert_demo_landed_once(settings, configs, 1)
    stored = inbox(settings.sink_url)
    run_1_ids = {orjson.loads(p)["batch_id"] for p in run_1}
    assert run_1_ids < set(stored)
    assert_chunks_contiguous(list(stored))
    assert await client.scard(keys.processed_set(TENANT)) == len(stored)
    assert await client.xlen(keys.dead_letter_stream(TENANT, connector)) == 0
    assert await pending_count(client, connector) == 0
    return events


async def _equal(a: float, b: float) -> bool:
    return a == b


async def test_stream_deleted_while_worker_blocks_then_recreated_by_xadd_gets_nogroup_and_recovers(
    own_redis: RedisHandle, client: aioredis.Redis, tmp_path: Path
) -> None:
    """DEL of the stream and XADDs that recreate it (one MULTI) while the worker blocks on it: the
    worker gets NOGROUP, re-creates the group at 0, drops the re-sent batch ids as duplicates and
    consumes the bridge's next run — without its loop crashing."""
    events = await _delete_stream_then_republish(own_redis, client, tmp_path, atomic=True)
    assert count_events(events, "group_missing") >= 1, "the worker never saw NOGROUP"
    assert count_events(events, "loop_crashed") == 0


async def test_stream_deleted_while_worker_blocks_is_survived_without_a_loop_crash(
    own_redis: RedisHandle, client: aioredis.Redis, tmp_path: Path
) -> None:
    """A plain DEL of the stream while the worker blocks on it (Redis answers the blocked read with
    'UNBLOCKED the stream key no longer exists'), then new XADDs and the bridge's next run: the
    worker re-creates the group, drops the re-sent ids as duplicates, and its loop never crashes."""
    events = await _delete_stream_then_republish(own_redis, client, tmp_path, atomic=False)
    crashes = [e for e in events if e.get("event") == "loop_crashed"]
    assert not crashes, f"the consumer loop crashed on the deleted stream: {crashes[0]}"


async def test_client_pause_during_processing_times_out_then_recovers_without_loss(
    own_redis: RedisHandle, client: aioredis.Redis, tmp_path: Path
) -> None:
    """CLIENT PAUSE 3000 ALL while the worker processes a backlog and more is added: commands
    stall, then everything is processed once, nothing is pending, no loop crashed."""
    await own_redis.start()
    connector = "hubspot"
    settings = fault_settings(own_redis.url, tmp_path, read_count=10)
    batches = [crm_batch(connector, n, records=100) for n in range(1, 301)]
    admin = aioredis.Redis.from_url(own_redis.url)
    redis_errors = worker_metric("redis_errors_total", connector)
    with recorded_logs() as events:
        async with worker_task(settings):
            await xadd_batches(client, batches[:200])

            async def processing() -> bool:
                return int(await client.scard(keys.processed_set(TENANT))) >= 10

            await wait_until(processing, what="the worker to start processing")
            await admin.execute_command("CLIENT", "PAUSE", 3000, "ALL")
            paused_at = time.monotonic()
            await xadd_batches(client, batches[200:])  # waits out the pause
            assert time.monotonic() - paused_at >= 2.5, "CLIENT PAUSE did not hold"
            await wait_until(lambda: drained(client, [connector]), 60, "the worker to drain")
            assert count_events(events, "loop_crashed") == 0
    await admin.aclose()

    stored = inbox(settings.sink_url)
    assert set(stored) == {b.batch_id for b in batches}
    rows = store_rows(settings.sink_url, f"{connector}__deals", ["id"])
    assert len(rows) == 300 * 100
    assert await client.scard(keys.processed_set(TENANT)) == 300
    assert await client.xlen(keys.dead_letter_stream(TENANT, connector)) == 0
    assert_bounded(worker_metric("redis_errors_total", connector) - redis_errors, 3.0, "consumer")


async def test_startup_against_a_missing_server_never_crashes_the_worker(
    own_redis: RedisHandle, client: aioredis.Redis, tmp_path: Path
) -> None:
    """A worker whose Redis is down for ~3 s at start-up stays alive, retries discovery with
    bounded backoff, then discovers and consumes the stream once Redis is up."""
    settings = fault_settings(own_redis.url, tmp_path)
    with recorded_logs() as events:
        async with worker_task(settings):
            await asyncio.sleep(3.0)  # the outage itself
            await own_redis.start()
            await xadd_batches(client, [crm_batch("dynamics", n) for n in range(1, 11)])
            await wait_until(lambda: drained(client, ["dynamics"]), 30, "the worker to drain")
    assert count_events(events, "loop_crashed") == 0
    assert 1 <= count_events(events, "discovery_failed") <= 3 * 5 + 10
    assert len(inbox(settings.sink_url)) == 10


async def test_xreadgroup_reply_lost_in_flight_is_not_trimmed_while_the_stream_keeps_flowing(
    own_redis: RedisHandle, client: aioredis.Redis, tmp_path: Path
) -> None:
    """The worker's connection drops while an XREADGROUP reply is in flight (Redis delivered the
    entries to the worker's consumer; the worker never saw them) and the bridge keeps publishing
    well past MAXLEN: those entries are still processed once; none is trimmed before it lands."""
    await own_redis.start()
    configs = demo_configs(records=600, page_size=100)[:1]
    connector = configs[0].name
    async with tcp_proxy("127.0.0.1", own_redis.port) as proxy:
        bridge_settings = fault_settings(
            own_redis.url, tmp_path, batch_chunk_size=10, stream_maxlen=60, read_count=10,
            claim_idle_ms=5_000,
        )  # fmt: skip
        settings = bridge_settings.model_copy(
            update={"redis_url": f"redis://127.0.0.1:{proxy.port}/0"}  # the worker's side
        )
        with recorded_logs() as events:
            async with worker_task(settings):
                bridge = asyncio.create_task(
                    serve_bridge(bridge_settings, asyncio.Event(), configs)
                )

                async def consuming() -> bool:
                    return int(await client.scard(keys.processed_set(TENANT))) >= 5

                await wait_until(consuming, what="the worker to process batches")
                proxy.lose_reply_containing(b"batch_id")  # the next read's reply is lost
                await asyncio.wait_for(bridge, 60)
                assert proxy.replies_lost == 1
                await wait_until(lambda: drained(client, [connector]), 60, "the worker to drain")
        deleted = [e for e in events if e.get("event") == "pending_entries_deleted"]
        assert not deleted, f"pending entries were trimmed before they were processed: {deleted}"

    await assert_demo_landed_once(settings, configs, 0)
    assert_chunks_contiguous(list(inbox(settings.sink_url)))


async def test_entries_pending_at_a_dead_consumer_are_not_trimmed_before_reclaim(
    own_redis: RedisHandle, client: aioredis.Redis, tmp_path: Path
) -> None:
    """A consumer takes entries and dies for good (kill -9, never back under its name) while a
    live worker acks everything newer and the bridge publishes far past MAXLEN: the dead
    consumer's entries must survive until they are reclaimed, so all lands once."""
    await own_redis.start()
    configs = demo_configs(records=600, page_size=100)[:1]
    connector = configs[0].name
    stream, group = keys.stream(TENANT, connector), keys.group(TENANT)
    settings = fault_settings(
        own_redis.url, tmp_path, batch_chunk_size=10, stream_maxlen=60, read_count=10,
        claim_idle_ms=3_000,
    )  # fmt: skip
    await client.xgroup_create(stream, group, id="0", mkstream=True)
    bridge = asyncio.create_task(serve_bridge(settings, asyncio.Event(), configs))

    async def published() -> bool:
        return int(await client.xlen(stream)) >= 10

    await wait_until(published, what="the first entries")
    reply = await client.xreadgroup(group, "dead-worker", {stream: ">"}, count=10)
    held = [entry_id for entry_id, _ in reply[0][1]]
    with recorded_logs() as events:
        async with worker_task(settings):
            await asyncio.wait_for(bridge, 60)
            await wait_until(lambda: drained(client, [connector]), 60, "the worker to drain")
    deleted = [e for e in events if e.get("event") == "pending_entries_deleted"]
    assert not deleted, f"{len(held)} entries held by a dead consumer were trimmed: {deleted}"
    await assert_demo_landed_once(settings, configs, 0)
