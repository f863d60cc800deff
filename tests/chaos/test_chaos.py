"""The chaos suite (``make chaos``): over 200 000 demo records pass through while the workers,
the bridge and Redis are killed with SIGKILL at seeded random moments; at the end the DCL
store holds exactly the generated records — none missing, none doubled, every value equal."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.chaos.harness import ChaosPlan, ChaosRun, Report

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1800)]


def check(report: Report, plan: ChaosPlan) -> None:
    print(report.format())
    assert sum(report.kills[w] for w in plan.workers) == plan.worker_kills
    assert report.kills["bridge"] == plan.bridge_kills
    assert report.kills["redis"] == plan.redis_kills
    assert all(runs >= plan.min_runs for runs in report.runs.values()), report.runs
    assert report.verdict.records_generated >= 200_000
    assert report.ok, report.format()


async def test_two_workers_postgres_200k_records_through_kills_land_exactly_once(
    pg_dsn: str, tmp_path: Path
) -> None:
    """2 workers (different consumer names) into PostgreSQL; 10 worker, 3 bridge, 1 Redis kills."""
    plan = ChaosPlan(records_per_table=25_000, delay_s=(0.3, 2.0))
    sink_url = f"{pg_dsn}?schema=chaos_{uuid.uuid4().hex[:12]}"
    check(await ChaosRun(plan, tmp_path, sink_url).run(), plan)


async def test_one_worker_duckdb_200k_records_through_kills_land_exactly_once(
    tmp_path: Path,
) -> None:
    """The embedded store: 1 worker into DuckDB; 10 worker, 3 bridge, 1 Redis kills."""
    plan = ChaosPlan(
        records_per_table=25_000,
        sink="duckdb",
        workers=("chaos-worker-solo",),
        delay_s=(0.3, 2.0),
        seed=20251108,
    )
    sink_url = f"duckdb://{tmp_path / 'dcl.duckdb'}"
    check(await ChaosRun(plan, tmp_path, sink_url).run(), plan)


async def test_everysec_aof_with_a_lost_tail_still_lands_exactly_once(
    pg_dsn: str, tmp_path: Path
) -> None:
    """Redis with ``appendfsync everysec`` killed twice mid-flow, each time losing up to 256 KiB
    of its AOF's tail, as a machine crash loses the last second: XADDs with their checkpoints,
    marks and acks vanish together; the bridge re-sends under the same ids and the store's
    inbox keeps every batch applied once."""
    plan = ChaosPlan(
        records_per_table=25_000,
        delay_s=(0.3, 2.0),
        redis_kills=2,
        appendfsync="everysec",
        crash_loss_bytes=256 * 1024,
        seed=20261201,
    )
    sink_url = f"{pg_dsn}?schema=chaos_{uuid.uuid4().hex[:12]}"
    check(await ChaosRun(plan, tmp_path, sink_url).run(), plan)
