"""Read-only views of a tenant's pipeline state in Redis, for ``aam-dcl status`` and the demo."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.redis_conn import connect
from aam_dcl.stream_info import group_lag


async def list_streams(client: aioredis.Redis, tenant: str) -> list[str]:
    """Connector names with a stream of this tenant (SCAN aam:dcl:{tenant}:*)."""
    names = []
    async for key in client.scan_iter(
        match=keys.stream_pattern(tenant), count=1000, _type="stream"
    ):
        name = keys.connector_of_stream(tenant, key.decode())
        if name:
            names.append(name)
    return sorted(names)


async def stream_status(client: aioredis.Redis, tenant: str, connector: str) -> dict[str, Any]:
    stream = keys.stream(tenant, connector)
    pipe = client.pipeline(transaction=False)
    pipe.xinfo_stream(stream)
    pipe.xinfo_groups(stream)
    pipe.xlen(keys.dead_letter_stream(tenant, connector))
    pipe.xpending(stream, keys.group(tenant))
    info_stream, groups, dead, pending = await pipe.execute(raise_on_error=False)
    if not isinstance(info_stream, dict):  # the stream went away meanwhile
        info_stream = {"length": 0, "last-generated-id": b"0-0"}
    group_rows = []
    for info in groups if isinstance(groups, list) else []:
        group_rows.append(
            {
                "name": _s(info["name"]),
                "consumers": info["consumers"],
                "pending": info["pending"],
                "lag": group_lag(info, info_stream),
                "last_delivered_id": _s(info["last-delivered-id"]),
            }
        )
    oldest_age_s = None
    if isinstance(pending, dict) and pending.get("min"):
        oldest_age_s = round(time.time() - int(pending["min"].split(b"-")[0]) / 1000, 1)
    return {
        "connector": connector,
        "stream": stream,
        "length": info_stream["length"],
        "groups": group_rows,
        "oldest_pending_age_s": oldest_age_s,
        "dead_letters": dead if isinstance(dead, int) else 0,
    }


async def collect_status(
    settings: Settings, client: aioredis.Redis | None = None
) -> dict[str, Any]:
    own = client is None
    client = client or connect(settings)
    try:
        tenant = settings.tenant_id
        streams = [
            await stream_status(client, tenant, c) for c in await list_streams(client, tenant)
        ]
        processed = keys.processed_set(tenant)
        return {
            "tenant": tenant,
            "group": keys.group(tenant),
            "streams": streams,
            "processed_batches": {
                "key": processed,
                "size": await client.scard(processed),
                "ttl_s": await client.ttl(processed),
            },
            "paused": bool(await client.exists(keys.paused_flag(tenant))),
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
            age = s["oldest_pending_age_s"]
            rows.append(
                (
                    s["stream"],
                    str(s["length"]),
                    g["name"],
                    str(g["consumers"]),
                    str(g["pending"]),
                    "?" if g["lag"] is None else str(g["lag"]),
                    "-" if age is None else f"{age}s",
                    str(s["dead_letters"]),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    p = report["processed_batches"]
    ttl = {-2: "no key", -1: "no expiry"}.get(p["ttl_s"], f"{p['ttl_s']}s")
    lines.append("")
    lines.append(f"{p['key']}: {p['size']} batch ids, TTL {ttl}")
    if report["paused"]:
        lines.append(f"consumption of tenant {report['tenant']} is PAUSED (aam-dcl resume)")
    if not report["streams"]:
        lines.append(f"no streams match aam:dcl:{report['tenant']}:* yet")
    return "\n".join(lines)


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
