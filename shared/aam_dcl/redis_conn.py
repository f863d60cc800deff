"""The one way aam-dcl opens a Redis connection: TLS verified for rediss://, timeouts set.

The client never retries a command by itself. A silently retried XREADGROUP whose first reply
was lost leaves entries pending under the consumer that nobody is processing (they would be
trimmed before a reclaim); a retried MULTI may run twice. Every caller handles connection
errors itself, with bounded jittered backoff, where it knows what is safe to repeat.
"""

from __future__ import annotations

from typing import TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from aam_dcl.config import Settings
from aam_dcl.redis_tls import tls_options

# What ``connect`` returns: the standalone client, or the cluster client (same command API).
RedisClient: TypeAlias = aioredis.Redis | RedisCluster

# Longest command we block on is XREADGROUP BLOCK block_ms; socket timeout must exceed it.
_SOCKET_MARGIN_S = 10.0


def connect(settings: Settings) -> aioredis.Redis:
    """A client for REDIS_URL. rediss:// verifies the server certificate."""
    return aioredis.Redis.from_url(
        settings.effective_redis_url,
        socket_connect_timeout=5.0,
        socket_timeout=settings.block_ms / 1000 + _SOCKET_MARGIN_S,
        health_check_interval=30,
        retry=Retry(NoBackoff(), retries=0),
        **tls_options(settings),
    )


async def redis_problem(client: aioredis.Redis) -> str | None:
    """None when Redis answers PING, else what is wrong (for /readyz)."""
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        return f"redis unreachable: {exc}"
    return None


def is_cluster(client: RedisClient) -> bool:
    """Whether ``client`` talks to a Redis Cluster (keys of one command share a slot)."""
    return isinstance(client, RedisCluster)
