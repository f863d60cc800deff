"""The one way aam-dcl opens a Redis connection: TLS verified for rediss://, timeouts set,
retries with jittered exponential backoff for transient connection errors."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aam_dcl.config import Settings

# Longest command we block on is XREADGROUP BLOCK block_ms; socket timeout must exceed it.
_SOCKET_MARGIN_S = 10.0


def connect(settings: Settings, *, url: str | None = None) -> aioredis.Redis:
    """A client for REDIS_URL (or ``url``). rediss:// verifies the server certificate."""
    return aioredis.Redis.from_url(
        url or settings.effective_redis_url,
        socket_connect_timeout=5.0,
        socket_timeout=settings.block_ms / 1000 + _SOCKET_MARGIN_S,
        health_check_interval=30,
        retry=Retry(EqualJitterBackoff(cap=2.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        max_connections=64,
    )
