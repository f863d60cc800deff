"""DCL store faults: an unreachable PostgreSQL, and a batch the store rejects.

PostgreSQL is reached through a loopback TCP proxy so that the test can cut the worker's
connections mid-write and refuse new ones without stopping the server. An unavailable store
must hold the entries pending (never ack, never dead-letter) and be retried with backoff; a
batch the store rejects is retried up to DCL_MAX_DELIVERIES, then dead-lettered, while the
batches behind it keep landing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.messages import Batch
from tests.integration.conftest import wait_until
from tests.integration.tcp_proxy import TcpProxy, tcp_proxy
from tests.integration.test_redis_faults import (
    TENANT,
    assert_bounded,
    count_events,
    crm_batch,
    drained,
    fault_settings,
    inbox,
    pending_count,
    recorded_logs,
    worker_metric,
    worker_task,
    xadd_batches,
)

OUTAGE_S = 3.0


def via(dsn: str, port: int) -> str:
    """``dsn`` pointed at 127.0.0.1:``port`` (the proxy)."""
    parts = urlsplit(dsn)
    creds, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{creds}{at}127.0.0.1:{port}"))


@pytest.fixture
def schema() -> str:
    return f"faults_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def pg_proxy(pg_dsn: str) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(pg_dsn)
    async with tcp_proxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        yield proxy


@pytest.fixture
async def pg(pg_dsn: str, schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct (unproxied) connection to the test database, to watch what the worker writes."""
    con = await asyncpg.connect(pg_dsn)
    yield con
    await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await con.close()


async def pg_inbox(pg: asyncpg.Connection, schema: str) -> dict[str, int]:
    if await pg.fetchval("SELECT to_regclass($1)", f'"{schema}"._dcl_inbox') is None:
        return {}
    rows = await pg.fetch(f'SELECT batch_id, record_count FROM "{schema}"._dcl_inbox')
    return {r["batch_id"]: r["record_count"] for r in rows}


async def worker_in_transaction(pg: asyncpg.Connection) -> bool:
    """A dcl-worker backend is inside a transaction (its write is in progress)."""
    return bool(
        await pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dcl-worker' "
            "AND datname = current_database() AND xact_start IS NOT NULL"
        )
    )


async def test_postgres_unreachable_mid_write_holds_entries_pending_then_lands_all_once(
    redis: aioredis.Redis, redis_url: str, pg_dsn: str, pg_proxy: TcpProxy,
    pg: asyncpg.Connection, schema: str, tmp_path: Path,
) -> None:  # fmt: skip
    """PostgreSQL connections are cut mid-write and new ones refused for ~3 s while batches keep
    arriving: nothing is acked meanwhile (entries stay pending), the worker retries with bounded
    backoff, then every batch lands once and none is dead-lettered."""
    connector = "salesforce"
    settings = fault_settings(
        redis_url, tmp_path, sink_url=f"{via(pg_dsn, pg_proxy.port)}?schema={schema}",
        read_count=10, max_deliveries=2,
    )  # fmt: skip
    batches = [crm_batch(connector, n, records=500) for n in range(1, 121)]
    sink_errors = worker_metric("sink_errors_total", connector)
    processed = worker_metric("batches_total", connector, outcome="processed")
    duplicates = worker_metric("batches_total", connector, outcome="duplicate")
    with recorded_logs() as events:
        async with worker_task(settings):
            producer = asyncio.create_task(trickle(redis, batches[:80], interval_s=0.02))

            async def consuming() -> bool:
                return int(await redis.scard(keys.processed_set(TENANT))) >= 5

            await wait_until(consuming, what="the worker to write batches")
            await wait_until(lambda: worker_in_transaction(pg), what="a write in progress")
            await pg_proxy.refuse()  # cuts the write in flight, refuses reconnects
            cut_at = time.monotonic()
            await asyncio.sleep(0.5)  # let the cut write's own retries settle
            acked_during = int(await redis.scard(keys.processed_set(TENANT)))
            pending_during = await pending_count(redis, connector)
            await asyncio.sleep(OUTAGE_S - (time.monotonic() - cut_at))  # hold the outage
            assert int(await redis.scard(keys.processed_set(TENANT))) == acked_during, (
                "batches were acknowledged while the store was unreachable"
            )
            assert pending_during > 0, "entries must stay pending while the store is down"
            assert await pending_count(redis, connector) > 0
            assert acked_during < 80, "the outage came too late to matter"
            outage_s = time.monotonic() - cut_at
            await pg_proxy.resume()
            await producer
            await xadd_batches(redis, batches[80:])
            await wait_until(lambda: drained(redis, [connector]), 60, "the worker to drain")
        assert count_events(events, "loop_crashed") == 0

    stored = await pg_inbox(pg, schema)
    assert set(stored) == {b.batch_id for b in batches}
    rows = await pg.fetchval(f'SELECT count(*) FROM "{schema}"."{connector}__deals"')
    assert rows == 120 * 500
    assert await redis.scard(keys.processed_set(TENANT)) == 120
    assert await redis.xlen(keys.dead_letter_stream(TENANT, connector)) == 0, "dead-lettered"
    # A write cut after PostgreSQL committed but before its reply arrived is retried and found
    # in the inbox: counted as a duplicate, never applied twice (the row count above).
    assert (
        worker_metric("batches_total", connector, outcome="processed")
        - processed
        + worker_metric("batches_total", connector, outcome="duplicate")
        - duplicates
    ) == 120
    errors = worker_metric("sink_errors_total", connector) - sink_errors
    assert errors > 0, "the worker never saw the outage"
    assert_bounded(errors, outage_s, "sink retries")
    assert_bounded(count_events(events, "sink_unavailable"), outage_s, "sink_unavailable logs")


