"""The operator's commands on a tenant's Redis state: dead letters, pending, pause/resume.

Every function takes a Redis client and a tenant and returns plain data (dataclasses); the
``aam-dcl`` CLI only formats it. Writes that must happen together run in one script or MULTI
on keys of one slot (so on a Redis Cluster too); steps that span slots run in an order that
makes any prefix safe (docs/operations-cli.md). The safe trim is in ``aam_dcl_cli.trim``,
the per-tenant ACL rules in ``aam_dcl.acl``.
"""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from aam_dcl import keys, messages
from aam_dcl.dead_letter import DeadLetter
from aam_dcl.errors import AamDclError
from aam_dcl.redis_conn import RedisClient
from aam_dcl.streams import (
    as_text,
    consumers_alive,
    entry_id_key,
    is_entry_id,
    scan_dead_letter_streams,
    scan_streams,
)

PAGE = 100  # dead letters per script call when replaying or purging --all
WATCH_RETRIES = 20


class OperationRefused(AamDclError):
    """The operation would lose data or names something that is not there; nothing was done."""


def check_ids(entry_ids: Sequence[str]) -> list[str]:
    """Reject anything that is not a stream id before it reaches Redis."""
    bad = [e for e in entry_ids if not is_entry_id(e)]
    if bad:
        raise OperationRefused(
            f"not a stream entry id: {', '.join(bad)} (use e.g. 1762299908994-0)"
        )
    return list(entry_ids)


# --- dead letters ------------------------------------------------------------------------------


@dataclass(slots=True)
class DeadLetterList:
    entries: list[DeadLetter]
    totals: dict[str, int]  # connector -> dead letters in its stream


async def list_dead_letters(
    client: RedisClient, tenant: str, connector: str | None = None, limit: int = 50
) -> DeadLetterList:
    """The oldest ``limit`` dead letters (of one connector, or all), with per-connector totals."""
    connectors = [connector] if connector else await scan_dead_letter_streams(client, tenant)
    entries: list[DeadLetter] = []
    totals: dict[str, int] = {}
    for name in connectors:
        dlq = keys.dead_letter_stream(tenant, name)
        pipe = client.pipeline(transaction=False)
        pipe.xlen(dlq)
        pipe.xrange(dlq, "-", "+", count=limit)
        total, rows = await pipe.execute()
        totals[name] = int(total)
        entries += [DeadLetter.from_entry(name, eid, fields) for eid, fields in rows]
    entries.sort(key=lambda d: entry_id_key(d.entry_id))
    return DeadLetterList(entries[:limit], totals)


async def get_dead_letter(
    client: RedisClient, tenant: str, connector: str, entry_id: str
) -> DeadLetter:
    check_ids([entry_id])
    rows = await client.xrange(keys.dead_letter_stream(tenant, connector), entry_id, entry_id)
    if not rows:
        raise OperationRefused(
            f"no dead letter {entry_id} in {keys.dead_letter_stream(tenant, connector)} "
            "(aam-dcl dlq list shows the ids)"
        )
    return DeadLetter.from_entry(connector, rows[0][0], rows[0][1])


@dataclass(slots=True)
class DeadLetterChange:
    """What replay or purge did: the dead letters handled, the ids not found."""

    done: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    new_ids: list[str] = field(default_factory=list)  # replay: the re-published entries
    unmarked: list[str] = field(default_factory=list)  # replay: batch ids taken out of the set


async def replay_dead_letters(
    client: RedisClient, tenant: str, connector: str, entry_ids: Sequence[str] | None
) -> DeadLetterChange:
    """Re-publish dead letters' payloads to the connector stream and delete them.

    ``entry_ids`` None replays every dead letter present when the call starts (not those that
    a replay makes fail again). A page of dead letters is read, their batch ids are taken out
    of the processed SET and expiry ZSET (so the store's inbox, not the cache, decides
    whether each was applied), then one script on the stream's slot re-publishes the payload
    of each dead letter still there to ``aam:dcl:{tenant}:{connector}`` and XDELs it: two
    operators replaying at once cannot both re-publish the same dead letter.
    """
    return await _change_dead_letters(client, tenant, connector, entry_ids, replay=True)


