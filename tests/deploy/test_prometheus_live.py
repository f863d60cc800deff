"""A real Prometheus scrapes both daemons, run as real processes, while the demo pipeline runs.

One stack per module (Redis, aam-bridge, dcl-worker, Prometheus): Prometheus hands new
targets to its scraper only after ~5 s, so each stack costs that much. The tests read
it; the last one stops Redis, so it must stay last (pytest runs a module in file order).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from aam_dcl import __version__
from aam_dcl_cli.local_server import LocalServer, start_local_server
from tests.deploy.prom import PrometheusServer, Sample, free_port, start_prometheus
from tests.deploy.toolbox import REPO

BIN = Path(sys.executable).parent
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
CONNECTORS = ("salesforce", "hubspot", "dynamics")
DEADLINE_S = 20.0
POLL_S = 0.1
EXIT_TIMEOUT_S = 20.0
SHUTDOWN_GRACE_S = 10

# Series that must keep increasing while the demo connectors sync every 2 s.
GROWING = (
    "sum(aam_bridge_records_published_total)",
    "sum(aam_bridge_batches_published_total)",
    'sum(aam_bridge_sync_runs_total{status="succeeded"})',
    'sum(dcl_worker_records_total{outcome="processed"})',
    "sum(dcl_worker_batches_total)",
    "sum(dcl_worker_end_to_end_latency_seconds_count)",
    "sum(dcl_worker_processed_set_size)",
)
# Gauges that may rightly sit at 0 (the worker keeps up): they must exist for every
# connector and keep being scraped (their sample count grows).
GAUGES = ("dcl_worker_group_lag", "dcl_worker_pending_entries")
P99_LATENCY = (
    "histogram_quantile(0.99, "
    "sum by (le) (rate(dcl_worker_end_to_end_latency_seconds_bucket[30s])))"
)


def poll(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    """Poll `condition` until true; fail naming `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(POLL_S)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def above(threshold: float) -> Callable[[list[Sample]], bool]:
    """A predicate for `wait_for`: the query's one sample is greater than `threshold`."""
    return lambda result: bool(result) and float(result[0]["value"][1]) > threshold


def http_status(url: str) -> int:
    """The status code of a GET (no exception for 4xx/5xx); 0 if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5.0) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


@dataclass
class Daemon:
    """A daemon console script running as a process, with its metrics port and log."""

    name: str
    port: int
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def status(self, path: str) -> int:
        return http_status(f"http://{self.address}{path}")

    def answers(self, path: str, status: int) -> Callable[[], bool]:
        """A condition for `poll`: GET `path` answers `status`."""
        return lambda: self.status(path) == status

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_live(self) -> None:
        """Return once /healthz answers 200; fail with the daemon's log if it exits first."""
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}\n{self.log_tail()}")
            if self.status("/healthz") == 200:
                return
            time.sleep(POLL_S)
        pytest.fail(f"{self.name} /healthz did not answer 200 in {DEADLINE_S} s\n{self.log_tail()}")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it outlives EXIT_TIMEOUT_S; the exit code. Idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_daemon(name: str, env: dict[str, str], workdir: Path) -> Daemon:
    port = free_port()
    log = workdir / f"{name}.log"
    full_env = {
        **os.environ,
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(port),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
        **env,
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(BIN / name)], env=full_env, stdout=out, stderr=out, stdin=subprocess.DEVNULL
        )
    return Daemon(name, port, log, process)


def write_connectors(path: Path) -> None:
    """Three demo connectors syncing every 2 s; each incremental run changes ~25% of rows."""
    entries = [
        {
            "name": name,
            "type": "demo",
            "connector_config_id": f"{name}-demo-001",
            "schedule": "2s",
            "options": {
                "flavor": name,
                "records": 200,
                "seed": 11,
                "change_rate": 0.2,
                "new_rate": 0.05,
                "page_size": 100,
            },
        }
        for name in CONNECTORS
    ]
    path.write_text(yaml.safe_dump({"connectors": entries}, sort_keys=False))


@dataclass
class Stack:
    redis: LocalServer
    bridge: Daemon
    worker: Daemon
    prometheus: PrometheusServer

    @property
    def daemons(self) -> tuple[Daemon, Daemon]:
        return (self.bridge, self.worker)

    def diagnostics(self) -> str:
        return "\n".join(f"--- {d.name} log\n{d.log_tail()}" for d in self.daemons)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Private Redis, aam-bridge and dcl-worker processes, and Prometheus scraping both
    every second with deploy/prometheus/alerts.yml loaded. Everything is stopped at the end."""
    workdir = tmp_path_factory.mktemp("live")
    redis = start_local_server(workdir / "redis", prefer="redis")
    daemons: list[Daemon] = []
    prometheus: PrometheusServer | None = None
    try:
        connectors_file = workdir / "connectors.yaml"
        write_connectors(connectors_file)
        common = {"REDIS_URL": redis.url, "TENANT_ID": "default"}
        bridge_env = {
            **common,
            "AAM_CONNECTORS_FILE": str(connectors_file),
            "AAM_BATCH_CHUNK_SIZE": "50",
        }
        worker_env = {
            **common,
            "DCL_SINK_URL": f"duckdb://{workdir / 'dcl.duckdb'}",
            "DCL_CONSUMER_NAME": "live-worker",
            "DCL_DISCOVERY_INTERVAL_S": "0.5",
            "DCL_BLOCK_MS": "500",
        }
        daemons.append(start_daemon("dcl-worker", worker_env, workdir))
        daemons.append(start_daemon("aam-bridge", bridge_env, workdir))
        worker, bridge = daemons
        for daemon in daemons:
            daemon.wait_live()
        prom_dir = workdir / "prometheus"
        prom_dir.mkdir()
        prometheus = start_prometheus(
            prom_dir,
            {"aam-bridge": [bridge.address], "dcl-worker": [worker.address]},
            scrape_interval_s=1.0,
            rule_files=[ALERTS],
        )
        yield Stack(redis, bridge, worker, prometheus)
    finally:
        if prometheus is not None:
            prometheus.stop()
        for daemon in daemons:
            daemon.stop()
        redis.stop()


def test_prometheus_scrapes_both_daemons_with_build_info(stack: Stack) -> None:
    """Both targets are up (up == 1 for job aam-bridge and job dcl-worker) and each
    exports its build info (== 1) carrying the package version."""
    prom = stack.prometheus
    for job, target in (("aam-bridge", stack.bridge), ("dcl-worker", stack.worker)):
        up = prom.wait_for(f'up{{job="{job}"}} == 1')
        assert up[0]["metric"]["instance"] == target.address
    for job, metric in (
        ("aam-bridge", "aam_bridge_build_info"),
        ("dcl-worker", "dcl_worker_build_info"),
    ):
        info = prom.wait_for(f'{metric}{{job="{job}"}} == 1')
        assert [s["metric"]["version"] for s in info] == [__version__]


def test_pipeline_series_increase_between_two_queries(stack: Stack) -> None:
    """While the connectors sync every 2 s, Prometheus sees the bridge's published records
    and batches and succeeded runs, and the worker's processed records, batches, latency
    observations and processed-set size all increase from one query to a later one."""
    prom = stack.prometheus
    first: dict[str, float] = {}
    for promql in GROWING:
        result = prom.wait_for(promql, above(0))
        first[promql] = float(result[0]["value"][1])
    for promql, before in first.items():
        prom.wait_for(promql, above(before))


def test_worker_lag_and_pending_gauges_are_scraped_per_connector(stack: Stack) -> None:
    """dcl_worker_group_lag and dcl_worker_pending_entries exist for every demo connector,
    are never negative, and keep getting fresh samples (their sample count grows)."""
    prom = stack.prometheus
    for gauge in GAUGES:
        result = prom.wait_for(f'{gauge}{{job="dcl-worker"}}', lambda r: len(r) == len(CONNECTORS))
        assert sorted(s["metric"]["connector"] for s in result) == sorted(CONNECTORS)
        assert all(float(s["value"][1]) >= 0 for s in result), result
        count = f"sum(count_over_time({gauge}[5m]))"
        before = prom.value(count) or 0.0
        prom.wait_for(count, above(before))


def test_end_to_end_latency_p99_is_a_number(stack: Stack) -> None:
    """histogram_quantile(0.99, ...) over the end-to-end latency buckets is a finite,
    positive number of seconds (below the largest bucket, 60 s)."""
    prom = stack.prometheus

    def finite(result: list[Sample]) -> bool:
        return bool(result) and math.isfinite(float(result[0]["value"][1]))

    result = prom.wait_for(P99_LATENCY, finite)
    p99 = float(result[0]["value"][1])
    assert 0 < p99 < 60, p99


def test_alert_rules_load_and_evaluate_healthy(stack: Stack) -> None:
    """Every alert of deploy/prometheus/alerts.yml is loaded, and once evaluated against
    the live series each rule's health is "ok" with no lastError."""
    prom = stack.prometheus
    expected = {
        rule["alert"]
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
    }

    def evaluated() -> bool:
        rules = prom.rules()
        return {r["name"] for r in rules} == expected and all(
            r["health"] != "unknown" for r in rules
        )

    poll(evaluated, "every alert rule to be loaded and evaluated")
    rules = prom.rules()
    assert sorted(r["name"] for r in rules) == sorted(expected)
    broken = [(r["name"], r["health"], r.get("lastError")) for r in rules]
    broken = [b for b in broken if b[1] != "ok" or b[2]]
    assert broken == [], broken


def test_health_endpoints_answer_200_on_both_daemons(stack: Stack) -> None:
    """/healthz and /readyz answer 200 on aam-bridge and on dcl-worker."""
    for daemon in stack.daemons:
        for path in ("/healthz", "/readyz"):
            poll(daemon.answers(path, 200), f"{daemon.name} {path} == 200")


def test_without_redis_readyz_is_503_healthz_200_then_sigterm_exits_zero(stack: Stack) -> None:
    """With Redis stopped, /readyz of both daemons answers 503 while /healthz stays 200
    (liveness never depends on Redis); with Redis back, /readyz returns to 200; SIGTERM
    then stops both daemons with exit code 0. Stops the stack: keep this test last."""
    stack.redis.stop()
    for daemon in stack.daemons:
        poll(daemon.answers("/readyz", 503), f"{daemon.name} /readyz == 503")
        assert daemon.status("/healthz") == 200, daemon.log_tail()
    # Liveness holds for a while, not just at one instant: the loops keep failing on Redis.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        for daemon in stack.daemons:
            assert daemon.status("/healthz") == 200, daemon.log_tail()
            assert daemon.process.poll() is None, daemon.log_tail()
        time.sleep(0.25)

    stack.redis.start()
    for daemon in stack.daemons:
        poll(daemon.answers("/readyz", 200), f"{daemon.name} /readyz == 200 again")

    codes = {daemon.name: daemon.stop() for daemon in stack.daemons}
    assert codes == {"aam-bridge": 0, "dcl-worker": 0}, stack.diagnostics()
