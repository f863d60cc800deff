"""The one atomic step that ends the handling of a read: dead-letter, mark processed, ack.

It runs as a single Lua script so the three happen together. Order matters because Redis
has no rollback: dead letters are written first and acks last, so any prefix that runs
before a failure is safe (at worst an entry is redelivered and found already processed).
Every batch id in the processed SET gets its own expiry through a companion ZSET
(DESIGN §4.1 fix): ids older than AAM_IDEMPOTENCY_TTL are removed a few hundred at a time.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from aam_dcl import keys
from aam_dcl.dead_letter import DeadLetter

# KEYS: stream, processed SET, expiry ZSET, dead-letter stream
# ARGV: group, now_ms, ttl_ms, dlq_maxlen, n_ack, n_mark, n_dlq,
#       <n_ack entry ids>, <n_mark batch ids>,
#       n_dlq × (<2k>, <k field name/value pairs of a DeadLetter>)
_SCRIPT = """
local group, now, ttl, dlq_maxlen = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local n_ack, n_mark, n_dlq = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local i = 8
local acks = {}
for _ = 1, n_ack do acks[#acks + 1] = ARGV[i]; i = i + 1 end
local marks = {}
for _ = 1, n_mark do marks[#marks + 1] = ARGV[i]; i = i + 1 end
for _ = 1, n_dlq do
  local n_fields = tonumber(ARGV[i])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', dlq_maxlen, '*', unpack(ARGV, i + 1, i + n_fields))
  i = i + 1 + n_fields
end
if n_mark > 0 then
  for j = 1, n_mark, 1000 do
    local last = math.min(j + 999, n_mark)
    redis.call('SADD', KEYS[2], unpack(marks, j, last))
    local scored = {}
    for k = j, last do scored[#scored + 1] = now + ttl; scored[#scored + 1] = marks[k] end
    redis.call('ZADD', KEYS[3], unpack(scored))
  end
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 500)
  if #expired > 0 then
    redis.call('SREM', KEYS[2], unpack(expired))
    redis.call('ZREM', KEYS[3], unpack(expired))
  end
  local ttl_s = math.ceil(ttl / 1000)
  redis.call('EXPIRE', KEYS[2], ttl_s)
  redis.call('EXPIRE', KEYS[3], ttl_s)
end
local acked = 0
for j = 1, n_ack, 1000 do
  acked = acked + redis.call('XACK', KEYS[1], group, unpack(acks, j, math.min(j + 999, n_ack)))
end
return acked
"""

DLQ_MAXLEN = 100_000


class Finalizer:
    """Runs the finalize script for one tenant's connector stream."""

    def __init__(self, client: aioredis.Redis, tenant: str, connector: str, ttl_s: int) -> None:
        self._script = client.register_script(_SCRIPT)
        self._keys = [
            keys.stream(tenant, connector),
            keys.processed_set(tenant),
            keys.processed_expiry(tenant),
            keys.dead_letter_stream(tenant, connector),
        ]
        self._group = keys.group(tenant)
        self._ttl_ms = ttl_s * 1000

    async def __call__(
        self,
        now_ms: int,
        ack: list[bytes],
        mark: list[str],
        dead: list[DeadLetter],
    ) -> int:
        args: list[bytes | str | int] = [
            self._group, now_ms, self._ttl_ms, DLQ_MAXLEN, len(ack), len(mark), len(dead),
            *ack, *mark,
        ]  # fmt: skip
        for d in dead:
            fields = d.fields()
            args += [len(fields), *fields]
        return int(await self._script(keys=self._keys, args=args))
