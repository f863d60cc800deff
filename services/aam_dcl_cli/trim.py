"""``aam-dcl trim``: the guide's emergency ``XTRIM MAXLEN ~ N``, refused when it would cut
entries a consumer group has not acknowledged (no unread entry is ever trimmed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import WatchError

from aam_dcl import keys
from aam_dcl.redis_conn import RedisClient
from aam_dcl.streams import GroupState, as_text, entry_id_key, next_id, read_streams
from aam_dcl_cli.ops import WATCH_RETRIES, OperationRefused

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

    @property
    def cut_end(self) -> str | None:
        """The XRANGE end of the entries an exact ``MAXLEN N`` trim deletes (None: none).

        ``MAXLEN 0`` deletes every entry: there is no N-th newest entry to keep from, so
        the cut runs to the stream's end instead of stopping before ``keep_from_id``.
        """
        if self.keep_from_id is not None:
            return "(" + self.keep_from_id
        return "+" if self.maxlen == 0 and self.length > 0 else None

    def cuts(self, entry_id: str) -> bool:
        """Whether an exact ``MAXLEN N`` trim deletes the entry ``entry_id``."""
        if self.cut_end is None:
            return False
        return self.keep_from_id is None or entry_id_key(entry_id) < entry_id_key(self.keep_from_id)


async def plan_trim(
    client: RedisClient,
    tenant: str,
    connector: str,
    maxlen: int,
    _pipe: Any = None,
    ignore_groups: frozenset[str] = frozenset(),
) -> TrimReport:
    """What ``XTRIM MAXLEN N`` would cut, per group (exact MAXLEN: ``~`` never cuts more).

    Groups in ``ignore_groups`` (AAM_IGNORE_GROUPS; never the worker's own) are left out,
    as the bridge's trimming leaves them out: nobody waits for them.
    """
    run: Any = _pipe or client
    # Read on its own connection: under the caller's WATCH, a change still aborts the trim.
    state = (await read_streams(client, tenant, [connector]))[connector]
    report = TrimReport(connector, state.stream, maxlen, state.length, None, [])
    if state.length == 0:
        return report
    if 0 < maxlen < state.length:
        keep_from = await run.eval(_NTH_NEWEST, 1, state.stream, maxlen, 1000)
        report.keep_from_id = as_text(keep_from) if keep_from else None
    first_rows = await run.xrange(state.stream, "-", "+", count=1)
    first_id = as_text(first_rows[0][0])
    own = keys.group(tenant)
    groups = {g.name: g for g in state.groups if g.name == own or g.name not in ignore_groups}
    if own not in groups:  # the worker will create it at 0 and read everything: count it
        groups[own] = GroupState(own, 0, 0, state.length, state.length, "0-0", None)
    for name in sorted(groups):
        report.groups.append(await _group_cut(run, report, groups[name], first_id))
    return report


async def _group_cut(run: Any, report: TrimReport, group: GroupState, first_id: str) -> GroupCut:
    stream, maxlen, cut_end = report.stream, report.maxlen, report.cut_end
    delivered = group.last_delivered_id
    unread = await run.xrange(stream, "(" + delivered, "+", count=1)
    oldest_unread = as_text(unread[0][0]) if unread else None
    pending_rows: list[Any] = []
    if group.pending:  # from the stream's first entry: older ids are already gone
        pending_rows = await run.xpending_range(stream, group.name, min=first_id, max="+", count=1)
    oldest_pending = as_text(pending_rows[0]["message_id"]) if pending_rows else None
    candidates = [i for i in (oldest_unread, oldest_pending) if i]
    oldest = min(candidates, key=entry_id_key) if candidates else None
    cut = GroupCut(group.name, delivered, oldest, 0, 0)
    if cut_end is None or cut.oldest_unacked_id is None or not report.cuts(cut.oldest_unacked_id):
        return cut
    if group.reported_lag is not None:  # unread entries are the newest `lag` ones
        cut.unread_cut = max(0, group.lag - maxlen)
    elif oldest_unread:
        cut.unread_cut = int(
            await run.eval(_COUNT_RANGE, 1, stream, "(" + delivered, cut_end, 1000)
        )
    if oldest_pending:
        rows = await run.xpending_range(
            stream, group.name, min=first_id, max=cut_end, count=group.pending
        )
        cut.pending_cut = len(rows)
    return cut


async def trim(
    client: RedisClient,
    tenant: str,
    connector: str,
    maxlen: int,
    *,
    force: bool = False,
    ignore_groups: frozenset[str] = frozenset(),
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
            plan = await plan_trim(client, tenant, connector, maxlen, pipe, ignore_groups)
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
            await _actual_cut(client, plan, as_text(first[0][0]))
        return plan
    raise OperationRefused(f"{stream} kept changing during {WATCH_RETRIES} attempts; try again")


async def _actual_cut(client: RedisClient, plan: TrimReport, new_first: str) -> None:
    """``~`` trims whole nodes only: count what survived between the new first entry and the
    planned cut point, and subtract it from the planned cut."""
    cut_end = plan.cut_end
    if cut_end is None or not plan.cuts(new_first):
        return
    for g in plan.groups:
        if not g.unacked_cut:
            continue
        start = max(new_first, next_id(g.last_delivered_id), key=entry_id_key)
        survived = await client.eval(_COUNT_RANGE, 1, plan.stream, start, cut_end, 1000)
        g.unread_cut = max(0, g.unread_cut - int(survived))
        if g.pending_cut:
            rows = await client.xpending_range(
                plan.stream, g.group, min=new_first, max=cut_end, count=g.pending_cut
            )
            g.pending_cut = max(0, g.pending_cut - len(rows))


def _refusal(plan: TrimReport) -> str:
    parts = [
        f"group {g.group}: {g.unread_cut} unread and {g.pending_cut} pending, "
        f"oldest unacknowledged {g.oldest_unacked_id}"
        for g in plan.groups
        if g.unacked_cut
    ]
    kept = (
        f"it would keep entries from {plan.keep_from_id} on"
        if plan.keep_from_id
        else f"it would delete all {plan.length} entries"
    )
    return (
        f"refusing to trim {plan.stream} to {plan.maxlen}: it would cut {plan.unacked_cut} "
        f"entries not yet acknowledged [{'; '.join(parts)}]; {kept}. Let the worker catch up "
        "(aam-dcl pending), choose a larger --maxlen, or pass --force to delete them anyway "
        "(they are lost)"
    )
