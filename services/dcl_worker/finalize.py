"""The step that ends the handling of a read: mark processed, then dead-letter and ack.

Two Lua scripts, each on keys of one slot (Redis Cluster runs a script on one slot only):

1. the tenant's step, on the processed SET and its expiry ZSET: mark the written batch ids
   processed, each with its own expiry (ids older than AAM_IDEMPOTENCY_TTL are removed a few
   hundred at a time);
2. the stream's step, on the connector stream and its dead-letter stream: write the dead
   letters, then XACK.

They run in that order, so any prefix that runs before a failure is safe: after (1) alone
the entries stay pending, are redelivered, found processed and acked; within (2) the dead
letters are written before the ack. Standalone Redis runs the same two scripts.
"""

from __future__ import annotations

from aam_dcl import keys
from aam_dcl.dead_letter import DeadLetter
from aam_dcl.redis_conn import RedisClient

# KEYS: processed SET, expiry ZSET. ARGV: now_ms, ttl_ms, <batch ids>
_MARK_SCRIPT = """
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = #ARGV - 2
for j = 3, #ARGV, 1000 do
  local last = math.min(j + 999, #ARGV)
  redis.call('SADD', KEYS[1], unpack(ARGV, j, last))
  local scored = {}
  for k = j, last do scored[#scored + 1] = now + ttl; scored[#scored + 1] = ARGV[k] end
  redis.call('ZADD', KEYS[2], unpack(scored))
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 500)
if #expired > 0 then
  redis.call('SREM', KEYS[1], unpack(expired))
  redis.call('ZREM', KEYS[2], unpack(expired))
end
local ttl_s = math.ceil(ttl / 1000)
redis.call('EXPIRE', KEYS[1], ttl_s)
redis.call('EXPIRE', KEYS[2], ttl_s)
return n
"""

# KEYS: stream, dead-letter stream. ARGV: group, dlq_maxlen, n_ack, n_dlq, <n_ack entry ids>,
#       n_dlq × (<its entry id>, <2k>, <k field name/value pairs of a DeadLetter>)
# A dead letter is written only while its entry is still pending: a retry after a lost reply
# (the script ran, the ack went through) writes no second copy.
_STREAM_SCRIPT = """
local group, dlq_maxlen = ARGV[1], ARGV[2]
local n_ack, n_dlq = tonumber(ARGV[3]), tonumber(ARGV[4])
local i = 5 + n_ack
for _ = 1, n_dlq do
  local entry_id, first, last = ARGV[i], i + 2, i + 1 + tonumber(ARGV[i + 1])
  if #redis.call('XPENDING', KEYS[1], group, entry_id, entry_id, 1) > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', dlq_maxlen, '*', unpack(ARGV, first, last))
  end
  i = last + 1
end
local acked = 0
for j = 5, 4 + n_ack, 1000 do
  acked = acked + redis.call('XACK', KEYS[1], group, unpack(ARGV, j, math.min(j + 999, 4 + n_ack)))
end
return acked
"""

DLQ_MAXLEN = 100_000


class Finalizer:
    """Runs the two finalize steps for one tenant's connector stream."""

    def __init__(self, client: RedisClient, tenant: str, connector: str, ttl_s: int) -> None:
        self._mark = client.register_script(_MARK_SCRIPT)
        self._settle = client.register_script(_STREAM_SCRIPT)
        self._processed = [keys.processed_set(tenant), keys.processed_expiry(tenant)]
        self._streams = [keys.stream(tenant, connector), keys.dead_letter_stream(tenant, connector)]
        self._group = keys.group(tenant)
        self._ttl_ms = ttl_s * 1000

    async def mark(self, now_ms: int, batch_ids: list[str]) -> None:
        """Step 1: the batch ids are processed (idempotent: a retry renews their expiry)."""
        if batch_ids:
            await self._mark(keys=self._processed, args=[now_ms, self._ttl_ms, *batch_ids])

    async def settle(self, ack: list[bytes], dead: list[DeadLetter]) -> int:
        """Step 2: write the dead letters of entries still pending, then XACK; the acks."""
        if not ack and not dead:
            return 0
        args: list[bytes | str | int] = [self._group, DLQ_MAXLEN, len(ack), len(dead), *ack]
        for d in dead:
            fields = d.fields()
            args += [d.original_id, len(fields), *fields]
        return int(await self._settle(keys=self._streams, args=args))
