"""Publishing to one connector stream: group first, back-pressure, XADD + checkpoint together.

The XADDs of a call and the connector's checkpoint run in one Lua script that writes the
checkpoint only after every XADD succeeded. (A MULTI is not enough: Redis does not roll
back a transaction when one command fails at run time, so the checkpoint HSET would apply
after a failed XADD and the run would skip the chunk.) If an XADD fails, the earlier XADDs
of the call stay; the run resumes from the old checkpoint and sends them again with the same
batch ids, which the worker drops as duplicates. How the stream is trimmed is AAM_TRIM_POLICY:

- ``trim`` — the guide's policy: ``XADD ... MAXLEN ~ AAM_REDIS_STREAM_MAXLEN``. It deletes the
  oldest entries whether or not the group has taken them.
- ``block`` (default) — no unacknowledged entry is ever trimmed, for any
  consumer group on the stream (but those named in AAM_IGNORE_GROUPS). The XADD trims with
  ``MINID ~ <oldest id some group has not acknowledged>``, so only entries every group has
  delivered and acknowledged go; and publishing waits (back-pressure) while the slowest
  group's lag + pending is above ``AAM_BACKPRESSURE_WATERMARK × MAXLEN``, or while the
  stream is held long by an
  old pending entry (a dead consumer's, until a worker reclaims it). MAXLEN counting lag +
  pending alone is not enough: a pending entry sits at the old end, where MAXLEN cuts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import structlog
from redis.exceptions import RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from aam_bridge import metrics
from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.errors import LeaseLost
from aam_dcl.legacy import rename_legacy_keys
from aam_dcl.messages import PAYLOAD_FIELD
from aam_dcl.redis_conn import RedisClient
from aam_dcl.streams import create_group, entry_id_key, read_streams

log = structlog.get_logger("aam_bridge.publisher")

# KEYS: stream, sync state, fence. ARGV: the lease's fencing token ('' = unfenced: a single
# publisher without a lease, as in tests), trim strategy (MINID|MAXLEN), its threshold, the
# number of entries n, the n payloads, then the checkpoint's field/value pairs. A token that
# is no longer the fence's value (another bridge took the lease over) writes nothing; an error
# in any XADD aborts the script before the HSET. Returns the stream's length after the XADDs
# and their ids.
PUBLISH_SCRIPT = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('FENCED lease token ' .. ARGV[1] .. ' is no longer current')
end
local n = tonumber(ARGV[4])
local ids = {}
for i = 1, n do
  ids[i] = redis.call('XADD', KEYS[1], ARGV[2], '~', ARGV[3], '*', 'PAYLOAD', ARGV[4 + i])
end
if #ARGV > 4 + n then
  redis.call('HSET', KEYS[2], unpack(ARGV, 5 + n, #ARGV))
end
return {redis.call('XLEN', KEYS[1]), ids}
""".replace("'PAYLOAD'", repr(PAYLOAD_FIELD.decode()))

BACKPRESSURE_POLL_S = 0.2
# Approximate trimming removes whole radix-tree nodes (stream-node-max-entries, 100 by
# default): a fully acknowledged stream still keeps up to a node's worth of entries.
NODE_SLACK = 200


