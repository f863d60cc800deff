"""Reading a stream's and a group's state right, for the bridge, the worker and the CLI.

XINFO GROUPS' ``lag`` is an estimate: nil after entries were trimmed from under the group,
and overstated for good after Redis replays an AOF whose group counter is stale (Redis 7.0
logs XREADGROUP as XCLAIM without entries-read). ``group_lag`` corrects it with facts that
are always right: a group that has delivered the stream's last entry has no lag, and lag
never exceeds the stream's length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
