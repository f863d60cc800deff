"""A real Prometheus for tests: Debian's `prometheus` binary on a free loopback
port, scraping the targets it is given, with its storage in a temporary folder.

    with running_prometheus(tmp_path, {"dcl-worker": ["127.0.0.1:9102"]}) as prom:
        prom.wait_for('up{job="dcl-worker"} == 1')
        prom.query("dcl_worker_group_lag")
        prom.value('sum(dcl_worker_records_total{outcome="processed"})')
        prom.rules()  # loaded alert/recording rules with their health

The `prometheus_server` fixture in conftest.py wraps `running_prometheus`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.toolbox import system_tool

READY_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.1
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 5.0

Sample = dict[str, Any]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(
    path: Path,
    targets: Mapping[str, Sequence[str]],
    *,
    scrape_interval_s: float,
    rule_files: Sequence[Path] = (),
    self_address: str | None = None,
) -> None:
    """A prometheus.yml with one static job per entry of `targets` (job -> host:port)."""
    interval = f"{int(scrape_interval_s * 1000)}ms"
    jobs = [
        {"job_name": job, "static_configs": [{"targets": list(addresses)}]}
        for job, addresses in targets.items()
    ]
    if self_address is not None:
        jobs.append({"job_name": "prometheus", "static_configs": [{"targets": [self_address]}]})
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rule) for rule in rule_files],
        "scrape_configs": jobs,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@dataclass
class PrometheusServer:
    """A running Prometheus process and the HTTP API to query it."""

    url: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        """The end of Prometheus' own log, for failure messages."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=HTTP_TIMEOUT_S) as resp:
            return json.load(resp)

    def query(self, promql: str) -> list[Sample]:
        """Evaluate an instant query now; the result vector's samples."""
        body = self._get("/api/v1/query", {"query": promql})
        if body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {body}")
        result: list[Sample] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The value of a query that yields at most one sample (None when it yields none)."""
        result = self.query(promql)
        if len(result) > 1:
            raise AssertionError(f"{promql!r} yields {len(result)} samples, expected one: {result}")
        return float(result[0]["value"][1]) if result else None

    def rules(self) -> list[dict[str, Any]]:
        """Every rule Prometheus loaded (/api/v1/rules), each with its group's name as `group`."""
        body = self._get("/api/v1/rules")
        if body.get("status") != "success":
            raise AssertionError(f"/api/v1/rules failed: {body}")
        return [
            {**rule, "group": group["name"]}
            for group in body["data"]["groups"]
            for rule in group["rules"]
        ]

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[Sample]], bool] = bool,
        timeout_s: float = READY_TIMEOUT_S,
    ) -> list[Sample]:
        """Poll `promql` until `predicate(result)` holds (default: not empty)."""
        deadline = time.monotonic() + timeout_s
        result: list[Sample] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if predicate(result):
                return result
            time.sleep(POLL_INTERVAL_S)
        raise AssertionError(
            f"{promql!r} did not hold within {timeout_s} s; last result {result}\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if Prometheus has not exited in time. Idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _wait_ready(server: PrometheusServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"prometheus exited with {server.process.returncode}\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(POLL_INTERVAL_S)
    raise AssertionError(f"prometheus not ready after {timeout_s} s\n{server.log_tail()}")


def start_prometheus(
    workdir: Path,
    targets: Mapping[str, Sequence[str]],
    *,
    scrape_self: bool = False,
    scrape_interval_s: float = 1.0,
    rule_files: Sequence[Path] = (),
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> PrometheusServer:
    """Start Prometheus in `workdir` and return once /-/ready answers 200."""
    binary = system_tool("prometheus")
    port = free_port()
    address = f"127.0.0.1:{port}"
    config_path = workdir / "prometheus.yml"
    write_config(
        config_path,
        targets,
        scrape_interval_s=scrape_interval_s,
        rule_files=rule_files,
        self_address=address if scrape_self else None,
    )
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(binary),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={address}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = PrometheusServer(
        url=f"http://{address}", address=address, process=process, log_path=log_path
    )
    try:
        _wait_ready(server, ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def running_prometheus(
    workdir: Path, targets: Mapping[str, Sequence[str]], **options: Any
) -> Iterator[PrometheusServer]:
    """`start_prometheus` as a context manager that always stops the process."""
    server = start_prometheus(workdir, targets, **options)
    try:
        yield server
    finally:
        server.stop()
