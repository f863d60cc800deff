"""The chaos harness, small enough for ``make test``: ~20 000 records through kill -9 of the
workers (3), the bridge (1) and Redis (1), into PostgreSQL with two workers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.chaos.harness import ChaosPlan, ChaosRun

PLAN = ChaosPlan(
    records_per_table=2_500,  # 8 tables: 20 000 records, then ~1 200 in the second run
    worker_kills=3,
    bridge_kills=1,
    redis_kills=1,
    delay_s=(0.2, 0.8),
    read_count=10,  # small reads and a short stream: a slower flow the kills land in
    stream_maxlen=100,
    deadline_s=50.0,
)


@pytest.mark.timeout(60)
async def test_short_chaos_every_record_lands_exactly_once(pg_dsn: str, tmp_path: Path) -> None:
    """Kill -9 of workers, bridge and Redis mid-flow: the store holds exactly the records."""
    sink_url = f"{pg_dsn}?schema=chaos_{uuid.uuid4().hex[:12]}"
    report = await ChaosRun(PLAN, tmp_path, sink_url).run()
    print(report.format())
    assert sum(report.kills[w] for w in PLAN.workers) == PLAN.worker_kills
    assert report.kills["bridge"] == PLAN.bridge_kills
    assert report.kills["redis"] == PLAN.redis_kills
    assert all(runs >= PLAN.min_runs for runs in report.runs.values()), report.runs
    assert report.ok, report.format()
