"""Read-only views of a tenant's pipeline state in Redis, for ``aam-dcl status`` and the demo."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.redis_conn import connect
from aam_dcl.stream_info import entry_id_key, group_lag


async def list_streams(client: aioredis.Redis, tenant: str) -> list[str]:
    """Connector names with a stream of this tenant (SCAN aam:dcl:{tenant}:*)."""
    connectors, _ = await scan_streams(client, tenant)
    return connectors


async def scan_streams(
    client: aioredis.Redis, tenant: str
) -> tuple[list[str], list[dict[str, str]]]:
    """``(connectors, ignored)``: the tenant's connector streams, and the streams under
    ``aam:dcl:{tenant}:`` the worker ignores because their name is no connector's, each as
    ``{"key": ..., "reason": ...}``."""
    names, ignored = [], []
    async for raw in client.scan_iter(
        match=keys.stream_pattern(tenant), count=1000, _type="stream"
    ):
        try:
            key = raw.decode()
        except UnicodeDecodeError:
            shown = raw.decode(errors="backslashreplace")
            ignored.append({"key": shown, "reason": "the key is not valid UTF-8"})
            continue
        name = keys.connector_of_stream(tenant, key)
        if name:
            names.append(name)
        else:
            reason = keys.stream_key_problem(tenant, key) or "not a connector stream"
            ignored.append({"key": key, "reason": reason})
    return sorted(names), sorted(ignored, key=lambda i: i["key"])


async def stream_status(
    client: aioredis.Redis,
    tenant: str,
    connector: str,
    ignore_groups: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """One stream: length, dead letters, and every consumer group on it with its consumers,
    pending, lag and oldest pending age; groups in ``ignore_groups`` (AAM_IGNORE_GROUPS)
    are marked ``ignored``: trimming and back-pressure do not wait for them."""
    stream = keys.stream(tenant, connector)
    own = keys.group(tenant)
    pipe = client.pipeline(transaction=False)
    pipe.xinfo_stream(stream)
    pipe.xinfo_groups(stream)
    pipe.xlen(keys.dead_letter_stream(tenant, connector))
    info_stream, groups, dead = await pipe.execute(raise_on_error=False)
    if not isinstance(info_stream, dict):  # the stream went away meanwhile
        info_stream = {"length": 0, "last-generated-id": b"0-0"}
    groups = groups if isinstance(groups, list) else []
    pipe = client.pipeline(transaction=False)
    for info in groups:
        pipe.xpending(stream, info["name"])
    summaries = await pipe.execute(raise_on_error=False) if groups else []
    now = time.time()
    group_rows = []
    for info, summary in zip(groups, summaries, strict=True):
        name = _s(info["name"])
        group_rows.append(
            {
                "name": name,
                "consumers": info["consumers"],
                "pending": info["pending"],
                "lag": group_lag(info, info_stream),
                "last_delivered_id": _s(info["last-delivered-id"]),
                "oldest_pending_age_s": _age_s(summary, now),
                "own": name == own,
                "ignored": name in ignore_groups,
            }
        )
    group_rows.sort(key=lambda g: (not g["own"], g["name"]))  # the worker's group first
    own_row = next((g for g in group_rows if g["own"]), None)
    return {
        "connector": connector,
        "stream": stream,
        "length": info_stream["length"],
        "groups": group_rows,
        "oldest_pending_age_s": own_row["oldest_pending_age_s"] if own_row else None,
        "dead_letters": dead if isinstance(dead, int) else 0,
    }


def _age_s(summary: Any, now: float) -> float | None:
    """Age of the oldest pending entry from an XPENDING summary (None: nothing pending)."""
    if not isinstance(summary, dict) or not summary.get("min"):
        return None
    return round(now - entry_id_key(summary["min"])[0] / 1000, 1)


async def collect_status(
    settings: Settings, client: aioredis.Redis | None = None
) -> dict[str, Any]:
    own = client is None
    client = client or connect(settings)
    try:
        tenant = settings.tenant_id
        connectors, ignored = await scan_streams(client, tenant)
        streams = [
            await stream_status(client, tenant, c, settings.ignore_groups) for c in connectors
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
            "ignored_streams": ignored,
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


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
