"""dcl-worker guarantees: discovery, own pending first, reclaim, dead letters, per-id expiry."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
import redis.asyncio as aioredis

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.messages import Batch, encode
from aam_dcl.redis_conn import connect
from aam_dcl.schema import table_batch
from dcl_worker import metrics
from dcl_worker.sinks.base import SchemaReport, Sink, TableReport
from dcl_worker.sinks.registry import create_sink
from dcl_worker.worker import Worker
from tests.integration.conftest import drained, running_worker, wait_until

GROUP = keys.group("default")


def make_batch(
    connector: str, n: int, rows: int = 5, primary_key: Sequence[str] = ("id",)
) -> Batch:
    records = [{"id": n * 1000 + i, "name": f"row {i}", "amount": i * 2.5} for i in range(rows)]
    return Batch(
        batch_id=keys.batch_id(connector, 1700000000000, n),
        connector=connector,
        connector_config_id=f"{connector}-1",
        tables=[table_batch("items", records, primary_key=primary_key, max_samples=2)],
        emitted_at=time.time(),
    )


async def publish(
    client: aioredis.Redis,
    connector: str,
    numbers: range,
    rows: int = 5,
    primary_key: Sequence[str] = ("id",),
) -> None:
    pipe = client.pipeline(transaction=False)
    for n in numbers:
        batch = make_batch(connector, n, rows, primary_key)
        pipe.xadd(keys.stream("default", connector), {"payload": encode(batch)})
    await pipe.execute()


def counter(metric: object, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())  # type: ignore[attr-defined]  # prometheus_client keeps no public getter


async def test_streams_that_appear_while_running_are_discovered(
    settings: Settings, redis: aioredis.Redis
) -> None:
    async with running_worker(settings):
        await publish(redis, "late-connector", range(1, 4))
        await wait_until(lambda: drained(redis), what="the new stream to be consumed")
    assert await redis.scard(keys.processed_set("default")) == 3


async def test_restart_under_the_same_name_first_rereads_its_own_pending_entries(
    settings: Settings, redis: aioredis.Redis
) -> None:
    stream = keys.stream("default", "crm")
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await publish(redis, "crm", range(1, 6))
    # A previous life of this consumer read three entries and died before acking them.
    await redis.xreadgroup(GROUP, settings.consumer_name, {stream: ">"}, count=3)
    assert (await redis.xpending(stream, GROUP))["pending"] == 3
    async with running_worker(settings.model_copy(update={"claim_idle_ms": 3_600_000})):
        await wait_until(lambda: drained(redis), what="own pending entries to be finished")
    assert await redis.scard(keys.processed_set("default")) == 5


async def test_entries_of_a_dead_consumer_are_reclaimed_and_deleted_ones_counted(
    settings: Settings, redis: aioredis.Redis
) -> None:
    stream = keys.stream("default", "crm")
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await publish(redis, "crm", range(1, 11))
    taken = await redis.xreadgroup(GROUP, "dead-consumer", {stream: ">"}, count=10)
    ids = [entry_id for entry_id, _ in taken[0][1]]
    await redis.xdel(stream, ids[0])  # trimmed while pending: XAUTOCLAIM reports it as deleted
    reclaimed_before = counter(metrics.RECLAIMED, "default", "crm")
    deleted_before = counter(metrics.DELETED_PENDING, "default", "crm")
    async with running_worker(settings.model_copy(update={"claim_idle_ms": 200})):
        await wait_until(lambda: drained(redis), what="the dead consumer's entries to be reclaimed")
    assert await redis.scard(keys.processed_set("default")) == 9
    assert counter(metrics.RECLAIMED, "default", "crm") - reclaimed_before == 9
    assert counter(metrics.DELETED_PENDING, "default", "crm") - deleted_before == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"payload": b"{this is not json"}, "malformed_json"),
        ({"payload": b'{"batch_id": "x"}'}, "wrong_shape"),
        ({"data": b"no payload field"}, "wrong_shape"),
        ({"payload": b'{"pad": "' + b"x" * 5000 + b'"}'}, "oversize"),
    ],
)
async def test_poison_is_dead_lettered_with_its_reason_and_the_stream_keeps_flowing(
    settings: Settings, redis: aioredis.Redis, fields: dict[str, bytes], reason: str
) -> None:
    stream = keys.stream("default", "crm")
    await publish(redis, "crm", range(1, 3))
    poison_id = await redis.xadd(stream, fields)
    await publish(redis, "crm", range(3, 5))
    async with running_worker(settings.model_copy(update={"max_payload_bytes": 4096})):
        await wait_until(lambda: drained(redis), what="the stream to drain past the poison")
    assert await redis.scard(keys.processed_set("default")) == 4
    (_, dead), *rest = await redis.xrange(keys.dead_letter_stream("default", "crm"))
    assert rest == []
    assert dead[b"original_id"] == poison_id
    assert dead[b"error_type"] == reason.encode()
    assert dead[b"error"]
    assert dead[b"source_stream"] == stream.encode()
    assert int(dead[b"deliveries"]) == 1


async def test_a_batch_delivered_more_than_max_deliveries_is_dead_lettered(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A batch that kept killing its consumers (delivered 6 times) is contained."""
    stream = keys.stream("default", "crm")
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await publish(redis, "crm", range(1, 2))
    await redis.xreadgroup(GROUP, settings.consumer_name, {stream: ">"})
    for _ in range(5):  # it was delivered again and again, and never acked
        await redis.xreadgroup(GROUP, settings.consumer_name, {stream: "0"})
    async with running_worker(settings.model_copy(update={"max_deliveries": 5})):
        await wait_until(lambda: drained(redis), what="the batch to be dead-lettered")
    (_, dead), *_ = await redis.xrange(keys.dead_letter_stream("default", "crm"))
    assert dead[b"error_type"] == b"max_deliveries"
    assert dead[b"batch_id"] == make_batch("crm", 1).batch_id.encode()
    assert await redis.scard(keys.processed_set("default")) == 0


