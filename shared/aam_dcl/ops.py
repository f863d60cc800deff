"""The operator's commands on a tenant's Redis state: dead letters, pending, trim, pause, ACLs.

Every function takes a Redis client and a tenant and returns plain data (dataclasses); the
``aam-dcl`` CLI only formats it. Writes that must happen together run in one MULTI, under
WATCH where a concurrent change would make them wrong (docs/operations-cli.md).
"""

from __future__ import annotations

import getpass
import hashlib
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from aam_dcl import keys
from aam_dcl.errors import AamDclError

ENTRY_ID_RE = re.compile(r"^\d{1,20}-\d{1,20}$")
PAGE = 100  # dead letters per MULTI when replaying or purging --all
WATCH_RETRIES = 20

# The N-th newest entry id (where a MAXLEN N trim keeps from), paging inside Redis so that
# payloads never cross the network; nil when the stream has fewer than N entries.
_NTH_NEWEST = """
local key, n, page = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local last, seen, id = '+', 0, false
while seen < n do
  local want = math.min(page, n - seen)
  local r = redis.call('XREVRANGE', key, last, '-', 'COUNT', want)
  if #r == 0 then return false end
  seen = seen + #r
  id = r[#r][1]
  if #r < want then return false end
  last = '(' .. id
end
return id
"""

# Entries in [ARGV[1], ARGV[2]] (ranges may be exclusive with '('), counted inside Redis.
_COUNT_RANGE = """
local key, first, last, page = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local count = 0
while true do
  local r = redis.call('XRANGE', key, first, last, 'COUNT', page)
  count = count + #r
  if #r < page then return count end
  first = '(' .. r[#r][1]
end
"""


class OperationRefused(AamDclError):
    """The operation would lose data or names something that is not there; nothing was done."""


# --- stream ids ----------------------------------------------------------------------------


def parse_id(entry_id: str | bytes) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def check_ids(entry_ids: Sequence[str]) -> list[str]:
    """Reject anything that is not a stream id before it reaches Redis."""
    bad = [e for e in entry_ids if not ENTRY_ID_RE.match(e)]
    if bad:
        raise OperationRefused(
            f"not a stream entry id: {', '.join(bad)} (use e.g. 1762299908994-0)"
        )
    return list(entry_ids)


