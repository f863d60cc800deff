"""The four measurements: transport, PostgreSQL sink, latency, worker memory.

Each case resets the private Redis (FLUSHALL), creates the consumer group at 0 (as the
bridge does before its first XADD), runs roles in their own processes (procs.py), checks
that everything was consumed and acknowledged, and returns plain JSON-ready numbers.
"""

from __future__ import annotations

import asyncio
import statistics
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis
from procs import Spec, run_roles
from systems import GROUP, PROCESSED, READ_COUNT, STREAM, TRANSPORT
from workload import CONNECTOR, PRIMARY_KEY, TABLE, TENANT, Workload

from aam_dcl.messages import Batch, encode
from aam_dcl.schema import table_batch
from dcl_worker.sinks._sql import store_table_name
from dcl_worker.sinks._tenancy import tenant_schema

CHUNK = 200
LOW_LATENCY_CHUNK = 50  # AAM_PROFILE=low-latency's AAM_BATCH_CHUNK_SIZE
MEMORY_CHUNK = 20  # small entries keep 50k entries at ~200 MB in Redis


@dataclass(frozen=True, slots=True)
class Config:
    redis_url: str
    pg_admin_dsn: str
    records: int  # transport and PostgreSQL
    reps: int  # transport repetitions (the median is reported)
    latency_s: float
    batches_per_s: float
    memory_entries: tuple[int, int]
    timeout_s: float


def reset(client: redis.Redis) -> None:
    client.flushall()
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)


def check_drained(client: redis.Redis, entries: int, what: str) -> None:
    """Every entry delivered to the group and acknowledged."""
    group = next(g for g in client.xinfo_groups(STREAM) if g["name"] == GROUP.encode())
    added = client.xinfo_stream(STREAM)["entries-added"]
    if group["pending"] or group["entries-read"] != added or added != entries:
        raise RuntimeError(
            f"{what}: not drained: {added} entries added (expected {entries}), "
            f"{group['entries-read']} read, {group['pending']} pending"
        )


def prefill(client: redis.Redis, payloads: list[bytes]) -> None:
    for start in range(0, len(payloads), 500):
        pipe = client.pipeline(transaction=False)
        for payload in payloads[start : start + 500]:
            pipe.xadd(STREAM, {"payload": payload})
        pipe.execute()


def rate(records: int, *results: dict[str, Any]) -> float:
    started = min(r["started"] for r in results)
    ended = max(r["ended"] for r in results)
    return records / (ended - started)


# --- 1. transport ----------------------------------------------------------------------------


def transport(cfg: Config, client: redis.Redis, log: Any) -> dict[str, Any]:
    """records/s per system: publish alone, consume alone (a full stream), both together."""
    workload = Workload(cfg.records, CHUNK)
    params = {
        "redis_url": cfg.redis_url,
        "records": cfg.records,
        "chunk": CHUNK,
        # Room for the whole run: no system may trim, and aam-dcl's back-pressure (which
        # waits for the group at 80% of MAXLEN) must not stall the publish-alone phase.
        "maxlen": max(1000, workload.entries * 2),
    }
    runs: dict[str, dict[str, list[float]]] = {
        s: {"publish": [], "consume": [], "end_to_end": []} for s in TRANSPORT
    }
    for rep in range(cfg.reps):
        for system in TRANSPORT:
            reset(client)
            [pub] = run_roles([Spec(system, "publish", params)], cfg.timeout_s)
            [con] = run_roles([Spec(system, "consume", params)], cfg.timeout_s)
            check_drained(client, workload.entries, f"{system} consume")
            reset(client)
            both = run_roles(
                [Spec(system, "consume", params), Spec(system, "publish", params)], cfg.timeout_s
            )
            check_drained(client, workload.entries, f"{system} end to end")
            for phase, value in (
                ("publish", rate(cfg.records, pub)),
                ("consume", rate(cfg.records, con)),
                ("end_to_end", rate(cfg.records, *both)),
            ):
                runs[system][phase].append(value)
            log(
                f"  rep {rep + 1}/{cfg.reps} {system:<10} "
                + "  ".join(f"{k} {v[-1]:>11,.0f}" for k, v in runs[system].items())
            )
    systems = {
        s: {phase: statistics.median(v) for phase, v in phases.items()}
        for s, phases in runs.items()
    }
    # Ratios pair runs of the same repetition (minutes apart at most), then take the median:
    # steadier than a ratio of medians when other work comes and goes on the machine.
    ours = runs["aam-dcl"]
    ratios = {
        peer: {
            phase: statistics.median(
                a / b for a, b in zip(ours[phase], runs[peer][phase], strict=True)
            )
            for phase in ours
        }
        for peer in ("faststream", "limit", "redis-py")
    }
    return {
        "records": cfg.records,
        "chunk": CHUNK,
        "entries": workload.entries,
        "reps": cfg.reps,
        "records_per_s": systems,
        "runs": runs,
        "ratios": ratios,
    }


# --- 2. PostgreSQL sink ----------------------------------------------------------------------


