"""Keys under their names from before the hash tags get their new names (standalone Redis).

aam-dcl 0.1 named a connector's sync state ``aam:sync:{tenant}:{connector}``, its dead letters
``aam:dlq:{tenant}:{connector}`` and the expiry index ``dcl:processed_batches_expiry:{tenant}``
(``aam_dcl.keys.legacy_renames``). At start-up the bridge renames its sync states and the
worker its dead-letter streams and the expiry index, each only if the new name is free
(RENAMENX). A Redis Cluster never held the old names (0.1 did not run on one), and RENAMENX
across slots is refused there, so nothing is renamed on a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from redis.exceptions import ResponseError

from aam_dcl.redis_conn import RedisClient, is_cluster

log = structlog.get_logger("aam_dcl.legacy")


async def rename_legacy_keys(client: RedisClient, pairs: Iterable[tuple[str, str]]) -> None:
    """RENAMENX each old name to its new one; logged when it moved, or when both exist (an
    older daemon still writes the old name: stop it; the old key is left as it is)."""
    if is_cluster(client):
        return
    for old, new in pairs:
        try:
            renamed = await client.renamenx(old, new)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                continue  # nothing under the old name: the usual case
            raise
        if renamed:
            log.info("legacy_key_renamed", old=old, new=new)
        else:
            log.warning(
                "legacy_key_kept", old=old, new=new,
                hint="both names exist: is a daemon older than this one still running? "
                "Stop it; then merge or delete the old key by hand (docs/operations.md)",
            )  # fmt: skip
