"""Streams and groups, done right for the bridge, the worker and the CLI.

Groups are created at ``0`` with MKSTREAM, never at ``$`` (that would skip what is already in
the stream); an existing group (BUSYGROUP) is fine.

XINFO GROUPS' ``lag`` is an estimate: nil after entries were trimmed from under the group,
and overstated for good after Redis replays an AOF whose group counter is stale (Redis 7.0
logs XREADGROUP as XCLAIM without entries-read). ``group_lag`` corrects it with facts that
are always right: a group that has delivered the stream's last entry has no lag, and lag
never exceeds the stream's length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

log = structlog.get_logger("aam_dcl.streams")


async def create_group(client: aioredis.Redis, stream: str, group: str) -> None:
    """XGROUP CREATE stream group 0 MKSTREAM, tolerating a group that already exists."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        log.info("group_created", stream=stream, group=group)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def entry_id_key(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id ``ms-seq`` as a sortable pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def group_lag(group: Mapping[str, Any], stream: Mapping[str, Any]) -> int:
    """Entries not yet delivered to ``group`` (an XINFO GROUPS row), given XINFO STREAM."""
    length = int(stream["length"])
    if entry_id_key(group["last-delivered-id"]) >= entry_id_key(stream["last-generated-id"]):
        return 0
    lag = group.get("lag")
    return length if lag is None else min(length, int(lag))


def as_text(value: bytes | str) -> str:
    """A key, field or name from a Redis reply (bytes without decode_responses) as text."""
    return value.decode() if isinstance(value, bytes) else value
