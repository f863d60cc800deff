"""The operator's view of and say in the bridge's sync runs, through each connector's sync
state ``aam:sync:{aam:dcl:{tenant}:{connector}}``: the last run's outcome, and requests the bridge
takes without a restart (a full re-sync, a run now).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.typing import EncodableT, FieldT

from aam_dcl import keys
from aam_dcl.redis_conn import RedisClient
from aam_dcl.streams import as_text, scan_streams
from aam_dcl_cli.ops import OperationRefused


@dataclass(slots=True)
class SyncRun:
    """A connector's sync state as the operator sees it."""

    connector: str
    status: str | None  # succeeded | failed; None: no run finished yet
    started_ms: int | None
    duration_ms: int | None
    records: int | None
    error: str
    running: bool  # a run is in progress (or was interrupted and will resume)
    runs: int  # runs completed
    requested: list[str]  # requests not taken yet: full, now

    def to_json(self) -> dict[str, object]:
        return {
            "connector": self.connector,
            "last_run": None
            if self.status is None
            else {
                "status": self.status,
                "started_ms": self.started_ms,
                "duration_ms": self.duration_ms,
                "records": self.records,
                "error": self.error or None,
            },
            "running": self.running,
            "runs": self.runs,
            "requested": self.requested,
        }


async def sync_runs(client: RedisClient, tenant: str) -> list[SyncRun]:
    """Every connector with a sync state, by name."""
    names = []
    async for raw in client.scan_iter(match=keys.sync_state_pattern(tenant), count=1000):
        name = keys.connector_of_sync_state(tenant, as_text(raw))
        if name:
            names.append(name)
    pipe = client.pipeline(transaction=False)
    for name in sorted(names):
        pipe.hgetall(keys.sync_state(tenant, name))
    return [_run(n, h) for n, h in zip(sorted(names), await pipe.execute(), strict=True)]


def _run(connector: str, raw: dict[bytes, bytes]) -> SyncRun:
    fields = {as_text(k): as_text(v) for k, v in raw.items()}

    def number(name: str) -> int | None:
        value = fields.get(name, "")
        return int(value) if value.isdigit() else None

    return SyncRun(
        connector=connector,
        status=fields.get("last_run_status") or None,
        started_ms=number("last_run_started_ms"),
        duration_ms=number("last_run_duration_ms"),
        records=number("last_run_records"),
        error=fields.get("last_run_error", ""),
        running=bool(fields.get("run_start_ms")),
        runs=number("runs") or 0,
        requested=[
            what
            for what, field in (("full", keys.SYNC_REQUEST_FULL), ("now", keys.SYNC_REQUEST_NOW))
            if field in fields
        ],
    )


async def request_sync(
    client: RedisClient, tenant: str, connector: str, *, full: bool, now: bool
) -> None:
    """Ask the bridge for a full re-sync (its next run reads every table from the start)
    and/or a run now. Refused for a connector the tenant has neither a sync state nor a
    stream of (a typo would otherwise wait forever)."""
    if not keys.NAME_RE.match(connector):
        raise OperationRefused(f"{connector!r} is no connector name (letters, digits, _ . -)")
    state = keys.sync_state(tenant, connector)
    pipe = client.pipeline(transaction=False)
    pipe.exists(state)
    pipe.exists(keys.stream(tenant, connector))
    if not any(await pipe.execute()):
        known = sorted({*(r.connector for r in await sync_runs(client, tenant))} | {
            *(await scan_streams(client, tenant)).connectors
        })  # fmt: skip
        raise OperationRefused(
            f"no connector {connector!r} in tenant {tenant!r} (no {state}); "
            f"known: {', '.join(known) or 'none yet'}"
        )
    stamp = int(time.time() * 1000)
    fields: dict[FieldT, EncodableT] = {}
    if full:
        fields[keys.SYNC_REQUEST_FULL] = stamp
    if now:
        fields[keys.SYNC_REQUEST_NOW] = stamp
    await client.hset(state, mapping=fields)
