"""docker-compose.yml, checked by the real compose binary (no Docker engine needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.contract import SHUTDOWN_GRACE_S
from tests.deploy.toolbox import REPO, compose_binary, output, run

COMPOSE_FILE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The compose model after interpolation and merging (`config --format json`)."""
    result = run([compose_binary(), "-f", COMPOSE_FILE, "config", "--format", "json"])
    assert result.returncode == 0, output(result)
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, duration
    return sum(float(value) * units[unit] for value, unit in parts)


def test_compose_config_is_valid() -> None:
    """`docker compose config -q` (the Go binary, not the always-0 wrapper) exits 0."""
    result = run([compose_binary(), "-f", COMPOSE_FILE, "config", "-q"])
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize(
    "broken",
    [
        "services:\n  w:\n    image: x\n    depends_on:\n      r:\n"
        "        condition: service_healthy\n",
        "services:\n  w:\n    image: x\n    stop_grace_period: soon\n",
        "services:\n  w:\n    image: x\n    healthcheck:\n      test: 42\n      intervall: 5s\n",
    ],
    ids=["undefined-dependency", "bad-duration", "unknown-healthcheck-key"],
)
def test_compose_config_rejects_a_broken_file(tmp_path: Path, broken: str) -> None:
    """The check can fail: the same command exits non-zero on an invalid file."""
    path = tmp_path / "docker-compose.yml"
    path.write_text(broken)
    result = run([compose_binary(), "-f", path, "config", "-q"], cwd=tmp_path)
    assert result.returncode != 0, output(result)


def test_redis_is_7_with_aof_everysec_and_a_healthcheck(config: dict[str, Any]) -> None:
    """Redis 7 keeps an append-only file fsynced every second and has a healthcheck."""
    redis = config["services"]["redis"]
    assert re.match(r"redis:7\.", redis["image"]), redis["image"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])


def test_postgres_is_15_with_a_healthcheck(config: dict[str, Any]) -> None:
    """PostgreSQL 15 with a pg_isready healthcheck and the dcl database."""
    postgres = config["services"]["postgres"]
    assert re.match(r"postgres:15\.", postgres["image"]), postgres["image"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["environment"]["POSTGRES_DB"] == "dcl"


def test_daemons_wait_for_healthy_stores(config: dict[str, Any]) -> None:
    """aam-bridge waits for a healthy Redis; dcl-worker for healthy Redis and PostgreSQL."""
    services = config["services"]
    bridge = services["aam-bridge"]["depends_on"]
    worker = services["dcl-worker"]["depends_on"]
    assert bridge["redis"]["condition"] == "service_healthy"
    assert {name: dep["condition"] for name, dep in worker.items()} == {
        "redis": "service_healthy",
        "postgres": "service_healthy",
    }


def test_daemons_get_a_stop_grace_period_above_their_shutdown_grace(
    config: dict[str, Any],
) -> None:
    """stop_grace_period exceeds SHUTDOWN_GRACE_S (25 s) with margin, so Docker's
    SIGKILL never cuts a graceful shutdown short."""
    for name in ("aam-bridge", "dcl-worker"):
        service = config["services"][name]
        grace_s = float(service["environment"]["SHUTDOWN_GRACE_S"])
        assert grace_s == SHUTDOWN_GRACE_S
        assert _seconds(service["stop_grace_period"]) >= grace_s + 5, name


def test_demo_pipeline_runs_the_image_into_postgresql(config: dict[str, Any]) -> None:
    """Both daemons run the one image built from the Dockerfile with their own
    command and port; the worker writes to the compose PostgreSQL."""
    services = config["services"]
    bridge, worker = services["aam-bridge"], services["dcl-worker"]
    assert bridge["image"] == worker["image"]
    assert bridge["build"]["dockerfile"] == worker["build"]["dockerfile"] == "Dockerfile"
    assert bridge["command"] == ["aam-bridge"]
    assert worker["command"] == ["dcl-worker"]
    assert bridge["environment"]["METRICS_PORT"] == "9101"
    assert worker["environment"]["METRICS_PORT"] == "9102"
    assert worker["environment"]["DCL_SINK_URL"] == "postgresql://dcl:dcl@postgres:5432/dcl"
    for env in (bridge["environment"], worker["environment"]):
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["TENANT_ID"] == "default"


def test_prometheus_and_grafana_mount_files_that_exist(config: dict[str, Any]) -> None:
    """Prometheus gets prometheus.yml and alerts.yml, Grafana its provisioning and
    dashboards; every bind-mounted source exists in the repository."""
    binds = {
        name: {v["target"]: v["source"] for v in config["services"][name]["volumes"]}
        for name in ("prometheus", "grafana")
    }
    assert binds["prometheus"]["/etc/prometheus/prometheus.yml"].endswith(
        "deploy/prometheus/prometheus.yml"
    )
    assert binds["prometheus"]["/etc/prometheus/alerts.yml"].endswith(
        "deploy/prometheus/alerts.yml"
    )
    for name, mounts in binds.items():
        for source in mounts.values():
            if source.startswith("/"):
                assert Path(source).exists(), f"{name}: {source}"


def test_prometheus_scrapes_both_daemons_by_service_name() -> None:
    """The compose Prometheus scrapes aam-bridge:9101 and dcl-worker:9102 under the
    job names the alerts use."""
    prom = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in prom["scrape_configs"]}
    assert jobs["aam-bridge"] == ["aam-bridge:9101"]
    assert jobs["dcl-worker"] == ["dcl-worker:9102"]


def test_only_the_user_facing_ports_are_published_and_each_can_be_moved(
    config: dict[str, Any],
) -> None:
    """Redis and PostgreSQL publish no host port (a developer's own servers keep 6379 and
    5432); Grafana, Prometheus and the daemons' metrics bind loopback on ports that
    ``*_HOST_PORT`` variables move."""
    services = config["services"]
    assert "ports" not in services["redis"]
    assert "ports" not in services["postgres"]
    published = {
        name: [(p["host_ip"], p["published"]) for p in service.get("ports", [])]
        for name, service in services.items()
        if service.get("ports")
    }
    assert published == {
        "aam-bridge": [("127.0.0.1", "9101")],
        "dcl-worker": [("127.0.0.1", "9102")],
        "prometheus": [("127.0.0.1", "9090")],
        "grafana": [("127.0.0.1", "3000")],
    }
    env = {
        "AAM_BRIDGE_HOST_PORT": "19101", "DCL_WORKER_HOST_PORT": "19102",
        "PROMETHEUS_HOST_PORT": "19090", "GRAFANA_HOST_PORT": "13000",
    }  # fmt: skip
    result = run([compose_binary(), "-f", COMPOSE_FILE, "config", "--format", "json"], env=env)
    assert result.returncode == 0, output(result)
    moved = json.loads(result.stdout)["services"]
    assert moved["grafana"]["ports"][0]["published"] == "13000"
    assert moved["aam-bridge"]["ports"][0]["published"] == "19101"


def test_grafana_has_a_healthcheck(config: dict[str, Any]) -> None:
    assert "/api/health" in " ".join(config["services"]["grafana"]["healthcheck"]["test"])
