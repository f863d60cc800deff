"""The bridge keeps to AAM_MAX_PAYLOAD_BYTES, so the worker never dead-letters its entries as
oversize: a chunk too large is split (the same way again on a resume), and a record too
large on its own is rejected, counted and logged, and the run goes on past it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from aam_bridge.connectors.base import Connector, ConnectorConfig, Page, TableSpec
from aam_bridge.sync import SyncRunner
from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.messages import decode, payload_fingerprint
from aam_dcl.redis_conn import connect
from tests.integration.conftest import running_worker
from tests.integration.test_redis_faults import recorded_logs
from tests.support import drained, sample, wait_until

LIMIT = 1024


class Texts(Connector):
    """One table ``items``: record i is ``{"id": i, "text": <sizes[i] x's>}``, pages of
    ``page`` records."""

    type_name = "texts"

    def __init__(self, sizes: list[int], page: int = 10) -> None:
        super().__init__(ConnectorConfig("texts", "texts", "texts-1", None, {}))
        self.sizes = sizes
        self.page = page

    async def tables(self) -> list[TableSpec]:
        return [TableSpec("items", ("id",))]

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        for start in range(int(cursor or 0), len(self.sizes), self.page):
            end = min(start + self.page, len(self.sizes))
            yield Page(
                [{"id": i, "text": "x" * self.sizes[i]} for i in range(start, end)], str(end)
            )


async def stream_entries(redis: aioredis.Redis) -> list[tuple[str, str | None, list[int]]]:
    """(batch id, content fingerprint, record ids) of every entry, in stream order."""
    out = []
    for _, fields in await redis.xrange(keys.stream("default", "texts")):
        payload = fields[b"payload"]
        assert len(payload) <= LIMIT
        decode(fields, LIMIT)  # the worker's own check passes
        body = orjson.loads(payload)
        ids = [r["id"] for r in body["tables"][0]["records"]]
        out.append((body["batch_id"], payload_fingerprint(payload, body), ids))
    return out


@pytest.fixture
def limited(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_payload_bytes": LIMIT, "batch_chunk_size": 100})


async def test_chunks_over_the_limit_are_split_and_the_worker_takes_every_piece(
    limited: Settings, redis: aioredis.Redis
) -> None:
    client = await connect(limited)
    try:
        result = await SyncRunner(limited, client, Texts([150] * 250)).run_once()
    finally:
        await client.aclose()
    sent = await stream_entries(redis)
    assert result.records == 250
    assert result.chunks == len(sent) > 250 // 100  # far more entries than chunks
    assert [b for b, _, _ in sent] == [
        keys.batch_id("texts", result.run_start_ms, n) for n in range(1, len(sent) + 1)
    ]
    assert [i for _, _, ids in sent for i in ids] == list(range(250))
    async with running_worker(limited):
        await wait_until(lambda: drained(redis), what="the worker to take every entry")
    assert await redis.xlen(keys.dead_letter_stream("default", "texts")) == 0
    assert await redis.scard(keys.processed_set("default")) == len(sent)


async def test_a_run_killed_among_a_split_chunks_pieces_resends_them_identically(
    limited: Settings, redis: aioredis.Redis
) -> None:
    """Each record is an entry of its own here, so a chunk of 100 goes out in two publish
    calls (64 entries per call at most). The bridge dies between them: the checkpoint is still
    the chunk's start, and the resumed run sends the first 64 pieces again under the same ids
    with the same content (duplicates the worker drops), then the rest."""
    runner = SyncRunner(limited, await connect(limited), Texts([300] * 150, page=150))
    assert runner.publisher.max_entries_per_call == 64
    real_publish, calls = runner.publisher.publish, 0

    async def dies_before_the_second_call(*args: Any) -> list[bytes]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("the bridge dies between two publish calls")
        return await real_publish(*args)

    runner.publisher.publish = dies_before_the_second_call  # the fault, injected
    try:
        with pytest.raises(ConnectionError):
            await runner.run_once()
        state = await redis.hgetall(keys.sync_state("default", "texts"))
        assert (state[b"next_chunk"], state[b"pos_skip"]) == (b"1", b"0")  # the chunk's start
        runner.publisher.publish = real_publish
        result = await runner.run_once()
    finally:
        await runner.redis.aclose()
    assert result.resumed
    sent = await stream_entries(redis)
    assert len(sent) == 64 + 150 + 1  # and the completion marker of the table's full read
    first_copies = {b: (f, ids) for b, f, ids in sent[:64]}
    for batch_id, fingerprint, ids in sent[64:128]:
        assert first_copies[batch_id] == (fingerprint, ids)  # the same entry, sent again
    assert [i for _, _, ids in sent[64:-1] for i in ids] == list(range(150))
    assert sent[-1][2] == []


async def test_a_record_over_the_limit_on_its_own_is_rejected_and_the_run_goes_on(
    limited: Settings, redis: aioredis.Redis
) -> None:

    def rejected() -> float:
        labels = {"tenant": "default", "connector": "texts", "reason": "oversize"}
        return sample("aam_bridge_records_rejected_total", **labels)

    before = rejected()
    sizes = [10] * 30
    sizes[17] = 5000
    client = await connect(limited)
    try:
        with recorded_logs() as events:
            result = await SyncRunner(limited, client, Texts(sizes)).run_once()
            again = await SyncRunner(limited, client, Texts(sizes)).run_once()
    finally:
        await client.aclose()
    assert rejected() == before + 1  # once: the checkpoint moved past it
    (event,) = [e for e in events if e["event"] == "record_rejected"]
    assert (event["connector"], event["table"], event["primary_key"]) == (
        "texts",
        "items",
        {"id": 17},
    )
    assert "AAM_MAX_PAYLOAD_BYTES=1024" in event["error"]
    assert result.records == 29
    assert again.records == 0
    sent = await stream_entries(redis)
    assert [i for _, _, ids in sent for i in ids] == [i for i in range(30) if i != 17]
