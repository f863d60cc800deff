"""Each wire format has one owner and survives a round trip through real Redis.

- the stream entry: ``messages.entry`` / ``messages.decode``,
- the dead-letter entry: written by the worker's finalize script, read by ``aam-dcl dlq``,
- the batch id: ``keys.batch_id`` / ``keys.parse_batch_id``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis.asyncio as aioredis

from aam_dcl import keys, messages
from aam_dcl.dead_letter import DeadLetter
from aam_dcl.schema import table_batch
from aam_dcl_cli.ops import get_dead_letter, replay_dead_letters
from dcl_worker.finalize import Finalizer

TENANT, CONNECTOR = "acme", "hub_spot"
MAX = 1024 * 1024


async def test_stream_entry_round_trip(redis: aioredis.Redis) -> None:
    batch = messages.Batch(
        batch_id=keys.batch_id(CONNECTOR, 1762299908994, 3),
        connector=CONNECTOR,
        connector_config_id="hub-1",
        tables=[
            table_batch("deals", [{"id": "1", "amount": 2.5}], primary_key=["id"], max_samples=1)
        ],
        tenant_id=TENANT,
        emitted_at=1762299909.5,
    )
    stream = keys.stream(TENANT, CONNECTOR)
    await redis.xadd(stream, messages.entry(messages.encode(batch)))
    ((_, fields),) = await redis.xrange(stream)
    assert set(fields) == {messages.PAYLOAD_FIELD}
    decoded = messages.decode(fields, MAX)
    assert decoded == batch
    assert decoded.fingerprint == messages.payload_fingerprint(
        fields[messages.PAYLOAD_FIELD], {"emitted_at": batch.emitted_at}
    )


async def test_dead_letter_round_trip_through_finalize_and_replay(redis: aioredis.Redis) -> None:
    stream = keys.stream(TENANT, CONNECTOR)
    original = await redis.xadd(stream, messages.entry(b"\xff not json"))
    dead = DeadLetter(
        original_id=original.decode(),
        source_stream=stream,
        batch_id="hub_spot_1_1",
        payload=b"\xff not json",
        deliveries=3,
        error_type="malformed_json",
        error="x" * 5000,
        failed_at_ms=1762299908994,
        consumer="worker-1",
    )
    await redis.xgroup_create(stream, keys.group(TENANT), id="0")
    await redis.xreadgroup(keys.group(TENANT), "worker-1", {stream: ">"})  # pending, as read
    finalize = Finalizer(redis, TENANT, CONNECTOR, ttl_s=60)
    assert await finalize.settle([original], [dead]) == 1
    assert await finalize.settle([original], [dead]) == 0, "a retry writes no second copy"

    ((entry_id, _),) = await redis.xrange(keys.dead_letter_stream(TENANT, CONNECTOR))
    read = await get_dead_letter(redis, TENANT, CONNECTOR, entry_id.decode())
    assert read.entry_id == entry_id.decode()
    assert read.connector == CONNECTOR
    read.entry_id, read.connector = "", ""
    assert read == replace(dead, error="x" * 2000)  # the error is cut
    assert read.to_json()["payload"] == "\\xff not json"

    change = await replay_dead_letters(redis, TENANT, CONNECTOR, None)
    assert change.done == [entry_id.decode()]
    replayed = await redis.xrange(stream, min=change.new_ids[0], max=change.new_ids[0])
    assert messages.payload_of(replayed[0][1]) == b"\xff not json"  # byte for byte


@pytest.mark.parametrize(
    ("connector", "run_start_ms", "chunk"),
    [("salesforce", 1762299908994, 1), ("my_conn_2", 0, 999_999), ("a", 2**62, 0)],
)
def test_batch_id_round_trip(connector: str, run_start_ms: int, chunk: int) -> None:
    made = keys.batch_id(connector, run_start_ms, chunk)
    assert keys.parse_batch_id(made) == (connector, run_start_ms, chunk)


@pytest.mark.parametrize("other", ["", "x", "sf_1", "sf_+1_2", "sf_1_٣", "sf__1"])
def test_other_producers_batch_ids_do_not_parse(other: str) -> None:
    assert keys.parse_batch_id(other) is None
