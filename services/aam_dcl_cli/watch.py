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

from aam_dcl import keys
from aam_dcl.redis_conn import RedisClient
from aam_dcl.streams import read_streams, scan_streams


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


async def sample(client: RedisClient, tenant: str) -> Sample:
    """One reading of every stream of the tenant (its group ``dcl_engine:{tenant}``)."""
    scan = await scan_streams(client, tenant)
    states = await read_streams(client, tenant, scan.connectors, dead_letters=True)
    now = time.monotonic()
    own = keys.group(tenant)
    streams = {}
    for c, state in states.items():
        if not state.exists:  # the stream went away meanwhile
            continue
        added = state.length if state.entries_added is None else state.entries_added
        lag, pending, acked = state.length, 0, 0
        group = state.group(own)
        if group is not None:
            lag, pending = group.lag, group.pending
            read = group.entries_read
            acked = (read if read is not None else added - lag) - pending
        streams[c] = StreamSample(
            c, state.stream, state.length, added, max(0, acked), lag, pending, state.dead_letters
        )
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
