"""Reading Redis Streams, done once for the bridge, the worker and the CLI: entry ids, finding a
tenant's connector streams, creating the group, and reading a stream's group state.

Groups are created at ``0`` with MKSTREAM, never at ``$`` (that would skip what is already in
the stream); an existing group (BUSYGROUP) is fine.

XINFO GROUPS' ``lag`` is an estimate: nil after entries were trimmed from under the group,
and overstated for good after Redis replays an AOF whose group counter is stale (Redis 7.0
logs XREADGROUP as XCLAIM without entries-read). ``group_lag`` corrects it with facts that
are always right: a group that has delivered the stream's last entry has no lag, and lag
never exceeds the stream's length.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from redis.exceptions import ResponseError

from aam_dcl import keys
from aam_dcl.redis_conn import RedisClient

log = structlog.get_logger("aam_dcl.streams")

ENTRY_ID_RE = re.compile(r"^\d{1,20}-\d{1,20}$")
_SCAN_COUNT = 1000

# --- replies and entry ids ---------------------------------------------------------------------


def as_text(value: object) -> str:
    """A key, field, name or id from a Redis reply as text (the clients do not decode
    responses, so replies are bytes); undecodable bytes are replaced, never an error."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def entry_id_key(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id ``ms-seq`` as a sortable pair."""
    ms, _, seq = as_text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def next_id(entry_id: bytes | str) -> str:
    """The smallest entry id after ``entry_id``."""
    ms, seq = entry_id_key(entry_id)
    return f"{ms}-{seq + 1}"


def is_entry_id(text: str) -> bool:
    """Whether ``text`` is a complete entry id ``ms-seq`` (checks input before Redis sees it)."""
    return ENTRY_ID_RE.match(text) is not None


# --- groups ------------------------------------------------------------------------------------


async def consumers_alive(
    client: RedisClient, tenant: str, names: Sequence[str]
) -> dict[str, bool]:
    """Whether each consumer's heartbeat (``keys.consumer_heartbeat``) is present. Idle time
    alone misleads: on Redis 7.0 a live consumer blocked in XREADGROUP grows idle too."""
    if not names:
        return {}
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.exists(keys.consumer_heartbeat(tenant, name))
    return {name: bool(found) for name, found in zip(names, await pipe.execute(), strict=True)}


async def create_group(client: RedisClient, stream: str, group: str) -> None:
    """XGROUP CREATE stream group 0 MKSTREAM, tolerating a group that already exists."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        log.info("group_created", stream=stream, group=group)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def group_lag(group: Mapping[str, Any], stream: Mapping[str, Any]) -> int:
    """Entries not yet delivered to ``group`` (an XINFO GROUPS row), given XINFO STREAM."""
    length = int(stream["length"])
    if entry_id_key(group["last-delivered-id"]) >= entry_id_key(stream["last-generated-id"]):
        return 0
    lag = group.get("lag")
    return length if lag is None else min(length, int(lag))


# --- finding streams ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IgnoredStream:
    """A stream under ``aam:dcl:{tenant}:`` that is no connector's: the worker leaves it."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class StreamScan:
    connectors: list[str]  # sorted
    ignored: list[IgnoredStream]  # sorted by key


async def scan_streams(client: RedisClient, tenant: str) -> StreamScan:
    """The tenant's connector streams (SCAN aam:dcl:{tenant}:* TYPE stream), and the streams
    there whose name is no connector's, each with the reason."""
    names: list[str] = []
    ignored: list[IgnoredStream] = []
    async for raw in client.scan_iter(
        match=keys.stream_pattern(tenant), count=_SCAN_COUNT, _type="stream"
    ):
        try:
            key = raw.decode()
        except UnicodeDecodeError:
            shown = raw.decode(errors="backslashreplace")
            ignored.append(IgnoredStream(shown, "the key is not valid UTF-8"))
            continue
        name = keys.connector_of_stream(tenant, key)
        if name:
            names.append(name)
        else:
            reason = keys.stream_key_problem(tenant, key) or "not a connector stream"
            ignored.append(IgnoredStream(key, reason))
    return StreamScan(sorted(names), sorted(ignored, key=lambda i: i.key))


async def scan_dead_letter_streams(client: RedisClient, tenant: str) -> list[str]:
    """Connectors of the tenant that have a dead-letter stream (SCAN aam:dlq:{aam:dcl:t:*})."""
    found = set()
    async for key in client.scan_iter(
        match=keys.dead_letter_pattern(tenant), count=_SCAN_COUNT, _type="stream"
    ):
        name = keys.connector_of_dead_letter_stream(tenant, as_text(key))
        if name:
            found.add(name)
    return sorted(found)


# --- stream and group state --------------------------------------------------------------------

Pending = Literal["none", "own", "all"]


@dataclass(frozen=True, slots=True)
class GroupState:
    """One consumer group on a stream, as XINFO GROUPS and XPENDING tell it."""

    name: str
    consumers: int
    pending: int  # delivered, not acknowledged
    lag: int  # not yet delivered (``group_lag``: corrected, never None)
    reported_lag: int | None  # XINFO's own lag; None when Redis cannot tell
    last_delivered_id: str
    entries_read: int | None  # Redis >= 7.0
    oldest_pending_id: str | None = None  # None: nothing pending, or not read

    def oldest_pending_age_s(self, now_s: float) -> float | None:
        """Age of the oldest pending entry by its id (None: nothing pending, or not read)."""
        if self.oldest_pending_id is None:
            return None
        return max(0.0, now_s - entry_id_key(self.oldest_pending_id)[0] / 1000)

    @property
    def unacked_from(self) -> str:
        """The lowest id the group may not have acknowledged: its oldest pending entry, else
        the id after its last delivered one. Trimming below it loses nothing of the group's."""
        after = next_id(self.last_delivered_id)
        oldest = self.oldest_pending_id
        if oldest is not None and entry_id_key(oldest) < entry_id_key(after):
            return oldest
        return after