async def purge_dead_letters(
    client: RedisClient, tenant: str, connector: str, entry_ids: Sequence[str] | None
) -> DeadLetterChange:
    """Delete dead letters (``None``: every one present when the call starts)."""
    return await _change_dead_letters(client, tenant, connector, entry_ids, replay=False)


async def _change_dead_letters(
    client: RedisClient,
    tenant: str,
    connector: str,
    entry_ids: Sequence[str] | None,
    *,
    replay: bool,
) -> DeadLetterChange:
    dlq = keys.dead_letter_stream(tenant, connector)
    result = DeadLetterChange()
    if entry_ids is not None:
        wanted = check_ids(list(dict.fromkeys(entry_ids)))
        for start in range(0, len(wanted), PAGE):
            await _change_page(
                client, tenant, connector, wanted[start : start + PAGE], result, replay
            )
        return result
    newest = await client.xrevrange(dlq, "+", "-", count=1)
    if not newest:
        return result
    end = as_text(newest[0][0])  # a replay that fails again lands after this: not replayed again
    cursor = "-"
    while True:
        rows = await client.xrange(dlq, cursor, end, count=PAGE)
        if not rows:
            return result
        page = [as_text(eid) for eid, _ in rows]
        await _change_page(client, tenant, connector, page, result, replay)
        cursor = "(" + page[-1]


async def _change_page(
    client: RedisClient,
    tenant: str,
    connector: str,
    ids: list[str],
    result: DeadLetterChange,
    replay: bool,
) -> None:
    dlq = keys.dead_letter_stream(tenant, connector)
    pipe = client.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xrange(dlq, entry_id, entry_id)
    found = [DeadLetter.from_entry(connector, r[0][0], r[0][1]) for r in await pipe.execute() if r]
    settled: dict[str, Any] = {}
    unmarked: set[str] = set()
    if found:
        if replay:
            unmarked = await _unmark(client, tenant, found)
        # Step 2, on the stream's slot: each dead letter that is still there, at once
        # re-published (replay) and deleted; an operator who got there first leaves it missing.
        args = [1 if replay else 0, messages.PAYLOAD_FIELD, *(d.entry_id for d in found)]
        replies = await client.eval(_SETTLE, 2, dlq, keys.stream(tenant, connector), *args)
        settled = {d.entry_id: reply for d, reply in zip(found, replies, strict=True) if reply}
    result.missing += [i for i in ids if i not in settled]
    result.done += [i for i in ids if i in settled]
    if replay:
        result.new_ids += [as_text(settled[i]) for i in ids if i in settled]
        result.unmarked += [d.batch_id for d in found if d.entry_id in settled.keys() & unmarked]


async def _unmark(client: RedisClient, tenant: str, found: list[DeadLetter]) -> set[str]:
    """Step 1 of a replay, on the processed set's slot: the dead letters' batch ids out of the
    processed SET (and its expiry ZSET); the entry ids of those whose batch id was in it.

    This step comes first because its prefix is safe and the other order's is not. Taken out
    and then not re-published (a crash, another operator's replay got there first), an id
    only makes the worker ask the store's inbox, which knows the batch: nothing is applied
    twice. Re-published while still in the set, the entry could be read, found processed and
    acked before the id went: the replay would be lost.
    """
    marked = [d for d in found if d.batch_id]
    if not marked:
        return set()
    pipe = client.pipeline(transaction=False)  # in order on one connection: the set first
    for dead in marked:
        pipe.srem(keys.processed_set(tenant), dead.batch_id)
    pipe.zrem(keys.processed_expiry(tenant), *(d.batch_id for d in marked))
    *removed, _ = await pipe.execute()
    return {d.entry_id for d, gone in zip(marked, removed, strict=True) if gone}


# KEYS: dead-letter stream, connector stream. ARGV: replay (1|0), the payload field, entry ids.
# Per id: false when the dead letter is gone, else (replay) the re-published entry's id or 1,
# after XDEL. No MAXLEN on the XADD: trimming while re-publishing could cut entries the group
# has not read.
_SETTLE = """
local out = {}
for i = 3, #ARGV do
  local rows = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #rows == 0 then
    out[#out + 1] = false
  else
    local done = 1
    if ARGV[1] == '1' then
      local fields, payload = rows[1][2], ''
      for j = 1, #fields, 2 do
        if fields[j] == ARGV[2] then payload = fields[j + 1] end
      end
      done = redis.call('XADD', KEYS[2], '*', ARGV[2], payload)
    end
    redis.call('XDEL', KEYS[1], ARGV[i])
    out[#out + 1] = done
  end
end
return out
"""