class Publisher:
    def __init__(self, settings: Settings, client: RedisClient, connector: str) -> None:
        self.settings = settings
        self.redis = client
        self.connector = connector
        self.stream = keys.stream(settings.tenant_id, connector)
        self.group = keys.group(settings.tenant_id)
        self.state_key = keys.sync_state(settings.tenant_id, connector)
        self.fence_key = keys.fence(settings.tenant_id, connector)
        self.token: int | None = None  # the lease's fencing token (None: unfenced)
        self.labels = (settings.tenant_id, connector)
        self.limit = max(1, int(settings.stream_maxlen * settings.backpressure_watermark))
        self.max_length = settings.stream_maxlen + NODE_SLACK
        self.room = 0  # entries we may add before asking Redis again
        self.floor = "0-1"  # oldest unacknowledged id seen: MINID trims only below it
        # Entries per publish call: few round trips, yet well below what back-pressure allows.
        self.max_entries_per_call = max(1, min(64, self.limit // 4))
        self._publish = client.register_script(PUBLISH_SCRIPT)
        # Never ignore our own group: the worker's exactly-once depends on it.
        self.ignored = settings.ignore_groups - {self.group}
        self.upgraded = False  # the sync state's old name was looked for

    async def ensure_group(self) -> None:
        """Create the consumer group before the first XADD, so no entry predates it; the
        first time, rename a sync state under its old name (``aam_dcl.legacy``)."""
        if not self.upgraded:
            pairs = keys.legacy_renames("bridge", self.settings.tenant_id, self.connector)
            await rename_legacy_keys(self.redis, pairs)
            self.upgraded = True
        await create_group(self.redis, self.stream, self.group)

    async def publish(
        self, payloads: list[bytes], checkpoint: Mapping[FieldT, EncodableT]
    ) -> list[bytes]:
        """XADD the entries, then store ``checkpoint`` in the sync state: all or nothing.

        Raises (redis ResponseError) if Redis refuses an XADD; the checkpoint is then unchanged.
        Raises LeaseLost, writing nothing, if ``token`` is no longer the lease's current one.
        """
        safe = self.settings.trim_policy == "block"
        if safe:
            await self._wait_for_room(len(payloads))
            # The floor may be stale (older): that only trims less.
            trim: list[EncodableT] = ["MINID", self.floor]
        else:
            trim = ["MAXLEN", self.settings.stream_maxlen]
        started = time.perf_counter()
        length, entry_ids = await self._call([*trim, len(payloads), *payloads], checkpoint)
        metrics.PUBLISH_SECONDS.labels(*self.labels).observe(time.perf_counter() - started)
        metrics.STREAM_LENGTH.labels(*self.labels).set(length)
        self.room -= len(payloads)
        return [bytes(entry_id) for entry_id in entry_ids]

    async def save(self, checkpoint: Mapping[FieldT, EncodableT]) -> None:
        """Store ``checkpoint`` alone (a table or the run done), fenced like ``publish``."""
        await self._call(["MAXLEN", 0, 0], checkpoint)

    async def _call(
        self, entries: list[EncodableT], checkpoint: Mapping[FieldT, EncodableT]
    ) -> tuple[int, list[bytes]]:
        token = "" if self.token is None else self.token
        args: list[EncodableT] = [token, *entries]
        for name, value in checkpoint.items():
            args += [name, value]
        try:
            length, entry_ids = await self._publish(
                keys=[self.stream, self.state_key, self.fence_key], args=args
            )
        except ResponseError as exc:
            if not str(exc).startswith("FENCED"):
                metrics.PUBLISH_ERRORS.labels(*self.labels).inc()
                raise
            metrics.FENCED_WRITES.labels(*self.labels).inc()
            log.warning(
                "publish_fenced", token=token, error=str(exc),
                hint="another bridge took this connector's lease over (this one was paused or "
                "cut off past AAM_LEASE_TTL_MS): nothing was written; waiting for the lease",
            )  # fmt: skip
            raise LeaseLost(f"{exc}: another bridge holds the lease of {self.stream}") from exc
        except (RedisError, OSError):
            metrics.PUBLISH_ERRORS.labels(*self.labels).inc()
            raise
        return int(length), list(entry_ids)

    async def unread(self) -> tuple[int, int]:
        """(lag + pending of the slowest group, XLEN); refreshes the trim floor on the way.

        Every consumer group on the stream counts, not only ``dcl_engine:{tenant}``: other
        services may read the same stream with their own group, and trimming below their
        unacknowledged entries would lose them. Groups in AAM_IGNORE_GROUPS don't count.
        """
        tenant = self.settings.tenant_id
        states = await read_streams(self.redis, tenant, [self.connector], pending="all")
        state = states[self.connector]
        if not state.exists:
            await self.ensure_group()  # deleted under us: recreate, everything is unread
            self.floor = "0-1"
            return 0, 0
        metrics.STREAM_LENGTH.labels(*self.labels).set(state.length)
        if state.group(self.group) is None:
            await self.ensure_group()
            self.floor = "0-1"
            return state.length, state.length
        counted = [g for g in state.groups if g.name not in self.ignored]
        self.floor = min((g.unacked_from for g in counted), key=entry_id_key, default=self.floor)
        return max((g.pending + g.lag for g in counted), default=0), state.length

    def _full(self, unread: int, length: int, entries: int) -> bool:
        return unread + entries > self.limit or length + entries > self.max_length

    async def _wait_for_room(self, entries: int) -> None:
        if self.room >= entries:
            return
        unread, length = await self.unread()
        if not self._full(unread, length, entries):
            self.room = min(self.limit - unread, self.max_length - length)
            return
        waited_from = time.monotonic()
        metrics.BACKPRESSURE_ACTIVE.labels(*self.labels).set(1)
        log.warning(
            "backpressure_on",
            unread=unread,
            length=length,
            limit=self.limit,
            maxlen=self.settings.stream_maxlen,
            hint="the worker lags or a dead consumer holds old entries; publishing waits "
            "instead of trimming entries the group has not acknowledged",
        )
        try:
            while self._full(unread, length, entries):
                await asyncio.sleep(BACKPRESSURE_POLL_S)
                metrics.BACKPRESSURE_SECONDS.labels(*self.labels).inc(BACKPRESSURE_POLL_S)
                unread, length = await self.unread()
        finally:
            metrics.BACKPRESSURE_ACTIVE.labels(*self.labels).set(0)
        log.info("backpressure_off", waited_s=round(time.monotonic() - waited_from, 2))
        self.room = min(self.limit - unread, self.max_length - length)
