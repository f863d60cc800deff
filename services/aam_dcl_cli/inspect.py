"""Read-only views of a tenant's pipeline state in Redis, for ``aam-dcl status`` and the demo."""

from __future__ import annotations

import time
from typing import Any

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.redis_conn import RedisClient, connect
from aam_dcl.streams import StreamState, read_streams, scan_streams


def stream_status(
    state: StreamState, own: str, ignore_groups: frozenset[str], now_s: float
) -> dict[str, Any]:
    """One stream: length, dead letters, and every consumer group on it with its consumers,
    pending, lag and oldest pending age; groups in ``ignore_groups`` (AAM_IGNORE_GROUPS)
    are marked ``ignored``: trimming and back-pressure do not wait for them."""
    group_rows = []
    for group in state.groups:
        age = group.oldest_pending_age_s(now_s)
        group_rows.append(
            {
                "name": group.name,
                "consumers": group.consumers,
                "pending": group.pending,
                "lag": group.lag,
                "last_delivered_id": group.last_delivered_id,
                "oldest_pending_age_s": None if age is None else round(age, 1),
                "own": group.name == own,
                "ignored": group.name in ignore_groups,
            }
        )
    group_rows.sort(key=lambda g: (not g["own"], g["name"]))  # the worker's group first
    own_row = next((g for g in group_rows if g["own"]), None)
    return {
        "connector": state.connector,
        "stream": state.stream,
        "length": state.length,
        "groups": group_rows,
        "oldest_pending_age_s": own_row["oldest_pending_age_s"] if own_row else None,
        "dead_letters": state.dead_letters,
    }


async def collect_status(settings: Settings, client: RedisClient | None = None) -> dict[str, Any]:
    own = client is None
    client = client or await connect(settings)
    try:
        tenant = settings.tenant_id
        scan = await scan_streams(client, tenant)
        states = await read_streams(
            client, tenant, scan.connectors, pending="all", dead_letters=True
        )
        now_s = time.time()
        group, ignore = keys.group(tenant), settings.ignore_groups
        processed = keys.processed_set(tenant)
        return {
            "tenant": tenant,
            "group": group,
            "streams": [stream_status(s, group, ignore, now_s) for s in states.values()],
            "processed_batches": {
                "key": processed,
                "size": await client.scard(processed),
                "ttl_s": await client.ttl(processed),
            },
            "paused": bool(await client.exists(keys.paused_flag(tenant))),
            "ignored_streams": [{"key": i.key, "reason": i.reason} for i in scan.ignored],
            "ignore_groups": sorted(settings.ignore_groups),
        }
    finally:
        if own:
            await client.aclose()


def render_status(report: dict[str, Any]) -> str:
    header = ("STREAM", "LENGTH", "GROUP", "CONSUMERS", "PENDING", "LAG", "OLDEST PENDING", "DLQ")
    rows: list[tuple[str, ...]] = [header]
    for s in report["streams"]:
        groups = s["groups"] or [{"name": "-", "consumers": 0, "pending": 0, "lag": None}]
        for g in groups:
            age = g.get("oldest_pending_age_s")
            rows.append(
                (
                    s["stream"],
                    str(s["length"]),
                    g["name"] + (" (ignored)" if g.get("ignored") else ""),
                    str(g["consumers"]),
                    str(g["pending"]),
                    "?" if g["lag"] is None else str(g["lag"]),
                    "-" if age is None else f"{age}s",
                    str(s["dead_letters"]),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    p = report["processed_batches"]
    ttl = {-2: "no key", -1: "no expiry"}.get(p["ttl_s"], f"{p['ttl_s']}s")
    lines.append("")
    lines.append(f"{p['key']}: {p['size']} batch ids, TTL {ttl}")
    if report.get("ignore_groups"):
        lines.append(
            "groups not waited for by trimming and back-pressure (AAM_IGNORE_GROUPS): "
            + ", ".join(report["ignore_groups"])
        )
    for ignored in report.get("ignored_streams", []):
        lines.append(f"ignored stream {ignored['key']}: {ignored['reason']}")
    if report["paused"]:
        lines.append(f"consumption of tenant {report['tenant']} is PAUSED (aam-dcl resume)")
    if not report["streams"]:
        lines.append(f"no streams match aam:dcl:{report['tenant']}:* yet")
    return "\n".join(lines)