# --- pending -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ConsumerPending:
    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None  # Redis >= 7.2: since the last successful read
    alive: bool = False  # its heartbeat is present (dcl_worker.heartbeat)


@dataclass(slots=True)
class PendingEntry:
    entry_id: str
    consumer: str
    idle_ms: int
    deliveries: int


@dataclass(slots=True)
class PendingReport:
    connector: str
    stream: str
    group: str
    group_exists: bool
    pending: int = 0
    lag: int | None = None
    oldest_id: str | None = None
    newest_id: str | None = None
    consumers: list[ConsumerPending] = field(default_factory=list)
    oldest: list[PendingEntry] = field(default_factory=list)


async def pending_report(
    client: RedisClient, tenant: str, connector: str | None = None, limit: int = 10
) -> list[PendingReport]:
    """Per stream: who holds what (XPENDING summary + XINFO CONSUMERS), whether each consumer
    is alive (its heartbeat), the oldest entries."""
    connectors = [connector] if connector else (await scan_streams(client, tenant)).connectors
    group = keys.group(tenant)
    reports = []
    for name in connectors:
        stream = keys.stream(tenant, name)
        info = await _group_info(client, stream, group)
        report = PendingReport(name, stream, group, group_exists=info is not None)
        reports.append(report)
        if info is None:
            continue
        report.lag = info.get("lag")
        summary = await client.xpending(stream, group)
        report.pending = int(summary["pending"])
        report.oldest_id = as_text(summary["min"]) if summary["min"] else None
        report.newest_id = as_text(summary["max"]) if summary["max"] else None
        for c in await client.xinfo_consumers(stream, group):
            inactive = c.get("inactive")
            report.consumers.append(
                ConsumerPending(
                    as_text(c["name"]),
                    int(c["pending"]),
                    int(c["idle"]),
                    int(inactive) if inactive is not None and int(inactive) >= 0 else None,
                )
            )
        alive = await consumers_alive(client, tenant, [c.name for c in report.consumers])
        for holder in report.consumers:
            holder.alive = alive[holder.name]
        report.consumers.sort(key=lambda c: (-c.pending, c.name))
        if report.pending and limit > 0:
            rows = await client.xpending_range(stream, group, min="-", max="+", count=limit)
            report.oldest = [
                PendingEntry(
                    as_text(r["message_id"]),
                    as_text(r["consumer"]),
                    int(r["time_since_delivered"]),
                    int(r["times_delivered"]),
                )
                for r in rows
            ]
    return reports


async def _group_info(client: RedisClient, stream: str, group: str) -> dict[str, Any] | None:
    if not await client.exists(stream):
        return None
    for info in await client.xinfo_groups(stream):
        if as_text(info["name"]) == group:
            return dict(info)
    return None


# --- pause / resume ----------------------------------------------------------------------------


def operator() -> str:
    """``user@host`` of whoever runs the command, for the pause flag's value."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers): still say where it came from
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def pause(
    client: RedisClient, tenant: str, by: str, reason: str = ""
) -> dict[str, Any] | None:
    """Set the pause flag (workers stop reading within ~2 s); returns the previous flag."""
    value = orjson.dumps({"by": by, "at_ms": int(time.time() * 1000), "reason": reason})
    previous = await client.set(keys.paused_flag(tenant), value, get=True)
    return _flag(previous)


async def resume(client: RedisClient, tenant: str) -> dict[str, Any] | None:
    """Delete the pause flag; returns it as it was (None: the tenant was not paused)."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.get(keys.paused_flag(tenant))
        pipe.delete(keys.paused_flag(tenant))
        previous, _ = await pipe.execute()
    return _flag(previous)


def _flag(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:  # set by hand (redis-cli SET): still a pause
        return {"by": as_text(raw), "at_ms": None, "reason": ""}
    return value if isinstance(value, dict) else {"by": str(value), "at_ms": None, "reason": ""}
