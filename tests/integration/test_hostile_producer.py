"""A producer on one stream cannot write another connector's tables or pin rows forever.

Attacks: a payload on ``aam:dcl:default:hubspot`` that says ``"connector": "salesforce"``;
a batch id stamped in the far future (``rogue_9223372036853_999999``), which would give its
rows a version no later, legitimate update can beat. Both are dead-lettered with their
reason, nothing of them is written, and the legitimate batches around them land.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import redis.asyncio as aioredis

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.messages import Batch, encode
from aam_dcl.schema import table_batch
from tests.integration.conftest import running_worker
from tests.support import drained, wait_until


def batch(connector: str, batch_id: str, name: str) -> Batch:
    records = [{"id": 1, "name": name}]
    return Batch(
        batch_id=batch_id,
        connector=connector,
        connector_config_id=f"{connector}-1",
        tables=[table_batch("accounts", records, primary_key=["id"], max_samples=1)],
    )


async def send(redis: aioredis.Redis, stream_connector: str, b: Batch) -> None:
    await redis.xadd(keys.stream("default", stream_connector), {"payload": encode(b)})


async def dead_letters(redis: aioredis.Redis, connector: str) -> list[dict[bytes, bytes]]:
    return [f for _, f in await redis.xrange(keys.dead_letter_stream("default", connector))]


def rows(settings: Settings) -> dict[str, list[tuple[object, ...]]]:
    path = Path(settings.sink_url.removeprefix("duckdb://"))
    with duckdb.connect(str(path), read_only=True) as con:
        tables = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_name NOT LIKE '\\_dcl\\_%' ESCAPE '\\'"
        ).fetchall()
        return {
            name: con.execute(f'SELECT id, name FROM "{schema}"."{name}" ORDER BY id').fetchall()
            for schema, name in tables
        }


async def test_a_payload_naming_another_connector_is_dead_lettered_not_written_there(
    settings: Settings, redis: aioredis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    await send(redis, "salesforce", batch("salesforce", f"salesforce_{now_ms}_1", "real"))
    # The hubspot producer claims to be salesforce, to overwrite salesforce's account 1.
    await send(redis, "hubspot", batch("salesforce", f"salesforce_{now_ms}_2", "forged"))
    async with running_worker(settings):
        await wait_until(lambda: drained(redis), what="both streams to be consumed")
    (letter,) = await dead_letters(redis, "hubspot")
    assert letter[b"error_type"] == b"connector_mismatch"
    assert b"salesforce" in letter[b"error"]
    assert b"aam:dcl:default:hubspot" in letter[b"error"]
    assert await dead_letters(redis, "salesforce") == []
    stored = rows(settings)
    assert [v for k, v in stored.items() if "accounts" in k] == [[(1, "real")]]
    assert not any(k.startswith("hubspot") for k in stored)


async def test_a_batch_id_from_the_future_is_dead_lettered_and_later_updates_still_win(
    settings: Settings, redis: aioredis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    await send(redis, "crm", batch("crm", f"crm_{now_ms}_1", "first"))
    await send(redis, "crm", batch("crm", "rogue_9223372036853_999999", "pinned"))
    # Within DCL_MAX_CLOCK_SKEW_S (default 300 s) of our clock: accepted.
    await send(redis, "crm", batch("crm", f"crm_{now_ms + 60_000}_1", "a minute ahead"))
    async with running_worker(settings):
        await wait_until(lambda: drained(redis), what="the stream to be consumed")
        await send(redis, "crm", batch("crm", f"crm_{now_ms + 120_000}_1", "later update"))
        await wait_until(lambda: drained(redis), what="the later update")
    (letter,) = await dead_letters(redis, "crm")
    assert letter[b"error_type"] == b"future_batch_id"
    assert b"rogue_9223372036853_999999" in letter[b"error"]
    assert b"DCL_MAX_CLOCK_SKEW_S" in letter[b"error"]
    assert [v for k, v in rows(settings).items() if "accounts" in k] == [[(1, "later update")]]


async def test_the_clock_skew_allowance_is_a_setting(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """DCL_MAX_CLOCK_SKEW_S=0: a batch stamped a minute ahead is refused too."""
    now_ms = int(time.time() * 1000)
    await send(redis, "crm", batch("crm", f"crm_{now_ms + 60_000}_1", "a minute ahead"))
    async with running_worker(settings.model_copy(update={"max_clock_skew_s": 0})):
        await wait_until(lambda: drained(redis), what="the stream to be consumed")
    (letter,) = await dead_letters(redis, "crm")
    assert letter[b"error_type"] == b"future_batch_id"


async def test_a_reused_batch_id_with_other_content_is_dead_lettered_an_identical_resend_is_not(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """The second copy of a batch id with other records is dead-lettered as
    batch_id_conflict (it used to vanish as a duplicate); a re-send of the same content with a
    new emitted_at, as the bridge sends after a lost reply, stays a quiet duplicate. Checked
    both across reads (Redis knows the id: the store's inbox compares) and within one read."""
    now_ms = int(time.time() * 1000)
    original = batch("crm", f"crm_{now_ms}_1", "original")
    await send(redis, "crm", original)
    async with running_worker(settings):
        await wait_until(lambda: drained(redis), what="the original")
        await send(redis, "crm", batch("crm", f"crm_{now_ms}_1", "original"))  # same content
        await send(redis, "crm", batch("crm", f"crm_{now_ms}_1", "other content"))
        await wait_until(lambda: drained(redis), what="the copies")
    # Within one read: two copies of a new id, the second with other content.
    await send(redis, "crm", batch("crm", f"crm_{now_ms}_2", "first copy"))
    await send(redis, "crm", batch("crm", f"crm_{now_ms}_2", "second copy"))
    async with running_worker(settings):
        await wait_until(lambda: drained(redis), what="the copies in one read")
    letters = await dead_letters(redis, "crm")
    assert [f[b"error_type"] for f in letters] == [b"batch_id_conflict", b"batch_id_conflict"]
    assert [f[b"batch_id"] for f in letters] == [f"crm_{now_ms}_{n}".encode() for n in (1, 2)]
    assert [v for k, v in rows(settings).items() if "accounts" in k] == [[(1, "first copy")]]