async def trickle(client: aioredis.Redis, batches: list[Batch], interval_s: float) -> None:
    """XADD ``batches`` one by one, ``interval_s`` apart: a steady stream of work."""
    for batch in batches:
        await xadd_batches(client, [batch])
        await asyncio.sleep(interval_s)


def rejected_batch(connector: str, n: int) -> Batch:
    """A batch whose schema declares ``amount`` integer but carries a huge non-numeric string."""
    batch = crm_batch(connector, n, records=5)
    table = batch.tables[0]
    for column in table.schema.columns:
        if column.name == "amount":
            column.type = "integer"
    assert table.records is not None
    table.records[2]["amount"] = "9" * 40 + "x" * 100_000
    return batch


@pytest.fixture(params=["postgres", "duckdb"])
def store_url(request: pytest.FixtureRequest, pg_dsn: str, schema: str, tmp_path: Path) -> str:
    if request.param == "postgres":
        return f"{pg_dsn}?schema={schema}"
    return f"duckdb://{tmp_path / 'dcl.duckdb'}"


async def stored_batches(settings: Settings, pg: asyncpg.Connection, schema: str) -> set[str]:
    if settings.sink_url.startswith("duckdb://"):
        return set(inbox(settings.sink_url))
    return set(await pg_inbox(pg, schema))


async def test_batch_rejected_by_store_is_dead_lettered_after_max_deliveries_stream_flows_on(
    redis: aioredis.Redis, redis_url: str, store_url: str, pg: asyncpg.Connection, schema: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A batch whose value the store cannot take (a huge string in an integer column of an existing
    table) is tried DCL_MAX_DELIVERIES times, then dead-lettered with error_type sink_rejected and
    the store's message; the batches around it on the same stream all land, once."""
    connector = "hubspot"
    settings = fault_settings(redis_url, tmp_path, sink_url=store_url, read_count=10)
    good_before = [crm_batch(connector, n, records=5) for n in range(1, 6)]
    bad = rejected_batch(connector, 6)
    good_after = [crm_batch(connector, n, records=5) for n in range(7, 31)]
    sink_errors = worker_metric("sink_errors_total", connector)
    dlq = keys.dead_letter_stream(TENANT, connector)
    started = time.monotonic()
    async with worker_task(settings):
        await xadd_batches(redis, good_before)
        await wait_until(lambda: drained(redis, [connector]), what="the table to exist")
        (bad_id,) = await xadd_batches(redis, [bad])
        await xadd_batches(redis, good_after[:10])

        async def dead_lettered() -> bool:
            return int(await redis.xlen(dlq)) >= 1

        await wait_until(dead_lettered, 60, "the rejected batch to be dead-lettered")
        await xadd_batches(redis, good_after[10:])
        await wait_until(lambda: drained(redis, [connector]), 30, "the worker to drain")
    elapsed_s = time.monotonic() - started

    ((_, letter),) = await redis.xrange(dlq)
    fields: dict[str, Any] = {k.decode(): v.decode(errors="replace") for k, v in letter.items()}
    assert fields["error_type"] == "sink_rejected"
    assert fields["batch_id"] == bad.batch_id
    assert fields["original_id"] == bad_id.decode()
    assert int(fields["deliveries"]) == settings.max_deliveries
    assert "amount" in fields["error"], fields["error"]
    good = {b.batch_id for b in [*good_before, *good_after]}
    assert await stored_batches(settings, pg, schema) == good
    processed = {m.decode() for m in await redis.smembers(keys.processed_set(TENANT))}
    assert processed == good
    assert await pending_count(redis, connector) == 0
    errors = worker_metric("sink_errors_total", connector) - sink_errors
    assert errors >= settings.max_deliveries
    assert_bounded(errors, elapsed_s, "sink retries of a rejected batch")
