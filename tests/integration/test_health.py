"""Each daemon's HTTP port, in-process: /metrics exposes exactly the metrics README.md lists
(its "Metrics and health" section is parsed, so README and code cannot drift apart), and
/healthz and /readyz answer 200 against the private Redis."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from aam_bridge.main import serve as serve_bridge
from aam_dcl.config import Settings
from aam_dcl_cli.local_server import free_port
from dcl_worker.main import serve as serve_worker
from tests.integration.conftest import demo_configs

README = Path(__file__).resolve().parents[2] / "README.md"
PREFIXES = ("aam_bridge_", "dcl_worker_")
STOP_TIMEOUT_S = 30.0
DEADLINE_S = 15.0

_SECTION = re.compile(r"^## Metrics and health\n(.*?)(?=^## )", re.MULTILINE | re.DOTALL)
# `name` or `name{label,...}` in backticks.
_NAME = re.compile(r"`((?:aam_bridge|dcl_worker)_[a-z0-9_]+)(?:\{[^}`]*\})?`")
_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)


def readme_metrics(prefix: str) -> set[str]:
    """The metric names README.md's "Metrics and health" section lists for one daemon."""
    section = _SECTION.search(README.read_text())
    assert section is not None, "README.md has no '## Metrics and health' section"
    return {name for name in _NAME.findall(section.group(1)) if name.startswith(prefix)}


def exposed_metrics(exposition: str, prefix: str) -> set[str]:
    """Metric family names (as in `# TYPE` lines, counters with `_total`) with `prefix`.

    prometheus_client adds a `<name>_created` gauge beside every labelled counter and
    histogram (the time each child was created); those are the client library's
    companions, not metrics of their own, so they are left out.
    """
    families = dict(_TYPE_LINE.findall(exposition))
    companions = {
        f"{name.removesuffix('_total')}_created"
        for name, kind in families.items()
        if kind in ("counter", "histogram")
    }
    return {name for name in families if name.startswith(prefix) and name not in companions}


def daemon_settings(redis_url: str, duckdb_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        sink_url=duckdb_url,
        metrics_host="127.0.0.1",
        metrics_port=free_port(),
        discovery_interval_s=0.1,
        block_ms=100,
        consumer_name="health-worker",
        log_format="console",
    )


@contextlib.asynccontextmanager
async def serving(
    serve: Callable[[asyncio.Event], Awaitable[None]],
) -> AsyncIterator[asyncio.Task[None]]:
    """Run a daemon's serve() as a task for the block; stop it gracefully afterwards."""
    stopping = asyncio.Event()
    task = asyncio.ensure_future(serve(stopping))
    try:
        yield task
    finally:
        stopping.set()
        await asyncio.wait_for(task, STOP_TIMEOUT_S)


async def wait_for_status(
    http: aiohttp.ClientSession, url: str, status: int, daemon: asyncio.Task[None]
) -> None:
    """Poll GET `url` until it answers `status` (the server may still be starting)."""
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    last = "no answer"
    while asyncio.get_running_loop().time() < deadline:
        if daemon.done():
            await daemon  # raises what stopped it
            pytest.fail(f"the daemon stopped before {url} answered {status}")
        try:
            async with http.get(url) as resp:
                if resp.status == status:
                    return
                last = f"{resp.status} {await resp.text()}"
        except aiohttp.ClientConnectionError as exc:
            last = repr(exc)
        await asyncio.sleep(0.05)
    pytest.fail(f"GET {url} did not answer {status} within {DEADLINE_S} s; last: {last}")


async def check_endpoints(daemon: asyncio.Task[None], port: int, prefix: str) -> None:
    """/healthz and /readyz answer 200; /metrics is Prometheus text whose `prefix` metrics
    are exactly the README's list for that daemon."""
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for path in ("/healthz", "/readyz"):
            await wait_for_status(http, base + path, 200, daemon)
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
            exposition = await resp.text()
    listed = readme_metrics(prefix)
    exposed = exposed_metrics(exposition, prefix)
    assert listed - exposed == set(), "README.md lists metrics that /metrics does not expose"
    assert exposed - listed == set(), "/metrics exposes metrics that README.md does not list"


def test_readme_lists_metrics_for_both_daemons() -> None:
    """The README's "Metrics and health" section is parsed into a non-trivial list per
    daemon, label sets stripped (`aam_bridge_sync_runs_total{status}` → the bare name)."""
    bridge = readme_metrics("aam_bridge_")
    worker = readme_metrics("dcl_worker_")
    assert {"aam_bridge_records_published_total", "aam_bridge_sync_runs_total"} <= bridge
    assert {"dcl_worker_batches_total", "dcl_worker_end_to_end_latency_seconds"} <= worker
    assert "aam_bridge_build_info" in bridge
    assert "dcl_worker_build_info" in worker
    assert len(bridge) >= 8, bridge
    assert len(worker) >= 15, worker
    assert not any("{" in name for name in bridge | worker)


async def test_bridge_metrics_match_the_readme_and_health_and_readiness_are_200(
    redis_url: str, duckdb_url: str
) -> None:
    """aam-bridge.serve on a fixed free METRICS_PORT, with demo connectors scheduled
    (not run-once, so it keeps serving): /healthz 200, /readyz 200, and /metrics exposes
    every aam_bridge_* metric README.md lists and no other."""
    settings = daemon_settings(redis_url, duckdb_url)
    configs = [dataclasses.replace(c, schedule_s=3600.0) for c in demo_configs(records=20)]
    assert settings.metrics_port is not None
    async with serving(lambda stopping: serve_bridge(settings, stopping, configs)) as daemon:
        await check_endpoints(daemon, settings.metrics_port, "aam_bridge_")


async def test_worker_metrics_match_the_readme_and_health_and_readiness_are_200(
    redis_url: str, duckdb_url: str
) -> None:
    """dcl-worker.serve on a fixed free METRICS_PORT: /healthz 200, /readyz 200 (Redis
    reachable, DuckDB sink open), and /metrics exposes every dcl_worker_* metric README.md
    lists and no other."""
    settings = daemon_settings(redis_url, duckdb_url)
    assert settings.metrics_port is not None
    async with serving(lambda stopping: serve_worker(settings, stopping)) as daemon:
        await check_endpoints(daemon, settings.metrics_port, "dcl_worker_")
