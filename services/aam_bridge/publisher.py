"""Publishing to one connector stream: group first, back-pressure, XADD + checkpoint together.

Every entry is added with ``XADD ... MAXLEN ~ AAM_REDIS_STREAM_MAXLEN`` (the guide's policy)
in the same MULTI as the connector's checkpoint, so a chunk is either published and
recorded, or neither. With ``AAM_TRIM_POLICY=block`` (the default) publishing waits while
the group's lag + pending is above ``AAM_BACKPRESSURE_WATERMARK × MAXLEN``, so trimming only
ever removes entries the group has already taken (DESIGN §4.2 fix).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from aam_bridge import metrics
from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.stream_info import group_lag

log = structlog.get_logger("aam_bridge.publisher")

BACKPRESSURE_POLL_S = 0.2


class Publisher:
    def __init__(self, settings: Settings, client: aioredis.Redis, connector: str) -> None:
        self.settings = settings
        self.redis = client
        self.connector = connector
        self.stream = keys.stream(settings.tenant_id, connector)
        self.group = keys.group(settings.tenant_id)
        self.state_key = keys.sync_state(settings.tenant_id, connector)
        self.labels = (settings.tenant_id, connector)
        self.limit = max(1, int(settings.stream_maxlen * settings.backpressure_watermark))
        self.room = 0  # entries we may add before asking Redis again
        # Entries per MULTI: few round trips, yet well below what back-pressure allows.
        self.max_entries_per_call = max(1, min(64, self.limit // 4))

    async def ensure_group(self) -> None:
        """Create the consumer group at 0 before the first XADD, so no entry predates it."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("group_created", stream=self.stream, group=self.group)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def publish(
        self, payloads: list[bytes], checkpoint: Mapping[FieldT, EncodableT]
    ) -> list[bytes]:
        """XADD the entries and store ``checkpoint`` in the sync state, in one MULTI."""
        if self.settings.trim_policy == "block":
            await self._wait_for_room(len(payloads))
        started = time.perf_counter()
        pipe = self.redis.pipeline(transaction=True)
        for payload in payloads:
            pipe.xadd(
                self.stream,
                {"payload": payload},
                maxlen=self.settings.stream_maxlen,
                approximate=True,
            )
        pipe.hset(self.state_key, mapping=checkpoint)
        *entry_ids, _ = await pipe.execute()
        metrics.PUBLISH_SECONDS.labels(*self.labels).observe(time.perf_counter() - started)
        self.room -= len(payloads)
        return [bytes(entry_id) for entry_id in entry_ids]

    async def unread(self) -> int:
        """Entries the group has not finished with: undelivered (lag) + pending (unacked)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xinfo_groups(self.stream)
        pipe.xinfo_stream(self.stream)
        groups, stream = await pipe.execute()
        length = int(stream["length"])
        metrics.STREAM_LENGTH.labels(*self.labels).set(length)
        for info in groups:
            if info["name"] == self.group.encode():
                return int(info["pending"]) + group_lag(info, stream)
        await self.ensure_group()  # deleted under us: recreate, everything is unread
        return length

    async def _wait_for_room(self, entries: int) -> None:
        if self.room >= entries:
            return
        unread = await self.unread()
        if unread + entries <= self.limit:
            self.room = self.limit - unread
            return
        waited_from = time.monotonic()
        metrics.BACKPRESSURE_ACTIVE.labels(*self.labels).set(1)
        log.warning(
            "backpressure_on",
            unread=unread,
            limit=self.limit,
            maxlen=self.settings.stream_maxlen,
            hint="the worker lags; publishing waits instead of trimming unread entries",
        )
        try:
            while unread + entries > self.limit:
                await asyncio.sleep(BACKPRESSURE_POLL_S)
                metrics.BACKPRESSURE_SECONDS.labels(*self.labels).inc(BACKPRESSURE_POLL_S)
                unread = await self.unread()
        finally:
            metrics.BACKPRESSURE_ACTIVE.labels(*self.labels).set(0)
        log.info("backpressure_off", waited_s=round(time.monotonic() - waited_from, 2))
        self.room = self.limit - unread
