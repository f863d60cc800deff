"""A connector's lease: one bridge replica syncs a connector at a time, fenced by a token.

``aam:lease:{stream}`` holds ``"{holder} {token}"`` with a PX expiry the holder renews every
third of AAM_LEASE_TTL_MS; a holder that dies or pauses past the TTL loses it to a waiting
replica. Every new holder INCRs ``aam:fence:{stream}`` and takes the result as its token, and
the publish script (``aam_bridge.publisher``) refuses a write whose token is not the
counter's value: a replica that was paused past its lease and wakes up cannot write, even
before it notices that it lost the lease.
"""

from __future__ import annotations

import os

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.redis_conn import RedisClient

# KEYS: lease, fence. ARGV: holder, ttl ms. Takes a free lease: the token, or false if held.
ACQUIRE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return token
"""

# KEYS: lease, fence. ARGV: "holder token", ttl ms, token. Extends our lease; takes it back
# if it expired and nobody took it meanwhile (the fence still holds our token). 1 if held.
RENEW_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not current and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: "holder token". Frees our lease (a stop), leaves another's alone.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def holder_id(settings: Settings) -> str:
    """``BRIDGE_NAME`` (default: the host name, the pod's name) and the pid: two processes on
    one host are two holders."""
    return f"{settings.bridge_name}:{os.getpid()}"


class Lease:
    """This replica's lease of one connector; ``token`` is set while it believes it holds it."""

    def __init__(self, settings: Settings, client: RedisClient, connector: str) -> None:
        self.redis = client
        self.holder = holder_id(settings)
        self.ttl_ms = settings.lease_ttl_ms
        self.renew_every_s = settings.lease_ttl_ms / 3000
        self.keys = [
            keys.lease(settings.tenant_id, connector),
            keys.fence(settings.tenant_id, connector),
        ]
        self.token: int | None = None
        self._acquire = client.register_script(ACQUIRE_SCRIPT)
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)

    @property
    def value(self) -> str:
        return f"{self.holder} {self.token}"

    async def acquire(self) -> bool:
        """Take the lease if it is free; True if we hold it now (``token`` is our token)."""
        token = await self._acquire(keys=self.keys, args=[self.holder, self.ttl_ms])
        self.token = int(token) if token is not None else None
        return self.token is not None

    async def renew(self) -> bool:
        """Extend the lease; False if another holder has it (``token`` is then cleared)."""
        if self.token is None:
            return False
        held = await self._renew(keys=self.keys, args=[self.value, self.ttl_ms, self.token])
        if not held:
            self.token = None
        return bool(held)

    async def release(self) -> None:
        """Free the lease now (a stop, or nothing left to run), so another replica need not
        wait for it to expire."""
        if self.token is not None:
            await self._release(keys=self.keys[:1], args=[self.value])
            self.token = None
