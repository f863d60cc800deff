"""The one way aam-dcl opens a Redis connection: standalone or Redis Cluster, TLS verified for
rediss://, timeouts set.

``REDIS_CLUSTER=auto`` asks the server at start-up (``CLUSTER INFO``: a standalone server
says cluster support is disabled) and returns redis-py's cluster client on a cluster, the
standalone client otherwise; ``true``/``false`` decide without asking.

The client never retries a command by itself. A silently retried XREADGROUP whose first reply
was lost leaves entries pending under the consumer that nobody is processing (they would be
trimmed before a reclaim); a retried MULTI may run twice. Every caller handles connection
errors itself, with bounded jittered backoff, where it knows what is safe to repeat. The
cluster client follows MOVED/ASK redirections (the command did not run: safe), but repeats
nothing after a connection error either.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    ClusterDownError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.typing import EncodableT

from aam_dcl.config import Settings, cluster_url_problem
from aam_dcl.errors import ConfigError
from aam_dcl.logs import redact_urls_in, redacted_url
from aam_dcl.redis_tls import tls_options

log = structlog.get_logger("aam_dcl.redis_conn")

# What ``connect`` returns: the standalone client, or the cluster client (same command API).
RedisClient: TypeAlias = aioredis.Redis | RedisCluster

# Longest command we block on is XREADGROUP BLOCK block_ms; socket timeout must exceed it.
_SOCKET_MARGIN_S = 10.0


class _ClusterClient(RedisCluster):
    """redis-py's cluster client, whose "no node reachable" and "the cluster is down" are
    ConnectionErrors, like the standalone client's "Redis is down": every loop that waits for
    Redis to come back handles them the same way. (redis-py raises RedisClusterException, no
    RedisError, and CLUSTERDOWN — a node restarting, a primary lost — as a ResponseError.)"""

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise RedisConnectionError(f"Redis Cluster unreachable: {exc}") from exc

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except ClusterDownError as exc:
            raise RedisConnectionError(f"Redis Cluster down: {exc}") from exc


def _options(settings: Settings) -> dict[str, Any]:
    return {
        "socket_connect_timeout": 5.0,
        "socket_timeout": settings.block_ms / 1000 + _SOCKET_MARGIN_S,
        "health_check_interval": 30,
        "retry": Retry(NoBackoff(), retries=0),
        **tls_options(settings),
    }


async def connect(settings: Settings) -> RedisClient:
    """A client for REDIS_URL: the cluster client on a Redis Cluster, else the standalone one.
    rediss:// verifies the server certificate. With REDIS_CLUSTER=auto and Redis unreachable
    (or the user not allowed CLUSTER INFO), standalone is assumed and logged."""
    url = settings.effective_redis_url
    if settings.redis_cluster == "false":
        return aioredis.Redis.from_url(url, **_options(settings))
    if settings.redis_cluster == "auto":
        standalone = aioredis.Redis.from_url(url, **_options(settings))
        if not await _is_cluster_server(standalone, url):
            return standalone
        await standalone.aclose()
        problem = cluster_url_problem(url)
        if problem:
            raise ConfigError(f"REDIS_URL={redacted_url(url)!r} is a Redis Cluster: {problem}")
    return _ClusterClient.from_url(url, **_options(settings))


async def _is_cluster_server(client: aioredis.Redis, url: str) -> bool:
    try:
        await client.cluster("info")
    except NoPermissionError as exc:
        reason = f"the Redis user may not run CLUSTER INFO: {exc}"
    except ResponseError:
        return False  # "cluster support disabled" (or a server without CLUSTER): standalone
    except AuthenticationError:
        return False  # a refused login is the first command's to report, in either mode
    except (RedisError, OSError) as exc:
        reason = f"Redis at {redacted_url(url)} did not answer: {exc}"
    else:
        return True
    log.warning(
        "redis_mode_assumed", mode="standalone", reason=redact_urls_in(reason),
        hint="REDIS_CLUSTER=auto asks at start-up; set REDIS_CLUSTER=true (or false) to "
        "decide without asking",
    )  # fmt: skip
    return False


def is_cluster(client: RedisClient) -> bool:
    """Whether ``client`` talks to a Redis Cluster (keys of one command share a slot)."""
    return isinstance(client, RedisCluster)


def username(client: RedisClient) -> str:
    """The user the client logs in as (``default`` when the URL names none)."""
    if isinstance(client, RedisCluster):
        return str(client.get_connection_kwargs().get("username") or "default")
    return str(client.connection_pool.connection_kwargs.get("username") or "default")


async def redis_problem(client: RedisClient) -> str | None:
    """None when Redis answers PING, else what is wrong (for /readyz)."""
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        return f"redis unreachable: {exc}"
    return None