def postgres(cfg: Config, client: redis.Redis, log: Any) -> dict[str, Any]:
    """The worker draining a full stream into PostgreSQL vs raw COPY of the same rows."""
    workload = Workload(cfg.records, CHUNK)
    name = f"aam_dcl_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(cfg.pg_admin_dsn, f'CREATE DATABASE "{name}"'))
    dsn = f"{cfg.pg_admin_dsn.rsplit('/', 1)[0]}/{name}"
    try:
        reset(client)
        prefill(client, workload.payloads())
        params = {"redis_url": cfg.redis_url, "records": cfg.records, "chunk": CHUNK}
        [worker] = run_roles([Spec("aam-dcl", "consume", {**params, "sink_url": dsn})], 600)
        check_drained(client, workload.entries, "postgres worker")
        table = store_table_name(CONNECTOR, TABLE)
        schema = tenant_schema(TENANT, "public")  # the worker's tenant has a schema of its own
        rows = asyncio.run(_fetchval(dsn, f'SELECT count(*) FROM "{schema}"."{table}"'))
        if rows != cfg.records:
            raise RuntimeError(f"postgres: {rows} rows in the store, expected {cfg.records}")
        [raw] = run_roles([Spec("raw-copy", "publish", {**params, "pg_dsn": dsn})], 600)
        [keyed] = run_roles(
            [Spec("raw-copy", "publish", {**params, "pg_dsn": dsn, "keyed": True})], 600
        )
    finally:
        asyncio.run(_admin(cfg.pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    out = {
        "records": cfg.records,
        "rows_per_transaction": READ_COUNT * CHUNK,
        "worker": rate(cfg.records, worker),
        "raw_copy": rate(cfg.records, raw),
        "raw_copy_keyed": rate(cfg.records, keyed),
    }
    out["ratio"] = out["worker"] / out["raw_copy"]
    out["ratio_keyed"] = out["worker"] / out["raw_copy_keyed"]
    log(
        f"  worker {out['worker']:,.0f} rows/s, raw COPY {out['raw_copy']:,.0f}, "
        f"keyed raw COPY {out['raw_copy_keyed']:,.0f}"
    )
    return out


async def _admin(dsn: str, sql: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(sql)
    finally:
        await con.close()


async def _fetchval(dsn: str, sql: str) -> Any:
    con = await asyncpg.connect(dsn)
    try:
        return await con.fetchval(sql)
    finally:
        await con.close()


# --- 3. latency ------------------------------------------------------------------------------


def latency(cfg: Config, client: redis.Redis, log: Any) -> dict[str, Any]:
    """emitted_at → ack per batch, as the worker measures it, at a fixed publish rate."""
    batches = int(cfg.latency_s * cfg.batches_per_s)
    records = batches * LOW_LATENCY_CHUNK
    env = (("AAM_PROFILE", "low-latency"),)
    base = {"redis_url": cfg.redis_url, "records": records, "chunk": LOW_LATENCY_CHUNK}
    paced = {"profile": "low-latency", "pages_per_s": cfg.batches_per_s}
    reset(client)
    worker, bridge = run_roles(
        [
            Spec("aam-dcl", "consume", {**base, "latency": True}, env),
            Spec("aam-dcl", "publish", {**base, **paced}, env),
        ],
        cfg.timeout_s,
    )
    check_drained(client, batches, "latency")
    warmup = min(batches // 10, int(cfg.batches_per_s / 2))  # the first half second at most
    samples = sorted(worker["latencies_s"][warmup:])
    achieved = batches / (bridge["ended"] - bridge["started"])
    out = {
        "batches": batches,
        "records_per_batch": LOW_LATENCY_CHUNK,
        "target_batches_per_s": cfg.batches_per_s,
        "achieved_batches_per_s": achieved,
        "warmup_batches_skipped": warmup,
        "p50_ms": _quantile(samples, 0.50) * 1000,
        "p90_ms": _quantile(samples, 0.90) * 1000,
        "p99_ms": _quantile(samples, 0.99) * 1000,
        "max_ms": samples[-1] * 1000,
    }
    log(
        f"  {achieved:,.0f} batches/s, p50 {out['p50_ms']:.2f} ms, p99 {out['p99_ms']:.2f} ms, "
        f"max {out['max_ms']:.1f} ms"
    )
    return out


def _quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# --- 4. worker memory ------------------------------------------------------------------------


def memory(cfg: Config, client: redis.Redis, log: Any) -> dict[str, Any]:
    """RSS of a worker process (null sink) draining streams of different lengths."""
    rows = Workload(MEMORY_CHUNK, MEMORY_CHUNK).rows()
    tb = table_batch(TABLE, rows, primary_key=PRIMARY_KEY, max_samples=8)
    out: dict[str, Any] = {"records_per_entry": MEMORY_CHUNK, "runs": {}}
    for entries in cfg.memory_entries:
        reset(client)
        payloads = [
            encode(Batch(f"{CONNECTOR}_1_{n}", CONNECTOR, "sf-bench", [tb], TENANT))
            for n in range(1, entries + 1)
        ]
        prefill(client, payloads)
        del payloads
        params = {"redis_url": cfg.redis_url, "records": entries * MEMORY_CHUNK}
        [worker] = run_roles([Spec("aam-dcl", "consume", params)], cfg.timeout_s)
        check_drained(client, entries, f"memory {entries}")
        run = {
            "rss_before_mib": worker["rss_before"] / 2**20,
            "rss_peak_mib": worker["rss_peak"] / 2**20,
            "rss_after_mib": worker["rss_after"] / 2**20,
            "growth_mib": (worker["rss_peak"] - worker["rss_before"]) / 2**20,
            "processed_set_size": client.scard(PROCESSED),
        }
        out["runs"][str(entries)] = run
        log(
            f"  {entries:>6} entries: RSS {run['rss_before_mib']:.1f} → peak "
            f"{run['rss_peak_mib']:.1f} MiB (+{run['growth_mib']:.1f})"
        )
    small, large = (out["runs"][str(n)] for n in cfg.memory_entries)
    out["peak_ratio"] = large["rss_peak_mib"] / small["rss_peak_mib"]
    out["growth_difference_mib"] = large["growth_mib"] - small["growth_mib"]
    return out


CASES = {"transport": transport, "postgres": postgres, "latency": latency, "memory": memory}
