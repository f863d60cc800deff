"""Upgrading a standalone Redis from 0.1's key names: the daemons rename their keys at
start-up (RENAMENX), so a sync state, dead letters and the expiry index carry over."""

from __future__ import annotations

import redis.asyncio as aioredis

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.legacy import rename_legacy_keys
from tests.integration.conftest import demo_configs, run_bridge_once, running_worker
from tests.integration.test_redis_faults import count_events, recorded_logs
from tests.support import drained, wait_until

T, C = "default", "salesforce"


async def test_the_daemons_rename_0_1_keys_and_carry_their_contents_over(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A sync state with two finished runs, a dead letter and an expiry index under 0.1's names:
    the bridge renames the sync state before its run (which counts as the third), the worker
    the dead letters and the expiry index before it reads the stream; no old name is left."""
    old_sync, old_dlq, old_expiry = (
        keys.legacy_sync_state(T, C),
        keys.legacy_dead_letter_stream(T, C),
        keys.legacy_processed_expiry(T),
    )
    await redis.hset(old_sync, mapping={"runs": 2, "last_run_status": "succeeded"})
    await redis.xadd(old_dlq, {"error_type": "malformed_json", "payload": b"not json"})
    await redis.zadd(old_expiry, {"salesforce_1_1": 2**50})
    configs = demo_configs(records=20)[:1]
    await run_bridge_once(settings, configs)
    assert not await redis.exists(old_sync)
    assert await redis.hget(keys.sync_state(T, C), "runs") == b"3"
    async with running_worker(settings):
        await wait_until(lambda: drained(redis, T, [C]), what="the worker to drain")
    assert not await redis.exists(old_dlq, old_expiry)
    ((_, dead),) = await redis.xrange(keys.dead_letter_stream(T, C))
    assert dead[b"payload"] == b"not json"
    assert await redis.zscore(keys.processed_expiry(T), "salesforce_1_1") == 2**50
    assert await redis.zcard(keys.processed_expiry(T)) == 1 + await redis.scard(
        keys.processed_set(T)
    ), "the worker went on marking into the renamed index"


async def test_a_new_name_that_exists_is_never_overwritten(redis: aioredis.Redis) -> None:
    """Both names exist (an older daemon still writes the old one): nothing is renamed, the
    new key keeps its content, and a warning names both keys."""
    old, new = keys.legacy_renames("bridge", T, C)[0]
    await redis.hset(old, "runs", 1)
    await redis.hset(new, "runs", 7)
    with recorded_logs() as events:
        await rename_legacy_keys(redis, [(old, new), ("aam:sync:default:gone", "unused")])
    assert await redis.hget(new, "runs") == b"7"
    assert await redis.hget(old, "runs") == b"1"
    assert count_events(events, "legacy_key_kept", old=old, new=new) == 1
    assert not await redis.exists("unused")
