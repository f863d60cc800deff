"""A healthy pipeline exposes every labelled counter at 0, not "no series".

Grafana panels of errors, back-pressure, dead letters, deleted and reclaimed entries showed
"No data" on a healthy pipeline because their series never existed; Prometheus' convention
is to create each known label set at 0. Every dashboard panel must have a series.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import redis.asyncio as aioredis
from prometheus_client import REGISTRY, generate_latest

from aam_dcl.config import Settings
from dcl_worker import metrics as worker_metrics
from tests.integration.conftest import demo_configs, run_bridge_once, running_worker
from tests.support import drained, wait_until

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/aam-dcl.json"
_METRIC = re.compile(r"\b((?:aam_bridge|dcl_worker)_[a-z0-9_]+)")
_SAMPLE = re.compile(r"^([a-z0-9_]+)\{(.*)\} (\S+)$")
# Dashboard metrics that carry no connector label (per tenant or per build).
NOT_PER_CONNECTOR = {
    "aam_bridge_build_info", "dcl_worker_build_info", "dcl_worker_consuming",
    "dcl_worker_paused", "dcl_worker_processed_set_size",
}  # fmt: skip


def samples(connector: str) -> list[tuple[str, dict[str, str], float]]:
    """Exposed samples whose labels name ``connector``: (name, labels, value)."""
    out = []
    for line in generate_latest(REGISTRY).decode().splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        if labels.get("connector") == connector:
            out.append((match.group(1), labels, float(match.group(3))))
    return out


def dashboard_metrics() -> set[str]:
    text = json.dumps(json.loads(DASHBOARD.read_text()))
    return {re.sub(r"_(bucket|total)$", "", m) for m in _METRIC.findall(text)}


def value(found: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    (match,) = [v for n, lab, v in found if n == name and labels.items() <= lab.items()]
    return match


async def test_every_dashboard_series_exists_at_zero_once_a_connector_is_known(
    settings: Settings, redis: aioredis.Redis
) -> None:
    config = dataclasses.replace(demo_configs(records=20)[0], name="zeroes")
    await run_bridge_once(settings, [config])
    async with running_worker(settings):
        await wait_until(lambda: drained(redis), what="the demo records to land")
    found = samples("zeroes")
    names = {re.sub(r"_(bucket|total|count|sum)$", "", n) for n, _, _ in found}
    missing = dashboard_metrics() - NOT_PER_CONNECTOR - names
    assert not missing, f"dashboard metrics without a series for the connector: {missing}"
    for reason in worker_metrics.DEAD_LETTER_REASONS:
        assert value(found, "dcl_worker_dead_lettered_total", reason=reason) == 0
    for outcome in ("dead_lettered", "failed"):
        assert value(found, "dcl_worker_batches_total", outcome=outcome) == 0
    assert value(found, "aam_bridge_publish_errors_total") == 0
    assert value(found, "aam_bridge_sync_runs_total", status="failed") == 0
    assert value(found, "aam_bridge_backpressure_seconds_total") == 0
    assert value(found, "aam_bridge_backpressure_active") == 0
    assert value(found, "dcl_worker_reclaimed_entries_total") == 0
    assert value(found, "dcl_worker_deleted_pending_entries_total") == 0
    assert value(found, "dcl_worker_sink_errors_total") == 0
