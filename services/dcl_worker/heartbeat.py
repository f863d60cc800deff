"""Consumers of the group: this worker's heartbeat, and removing consumers long dead.

Every monitor pass SETs ``dcl:consumer:{tenant}:{name}`` with a TTL of ``HEARTBEAT_TTL_S``;
``aam-dcl pending`` shows a consumer without one as dead (idle time alone misleads: on Redis
7.0 a live consumer blocked in XREADGROUP grows idle too). A consumer with no heartbeat, no
pending entries and idle for DCL_CONSUMER_EXPIRY_S is deleted from the group (XGROUP
DELCONSUMER), so names of replicas long gone do not pile up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog
from redis.exceptions import ResponseError

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.redis_conn import RedisClient
from aam_dcl.streams import as_text, consumers_alive

log = structlog.get_logger("dcl_worker.heartbeat")

BEAT_EVERY_S = 2.0  # the monitor's pace
HEARTBEAT_TTL_S = 3 * int(BEAT_EVERY_S)  # three missed beats: dead

# KEYS: stream. ARGV: group, consumer, min idle ms. Deletes the consumer only if it holds no
# pending entry and is idle that long, checked and done in one step: an entry delivered to it
# meanwhile is never dropped with it (DELCONSUMER discards a consumer's pending entries).
# Returns -1 if it was kept.
DELETE_IF_IDLE_SCRIPT = """
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] == ARGV[2] then
    if f['pending'] == 0 and f['idle'] >= tonumber(ARGV[3]) then
      return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    end
    return -1
  end
end
return -1
"""


class Heartbeats:
    def __init__(self, settings: Settings, client: RedisClient) -> None:
        self.redis = client
        self.tenant = settings.tenant_id
        self.name = settings.consumer_name
        self.group = keys.group(settings.tenant_id)
        self.key = keys.consumer_heartbeat(settings.tenant_id, settings.consumer_name)
        self.expiry_ms = settings.consumer_expiry_s * 1000
        # A quarter of the expiry, between one beat and a minute: few XINFO calls.
        self.sweep_every_s = min(60.0, max(BEAT_EVERY_S, settings.consumer_expiry_s / 4))
        self.next_sweep = 0.0
        self._delete = client.register_script(DELETE_IF_IDLE_SCRIPT)

    async def beat(self) -> None:
        await self.redis.set(self.key, int(time.time() * 1000), ex=HEARTBEAT_TTL_S)

    async def sweep(self, connectors: Sequence[str]) -> None:
        """Delete, from each stream's group, the consumers dead for DCL_CONSUMER_EXPIRY_S
        that hold no pending entries (every ``sweep_every_s``)."""
        if time.monotonic() < self.next_sweep:
            return
        self.next_sweep = time.monotonic() + self.sweep_every_s
        for connector in connectors:
            stream = keys.stream(self.tenant, connector)
            try:
                consumers = await self.redis.xinfo_consumers(stream, self.group)
            except ResponseError:  # no stream or no group (yet, or deleted): nothing to sweep
                continue
            idle = [
                as_text(c["name"])
                for c in consumers
                if int(c["pending"]) == 0 and int(c["idle"]) >= self.expiry_ms
            ]
            alive = await consumers_alive(self.redis, self.tenant, idle)
            for name in (n for n in idle if n != self.name and not alive[n]):
                kept = await self._delete(keys=[stream], args=[self.group, name, self.expiry_ms])
                if int(kept) >= 0:
                    log.info(
                        "consumer_removed", connector=connector, consumer=name,
                        reason="no heartbeat, no pending entries, idle for DCL_CONSUMER_EXPIRY_S",
                    )  # fmt: skip