def _s(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _next_id(entry_id: str) -> str:
    ms, seq = parse_id(entry_id)
    return f"{ms}-{seq + 1}"


# --- dead letters ------------------------------------------------------------------------------


@dataclass(slots=True)
class DeadLetter:
    """One entry of ``aam:dlq:{tenant}:{connector}``, as the worker's finalize script wrote it."""

    entry_id: str
    connector: str
    original_id: str
    source_stream: str
    batch_id: str
    payload: bytes
    deliveries: int
    error_type: str
    error: str
    failed_at_ms: int
    consumer: str

    @classmethod
    def from_entry(
        cls, connector: str, entry_id: bytes | str | None, fields: Mapping[Any, Any] | None
    ) -> DeadLetter:
        fields = fields or {}

        def text(name: str) -> str:
            return _s(fields.get(name.encode(), b""))

        def number(name: str) -> int:
            value = text(name)
            return int(value) if value.isdigit() else 0

        return cls(
            entry_id=_s(entry_id),
            connector=connector,
            original_id=text("original_id"),
            source_stream=text("source_stream"),
            batch_id=text("batch_id"),
            payload=fields.get(b"payload", b""),
            deliveries=number("deliveries"),
            error_type=text("error_type"),
            error=text("error"),
            failed_at_ms=number("failed_at_ms"),
            consumer=text("consumer"),
        )

    def payload_json(self) -> Any | None:
        """The payload parsed as JSON, or None when it is not JSON (then show it escaped)."""
        try:
            return orjson.loads(self.payload)
        except orjson.JSONDecodeError:
            return None

    def to_json(self) -> dict[str, Any]:
        parsed = self.payload_json()
        return {
            "entry_id": self.entry_id,
            "connector": self.connector,
            "original_id": self.original_id,
            "source_stream": self.source_stream,
            "batch_id": self.batch_id,
            "deliveries": self.deliveries,
            "error_type": self.error_type,
            "error": self.error,
            "failed_at_ms": self.failed_at_ms,
            "consumer": self.consumer,
            "payload_bytes": len(self.payload),
            "payload_is_json": parsed is not None,
            "payload": parsed if parsed is not None else escaped(self.payload),
        }


def escaped(raw: bytes) -> str:
    """Bytes shown safely: valid UTF-8 as text, anything else as backslash escapes."""
    return raw.decode("utf-8", errors="backslashreplace")


@dataclass(slots=True)
class DeadLetterList:
    entries: list[DeadLetter]
    totals: dict[str, int]  # connector -> dead letters in its stream


async def dead_letter_connectors(client: aioredis.Redis, tenant: str) -> list[str]:
    """Connectors of this tenant that have a dead-letter stream (SCAN aam:dlq:{tenant}:*)."""
    prefix = keys.dead_letter_stream(tenant, "")
    found = set()
    async for key in client.scan_iter(
        match=keys.dead_letter_pattern(tenant), count=1000, _type="stream"
    ):
        name = _s(key)[len(prefix) :]
        if keys.NAME_RE.match(name):
            found.add(name)
    return sorted(found)


async def list_dead_letters(
    client: aioredis.Redis, tenant: str, connector: str | None = None, limit: int = 50
) -> DeadLetterList:
    """The oldest ``limit`` dead letters (of one connector, or all), with per-connector totals."""
    connectors = [connector] if connector else await dead_letter_connectors(client, tenant)
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
    entries.sort(key=lambda d: parse_id(d.entry_id))
    return DeadLetterList(entries[:limit], totals)


async def get_dead_letter(
    client: aioredis.Redis, tenant: str, connector: str, entry_id: str
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
    client: aioredis.Redis, tenant: str, connector: str, entry_ids: Sequence[str] | None
) -> DeadLetterChange:
    """Re-publish dead letters' payloads to the connector stream and delete them, atomically.

    ``entry_ids`` None replays every dead letter present when the call starts (not those that
    a replay makes fail again). Per dead letter, one MULTI: take its batch id out of the
    processed SET and expiry ZSET if it is there (so the store's inbox, not the cache,
    decides whether it was applied), XADD its payload to ``aam:dcl:{tenant}:{connector}``,
    XDEL it. It runs under WATCH of the dead-letter stream and re-reads the entries, so two
    operators replaying at once cannot both re-publish the same dead letter.
    """
    return await _change_dead_letters(client, tenant, connector, entry_ids, replay=True)


async def purge_dead_letters(
    client: aioredis.Redis, tenant: str, connector: str, entry_ids: Sequence[str] | None
) -> DeadLetterChange:
    """Delete dead letters (``None``: every one present when the call starts)."""
    return await _change_dead_letters(client, tenant, connector, entry_ids, replay=False)


async def _change_dead_letters(
    client: aioredis.Redis,
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
    end = _s(newest[0][0])  # a replay that fails again lands after this: not replayed again
    cursor = "-"
    while True:
        rows = await client.xrange(dlq, cursor, end, count=PAGE)
        if not rows:
            return result
        page = [_s(eid) for eid, _ in rows]
        await _change_page(client, tenant, connector, page, result, replay)
        cursor = "(" + page[-1]


async def _change_page(
    client: aioredis.Redis,
    tenant: str,
    connector: str,
    ids: list[str],
    result: DeadLetterChange,
    replay: bool,
) -> None:
    dlq = keys.dead_letter_stream(tenant, connector)
    for _ in range(WATCH_RETRIES):
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch(dlq)
            found: list[DeadLetter] = []
            for entry_id in ids:
                rows = await pipe.xrange(dlq, entry_id, entry_id)
                if rows:
                    found.append(DeadLetter.from_entry(connector, rows[0][0], rows[0][1]))
            pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            for dead in found:
                if replay:
                    _queue_replay(pipe, tenant, connector, dead)
                pipe.xdel(dlq, dead.entry_id)
            try:
                replies = await pipe.execute() if found else []
            except WatchError:
                continue  # the worker added a dead letter, or another operator acted: re-read
        present = {d.entry_id for d in found}
        result.missing += [i for i in ids if i not in present]
        result.done += [d.entry_id for d in found]
        if replay:
            _collect_replay(found, replies, result)
        return
    raise OperationRefused(f"{dlq} kept changing during {WATCH_RETRIES} attempts; try again")


def _queue_replay(pipe: Any, tenant: str, connector: str, dead: DeadLetter) -> None:
    if dead.batch_id:
        pipe.srem(keys.processed_set(tenant), dead.batch_id)
        pipe.zrem(keys.processed_expiry(tenant), dead.batch_id)
    # No MAXLEN here: trimming while re-publishing could cut entries the group has not read.
    pipe.xadd(keys.stream(tenant, connector), {"payload": dead.payload})


def _collect_replay(found: list[DeadLetter], replies: list[Any], result: DeadLetterChange) -> None:
    i = 0
    for dead in found:
        if dead.batch_id:
            if replies[i]:
                result.unmarked.append(dead.batch_id)
            i += 2
        result.new_ids.append(_s(replies[i]))
        i += 2  # XADD, XDEL


# --- pending -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ConsumerPending:
    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None  # Redis >= 7.2: since the last successful read


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


async def stream_connectors(client: aioredis.Redis, tenant: str) -> list[str]:
    from aam_dcl.inspect import list_streams

    return await list_streams(client, tenant)


async def pending_report(
    client: aioredis.Redis, tenant: str, connector: str | None = None, limit: int = 10
) -> list[PendingReport]:
    """Per stream: who holds what (XPENDING summary + XINFO CONSUMERS), the oldest entries."""
    connectors = [connector] if connector else await stream_connectors(client, tenant)
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
        report.oldest_id = _s(summary["min"]) if summary["min"] else None
        report.newest_id = _s(summary["max"]) if summary["max"] else None
        for c in await client.xinfo_consumers(stream, group):
            inactive = c.get("inactive")
            report.consumers.append(
                ConsumerPending(
                    _s(c["name"]),
                    int(c["pending"]),
                    int(c["idle"]),
                    int(inactive) if inactive is not None and int(inactive) >= 0 else None,
                )
            )
        report.consumers.sort(key=lambda c: (-c.pending, c.name))
        if report.pending and limit > 0:
            rows = await client.xpending_range(stream, group, min="-", max="+", count=limit)
            report.oldest = [
                PendingEntry(
                    _s(r["message_id"]),
                    _s(r["consumer"]),
                    int(r["time_since_delivered"]),
                    int(r["times_delivered"]),
                )
                for r in rows
            ]
    return reports


async def _group_info(client: aioredis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    if not await client.exists(stream):
        return None
    for info in await client.xinfo_groups(stream):
        if _s(info["name"]) == group:
            return dict(info)
    return None


# --- trim --------------------------------------------------------------------------------------


@dataclass(slots=True)
class GroupCut:
    """What a trim would cut (or cut) from one consumer group's unfinished work."""

    group: str
    last_delivered_id: str
    oldest_unacked_id: str | None
    unread_cut: int  # never delivered to the group
    pending_cut: int  # delivered, not acknowledged

    @property
    def unacked_cut(self) -> int:
        return self.unread_cut + self.pending_cut


@dataclass(slots=True)
class TrimReport:
    connector: str
    stream: str
    maxlen: int
    length: int
    keep_from_id: str | None  # the N-th newest entry: an exact MAXLEN N trim keeps it and newer
    groups: list[GroupCut]
    trimmed: int | None = None  # entries deleted; None when not trimmed
    forced: bool = False

    @property
    def unacked_cut(self) -> int:
        return sum(g.unacked_cut for g in self.groups)


async def plan_trim(
    client: aioredis.Redis, tenant: str, connector: str, maxlen: int, _pipe: Any = None
) -> TrimReport:
    """What ``XTRIM MAXLEN N`` would cut, per group (exact MAXLEN: ``~`` never cuts more)."""
    run: Any = _pipe or client
    stream = keys.stream(tenant, connector)
    length = int(await run.xlen(stream))
    report = TrimReport(connector, stream, maxlen, length, None, [])
    if length == 0:
        return report
    keep_from = await run.eval(_NTH_NEWEST, 1, stream, maxlen, 1000) if length > maxlen else None
    report.keep_from_id = _s(keep_from) if keep_from else None
    first_rows = await run.xrange(stream, "-", "+", count=1)
    first_id = _s(first_rows[0][0])
    groups = {_s(g["name"]): dict(g) for g in await run.xinfo_groups(stream)}
    own = keys.group(tenant)
    if own not in groups:  # the worker will create it at 0 and read everything: count it
        groups[own] = {"last-delivered-id": b"0-0", "pending": 0, "lag": length}
    for name, info in sorted(groups.items()):
        report.groups.append(
            await _group_cut(run, stream, name, info, first_id, report.keep_from_id, maxlen)
        )
    return report


async def _group_cut(
    run: Any,
    stream: str,
    group: str,
    info: dict[str, Any],
    first_id: str,
    keep_from: str | None,
    maxlen: int,
) -> GroupCut:
    delivered = _s(info["last-delivered-id"])
    unread = await run.xrange(stream, "(" + delivered, "+", count=1)
    oldest_unread = _s(unread[0][0]) if unread else None
    pending_rows: list[Any] = []
    if int(info["pending"]):  # from the stream's first entry: older ids are already gone
        pending_rows = await run.xpending_range(stream, group, min=first_id, max="+", count=1)
    oldest_pending = _s(pending_rows[0]["message_id"]) if pending_rows else None
    candidates = [i for i in (oldest_unread, oldest_pending) if i]
    cut = GroupCut(group, delivered, min(candidates, key=parse_id) if candidates else None, 0, 0)
    if keep_from is None or cut.oldest_unacked_id is None:
        return cut
    if parse_id(cut.oldest_unacked_id) >= parse_id(keep_from):
        return cut
    lag = info.get("lag")
    if lag is not None:  # unread entries are the newest `lag` ones
        cut.unread_cut = max(0, int(lag) - maxlen)
    elif oldest_unread:
        cut.unread_cut = int(
            await run.eval(_COUNT_RANGE, 1, stream, "(" + delivered, "(" + keep_from, 1000)
        )
    if oldest_pending:
        rows = await run.xpending_range(
            stream, group, min=first_id, max="(" + keep_from, count=int(info["pending"])
        )
        cut.pending_cut = len(rows)
    return cut


async def trim(
    client: aioredis.Redis, tenant: str, connector: str, maxlen: int, *, force: bool = False
) -> TrimReport:
    """``XTRIM MAXLEN ~ maxlen``, refused (OperationRefused) if it would cut unacked entries.

    The check and the trim run under WATCH of the stream: an XADD in between (which moves
    the cut point) makes the check run again. With ``force`` the report's groups say how
    many unacknowledged entries were actually cut.
    """
    stream = keys.stream(tenant, connector)
    for _ in range(WATCH_RETRIES):
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch(stream)
            plan = await plan_trim(client, tenant, connector, maxlen, _pipe=pipe)
            if plan.unacked_cut and not force:
                raise OperationRefused(_refusal(plan))
            pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            pipe.xtrim(stream, maxlen=maxlen, approximate=True)
            pipe.xrange(stream, "-", "+", count=1)
            try:
                trimmed, first = await pipe.execute()
            except WatchError:
                continue
        plan.trimmed, plan.forced = int(trimmed), force and plan.unacked_cut > 0
        if plan.unacked_cut and first:
            await _actual_cut(client, plan, _s(first[0][0]))
        return plan
    raise OperationRefused(f"{stream} kept changing during {WATCH_RETRIES} attempts; try again")


async def _actual_cut(client: aioredis.Redis, plan: TrimReport, new_first: str) -> None:
    """``~`` trims whole nodes only: count what survived between the new first entry and the
    planned cut point, and subtract it from the planned cut."""
    if plan.keep_from_id is None or parse_id(new_first) >= parse_id(plan.keep_from_id):
        return
    for g in plan.groups:
        if not g.unacked_cut:
            continue
        start = max(new_first, _next_id(g.last_delivered_id), key=parse_id)
        survived = await client.eval(
            _COUNT_RANGE, 1, plan.stream, start, "(" + plan.keep_from_id, 1000
        )
        g.unread_cut = max(0, g.unread_cut - int(survived))
        if g.pending_cut:
            rows = await client.xpending_range(
                plan.stream,
                g.group,
                min=new_first,
                max="(" + plan.keep_from_id,
                count=g.pending_cut,
            )
            g.pending_cut = max(0, g.pending_cut - len(rows))


def _refusal(plan: TrimReport) -> str:
    parts = [
        f"group {g.group}: {g.unread_cut} unread and {g.pending_cut} pending "
        f"(oldest unacknowledged {g.oldest_unacked_id})"
        for g in plan.groups
        if g.unacked_cut
    ]
    return (
        f"refusing to trim {plan.stream} to {plan.maxlen}: it would cut {plan.unacked_cut} "
        f"entries not yet acknowledged ({'; '.join(parts)}); the trim keeps entries from "
        f"{plan.keep_from_id}. Let the worker catch up (aam-dcl pending), choose a larger "
        "--maxlen, or pass --force to delete them anyway (they are lost)"
    )


# --- pause / resume ----------------------------------------------------------------------------


def operator() -> str:
    """``user@host`` of whoever runs the command, for the pause flag's value."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers): still say where it came from
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def pause(
    client: aioredis.Redis, tenant: str, by: str, reason: str = ""
) -> dict[str, Any] | None:
    """Set the pause flag (workers stop reading within ~2 s); returns the previous flag."""
    value = orjson.dumps({"by": by, "at_ms": int(time.time() * 1000), "reason": reason})
    previous = await client.set(keys.paused_flag(tenant), value, get=True)
    return _flag(previous)


async def resume(client: aioredis.Redis, tenant: str) -> dict[str, Any] | None:
    """Delete the pause flag; returns it as it was (None: the tenant was not paused)."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.get(keys.paused_flag(tenant))
        pipe.delete(keys.paused_flag(tenant))
        previous, _ = await pipe.execute()
    return _flag(previous)


async def pause_state(client: aioredis.Redis, tenant: str) -> dict[str, Any] | None:
    return _flag(await client.get(keys.paused_flag(tenant)))


def _flag(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:  # set by hand (redis-cli SET): still a pause
        return {"by": escaped(raw), "at_ms": None, "reason": ""}
    return value if isinstance(value, dict) else {"by": str(value), "at_ms": None, "reason": ""}


# --- ACL ---------------------------------------------------------------------------------------

# Connection set-up a client may send. Not CLIENT SETINFO: Redis 7.0 rejects the rule (it
# came in 7.2); redis-py ignores the NOPERM it gets for it on connect.
_CONNECTION = ["ping", "hello", "auth", "client|setname", "client|id"]
_TRANSACTION = ["multi", "exec", "discard", "watch", "unwatch"]

ROLE_COMMANDS: dict[str, list[str]] = {
    "bridge": [
        *_CONNECTION, *_TRANSACTION,
        "xadd", "xgroup|create", "xinfo|groups", "xlen", "hset", "hgetall",
    ],
    "worker": [
        *_CONNECTION, *_TRANSACTION,
        "scan", "exists", "xgroup|create", "xreadgroup", "xack", "xautoclaim", "xpending",
        "xinfo|groups", "xlen", "smismember", "scard",
        # the finalize script (EVALSHA, loaded on NOSCRIPT) and what it calls
        "evalsha", "eval", "script|load", "script|exists", "xadd", "sadd", "srem", "zadd",
        "zrangebyscore", "zrem", "expire",
    ],
    "operator": [
        *_CONNECTION, *_TRANSACTION,
        "scan", "exists", "ttl", "get", "set", "del", "xlen", "xrange", "xrevrange",
        "xinfo|groups", "xinfo|consumers", "xinfo|stream", "xpending", "xadd", "xdel", "xtrim",
        "scard", "sismember", "srem", "zrem", "eval", "evalsha", "script|load",
    ],
}  # fmt: skip


def role_key_patterns(role: str, tenant: str) -> list[str]:
    """Key permissions of a role: ``~`` read+write, ``%R~`` read only (Redis >= 7)."""
    streams = f"~{keys.stream_pattern(tenant)}"
    dlq = f"~{keys.dead_letter_pattern(tenant)}"
    sync = f"~{keys.sync_state(tenant, '*')}"
    processed = [f"~{keys.processed_set(tenant)}", f"~{keys.processed_expiry(tenant)}"]
    paused = keys.paused_flag(tenant)
    if role == "bridge":
        return [streams, sync]
    if role == "worker":
        return [streams, dlq, *processed, f"%R~{paused}"]
    return [streams, dlq, sync, *processed, f"~{paused}"]


@dataclass(slots=True)
class AclUser:
    user: str
    role: str
    rules: list[str]
    has_password: bool

    def command(self) -> str:
        return " ".join(["ACL", "SETUSER", self.user, *self.rules])


def acl_users(
    tenant: str, password: str | None, roles: Sequence[str] = ("bridge", "worker")
) -> list[AclUser]:
    """``ACL SETUSER`` rules of per-tenant users that can touch only this tenant's keys.

    ``reset`` first, so re-applying replaces rules instead of adding to them. The password is
    given as its SHA-256 (``#hex``), so the output never carries the secret; without one the
    user cannot log in until a password is added. SCAN is keyless: ACL cannot restrict which
    key *names* it returns (the worker only asks for its own pattern).
    """
    keys.validate_name(tenant, "tenant")
    users = []
    for role in roles:
        secret = [f"#{hashlib.sha256(password.encode()).hexdigest()}"] if password else []
        rules = [
            "reset", "on", *secret, "resetchannels", *role_key_patterns(role, tenant),
            "-@all", *(f"+{c}" for c in ROLE_COMMANDS[role]),
        ]  # fmt: skip
        users.append(AclUser(f"aam-{role}-{tenant}", role, rules, bool(password)))
    return users