@dataclass(frozen=True, slots=True)
class StreamState:
    """One connector stream: its length and every group on it (``exists`` False: no stream)."""

    connector: str
    stream: str
    exists: bool
    length: int
    last_generated_id: str
    entries_added: int | None  # Redis >= 7.0
    groups: list[GroupState]  # in Redis' order
    dead_letters: int  # XLEN of the dead-letter stream; 0 unless asked for

    def group(self, name: str) -> GroupState | None:
        return next((g for g in self.groups if g.name == name), None)


async def read_streams(
    client: RedisClient,
    tenant: str,
    connectors: Sequence[str],
    *,
    pending: Pending = "none",
    dead_letters: bool = False,
) -> dict[str, StreamState]:
    """The state of the tenant's ``connectors``' streams, by connector.

    One pipeline reads XINFO STREAM and XINFO GROUPS of every stream, with ``pending`` "own"
    or "all" the XPENDING summary of the tenant's group (its oldest pending entry), with
    ``dead_letters`` the XLEN of each dead-letter stream. With ``pending="all"``, a second
    pipeline reads the other groups' XPENDING, if there are other groups. A missing stream
    or group is no error; any other error reply (NOPERM, WRONGTYPE) is raised.
    """
    own = keys.group(tenant)
    pipe = client.pipeline(transaction=False)
    for connector in connectors:
        stream = keys.stream(tenant, connector)
        pipe.xinfo_stream(stream)
        pipe.xinfo_groups(stream)
        if pending != "none":
            pipe.xpending(stream, own)
        if dead_letters:
            pipe.xlen(keys.dead_letter_stream(tenant, connector))
    replies = iter(await pipe.execute(raise_on_error=False) if connectors else [])
    read: dict[str, _Replies] = {}
    for connector in connectors:
        info, groups = _present(next(replies)), _present(next(replies))
        got = _Replies(keys.stream(tenant, connector), info, groups or [])
        if pending != "none":
            got.summaries[own] = _present(next(replies))
        if dead_letters:
            got.dead_letters = int(_present(next(replies)) or 0)
        read[connector] = got
    if pending == "all":
        await _read_other_pending(client, list(read.values()))
    return {connector: got.state(connector) for connector, got in read.items()}


@dataclass(slots=True)
class _Replies:
    """What Redis answered about one stream, before it becomes a StreamState."""

    stream: str
    info: Any  # XINFO STREAM; None: no stream
    groups: list[Any]  # XINFO GROUPS rows
    summaries: dict[str, Any] = field(default_factory=dict)  # group -> XPENDING summary
    dead_letters: int = 0

    def state(self, connector: str) -> StreamState:
        info = self.info
        if info is None:
            return StreamState(connector, self.stream, False, 0, "0-0", None, [], self.dead_letters)
        added = info.get("entries-added")
        groups = [
            _group_state(r, info, self.summaries.get(as_text(r["name"]))) for r in self.groups
        ]
        return StreamState(
            connector=connector,
            stream=self.stream,
            exists=True,
            length=int(info["length"]),
            last_generated_id=as_text(info["last-generated-id"]),
            entries_added=None if added is None else int(added),
            groups=groups,
            dead_letters=self.dead_letters,
        )


async def _read_other_pending(client: RedisClient, read: list[_Replies]) -> None:
    """The XPENDING summary of every group not read yet (one pipeline), into ``read``."""
    wanted = [
        (got, as_text(row["name"]))
        for got in read
        for row in got.groups
        if as_text(row["name"]) not in got.summaries
    ]
    if not wanted:
        return
    pipe = client.pipeline(transaction=False)
    for got, group in wanted:
        pipe.xpending(got.stream, group)
    replies = await pipe.execute(raise_on_error=False)
    for (got, group), reply in zip(wanted, replies, strict=True):
        got.summaries[group] = _present(reply)


def _present(reply: Any) -> Any:
    """A reply, None for a missing stream or group; any other error reply is raised."""
    if not isinstance(reply, Exception):
        return reply
    text = str(reply)
    if isinstance(reply, ResponseError) and ("no such key" in text or "NOGROUP" in text):
        return None
    raise reply


def _group_state(row: Mapping[str, Any], info: Mapping[str, Any], summary: Any) -> GroupState:
    reported, read = row.get("lag"), row.get("entries-read")
    oldest = None
    if isinstance(summary, dict) and summary.get("pending") and summary.get("min"):
        oldest = as_text(summary["min"])
    return GroupState(
        name=as_text(row["name"]),
        consumers=int(row["consumers"]),
        pending=int(row["pending"]),
        lag=group_lag(row, info),
        reported_lag=None if reported is None else int(reported),
        last_delivered_id=as_text(row["last-delivered-id"]),
        entries_read=None if read is None else int(read),
        oldest_pending_id=oldest,
    )