async def test_every_processed_id_expires_on_its_own_and_the_set_stays_usable(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Ids older than the TTL leave the SET while newer ones stay."""
    settings = settings.model_copy(update={"idempotency_ttl_s": 60})
    processed, expiry = keys.processed_set("default"), keys.processed_expiry("default")
    async with running_worker(settings):
        await publish(redis, "crm", range(1, 4))
        await wait_until(lambda: drained(redis), what="first batches")
        # Pretend these three were processed more than a TTL ago.
        old = {m: 1.0 for m in await redis.zrange(expiry, 0, -1)}
        await redis.zadd(expiry, old)
        await publish(redis, "crm", range(4, 6))
        await wait_until(lambda: drained(redis), what="second batches")
    members = {m.decode() for m in await redis.smembers(processed)}
    assert members == {make_batch("crm", n).batch_id for n in (4, 5)}
    assert 0 < await redis.ttl(processed) <= 60  # the guide's `TTL dcl:processed_batches:x`
    assert await redis.zcard(expiry) == 2


class SlowSink(Sink):
    """A real sink that takes ``delay_s`` before each write: slower than the claim idle time."""

    def __init__(self, inner: Sink, delay_s: float) -> None:
        super().__init__(inner.url, inner.tenant)
        self.inner, self.delay_s, self.writes = inner, delay_s, 0

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await self.inner.ping()

    async def count_rows(self) -> dict[str, int]:
        return await self.inner.count_rows()

    async def tables_report(self) -> list[TableReport]:
        return await self.inner.tables_report()

    async def schema_report(self, table: str) -> SchemaReport | None:
        return await self.inner.schema_report(table)

    async def check(self) -> None:
        await self.inner.check()

    async def write(self, batches: Sequence[Batch]) -> set[str]:
        self.writes += 1
        await asyncio.sleep(self.delay_s)
        return await self.inner.write(batches)


@pytest.fixture
async def pg_sink_url(pg_dsn: str) -> AsyncIterator[str]:
    schema = f"w_{uuid.uuid4().hex[:10]}"
    yield f"{pg_dsn}?schema={schema}"
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def test_a_batch_reclaimed_from_a_slow_consumer_is_applied_once(
    settings: Settings, redis: aioredis.Redis, pg_sink_url: str
) -> None:
    """Consumer A is still writing when B reclaims the same entries: the store has them once."""
    settings = settings.model_copy(update={"sink_url": pg_sink_url, "claim_idle_ms": 300})
    # No primary key: the store appends, so applying a batch twice would show as extra rows.
    await publish(redis, "crm", range(1, 6), rows=10, primary_key=())
    stopping = asyncio.Event()
    slow = SlowSink(create_sink(pg_sink_url, "default"), delay_s=1.5)
    fast = create_sink(pg_sink_url, "default")
    clients = [await connect(settings), await connect(settings)]
    a = Worker(settings.model_copy(update={"consumer_name": "slow-a"}), clients[0], slow, stopping)
    task_a = asyncio.create_task(a.run())
    await wait_until(lambda: _true(slow.writes > 0), what="A to start its slow write")
    b = Worker(settings.model_copy(update={"consumer_name": "fast-b"}), clients[1], fast, stopping)
    task_b = asyncio.create_task(b.run())
    try:
        await wait_until(lambda: drained(redis), what="both workers to finish")
        await wait_until(
            lambda: _true(not any(c.in_flight for c in a.consumers.values())), what="A"
        )
    finally:
        stopping.set()
        await asyncio.gather(task_a, task_b)
        for client in clients:
            await client.aclose()
    conn = await asyncpg.connect(pg_sink_url.split("?")[0])
    try:
        schema = pg_sink_url.split("schema=")[1]
        rows = await conn.fetchval(f'SELECT count(*) FROM "{schema}"."crm__items"')
        distinct = await conn.fetchval(f'SELECT count(DISTINCT id) FROM "{schema}"."crm__items"')
        inbox = await conn.fetchval(f'SELECT count(*) FROM "{schema}"."_dcl_inbox"')
    finally:
        await conn.close()
    assert (rows, distinct, inbox) == (50, 50, 5)
    assert counter(metrics.RECLAIMED, "default", "crm") > 0


async def _true(value: bool) -> bool:
    return value


async def test_an_already_processed_batch_is_acked_as_duplicate_however_often_delivered(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Not dead-lettered: that would tell operators data is missing when it is not."""
    stream = keys.stream("default", "crm")
    await publish(redis, "crm", range(1, 2))
    async with running_worker(settings):
        await wait_until(lambda: drained(redis), what="the batch to be processed")
    await publish(redis, "crm", range(1, 2))  # a re-sent copy of the same batch
    await redis.xreadgroup(GROUP, settings.consumer_name, {stream: ">"})
    for _ in range(3):
        await redis.xreadgroup(GROUP, settings.consumer_name, {stream: "0"})
    duplicates_before = counter(metrics.BATCHES, "default", "crm", "duplicate")
    async with running_worker(settings.model_copy(update={"max_deliveries": 1})):
        await wait_until(lambda: drained(redis), what="the copy to be acked")
    assert await redis.xlen(keys.dead_letter_stream("default", "crm")) == 0
    assert counter(metrics.BATCHES, "default", "crm", "duplicate") == duplicates_before + 1


async def test_a_batch_whose_redis_mark_was_lost_is_not_applied_again(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """The store's inbox, written in the same transaction as the rows, is what makes a write
    exactly once: with the processed set gone, redelivered batches are still duplicates."""
    await publish(redis, "crm", range(1, 4), rows=10, primary_key=())  # append: doubles show
    async with running_worker(settings):
        await wait_until(lambda: drained(redis), what="first delivery")
    await redis.delete(keys.processed_set("default"), keys.processed_expiry("default"))
    await publish(redis, "crm", range(1, 4), rows=10, primary_key=())  # the same batches again
    async with running_worker(settings):
        await wait_until(lambda: drained(redis), what="redelivery")
    sink = create_sink(settings.sink_url, "default")
    await sink.open()
    try:
        assert await sink.count_rows() == {"crm__items": 30}
    finally:
        await sink.close()
    assert await redis.scard(keys.processed_set("default")) == 3  # marked again, as duplicates
