"""``aam-dcl watch``: publish and acknowledge rates per stream, from two samples of Redis.

Entries added/s is the delta of XINFO STREAM ``entries-added``; acked/s the delta of what
the worker's group has finished (``entries-read - pending``, or ``entries-added - lag -
pending`` where Redis has no ``entries-read``). Rendered as a refreshing rich table on a
terminal, as plain columns otherwise (scripts, ``--once``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis

from aam_dcl import keys
from aam_dcl.stream_info import group_lag
from aam_dcl_cli.inspect import scan_streams


@dataclass(frozen=True, slots=True)
class StreamSample:
    connector: str
    stream: str
    length: int
    entries_added: int
    acked: int  # entries the worker's group has finished with
    lag: int
    pending: int
    dead_letters: int


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float  # time.monotonic()
    streams: dict[str, StreamSample]


@dataclass(frozen=True, slots=True)
class Row:
    connector: str
    stream: str
    added_per_s: float | None  # None: first sample, no rate yet
    acked_per_s: float | None
    length: int
    lag: int
    pending: int
    dead_letters: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def sample(client: aioredis.Redis, tenant: str) -> Sample:
    """One reading of every stream of the tenant (its group ``dcl_engine:{tenant}``)."""
    connectors, _ = await scan_streams(client, tenant)
    own = keys.group(tenant)
    pipe = client.pipeline(transaction=False)
    for c in connectors:
        pipe.xinfo_stream(keys.stream(tenant, c))
        pipe.xinfo_groups(keys.stream(tenant, c))
        pipe.xlen(keys.dead_letter_stream(tenant, c))
    replies = await pipe.execute(raise_on_error=False) if connectors else []
    now = time.monotonic()
    streams = {}
    for i, c in enumerate(connectors):
        info, groups, dead = replies[3 * i : 3 * i + 3]
        if not isinstance(info, dict):  # the stream went away meanwhile
            continue
        group_list = groups if isinstance(groups, list) else []
        group = next((g for g in group_list if _s(g["name"]) == own), None)
        raw_added = info.get("entries-added")  # Redis >= 7.0
        added = int(info["length"] if raw_added is None else raw_added)
        lag, pending, acked = int(info["length"]), 0, 0
        if group is not None:
            lag, pending = group_lag(group, info), int(group["pending"])
            read = group.get("entries-read")
            acked = (int(read) if read is not None else added - lag) - pending
        streams[c] = StreamSample(
            c, keys.stream(tenant, c), int(info["length"]), added, max(0, acked), lag, pending,
            dead if isinstance(dead, int) else 0,
        )  # fmt: skip
    return Sample(now, streams)


def rows(current: Sample, previous: Sample | None) -> list[Row]:
    """Each stream of ``current`` with its rates since ``previous``."""
    out = []
    for c, s in sorted(current.streams.items()):
        before = previous.streams.get(c) if previous else None
        added = acked = None
        if previous is not None:
            elapsed = max(current.at_s - previous.at_s, 1e-6)
            added = (s.entries_added - (before.entries_added if before else 0)) / elapsed
            acked = (s.acked - (before.acked if before else 0)) / elapsed
        out.append(Row(c, s.stream, added, acked, s.length, s.lag, s.pending, s.dead_letters))
    return out


HEADER = ("CONNECTOR", "ADDED/S", "ACKED/S", "LENGTH", "LAG", "PENDING", "DLQ")


def cells(row: Row) -> tuple[str, ...]:
    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    return (
        row.connector, rate(row.added_per_s), rate(row.acked_per_s), str(row.length),
        str(row.lag), str(row.pending), str(row.dead_letters),
    )  # fmt: skip


def render_plain(table_rows: list[Row], tenant: str) -> str:
    if not table_rows:
        return f"no streams match {keys.stream_pattern(tenant)} yet"
    lines = [HEADER, *(cells(r) for r in table_rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )


def render_rich(table_rows: list[Row], tenant: str, interval_s: float) -> Any:
    from rich.table import Table

    table = Table(
        title=f"tenant {tenant}: streams {keys.stream_pattern(tenant)}, group "
        f"{keys.group(tenant)} (every {interval_s:g}s, Ctrl-C to stop)",
        title_justify="left",
    )
    for i, name in enumerate(HEADER):
        table.add_column(name, justify="left" if i == 0 else "right")
    for r in table_rows:
        table.add_row(*cells(r))
    return table


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
