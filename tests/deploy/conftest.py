"""Fixtures of the deploy tests: rendered kustomize overlays and a real Prometheus."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.prom import PrometheusServer, start_prometheus


@pytest.fixture
def prometheus_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., PrometheusServer]]:
    """Start real Prometheus servers: `prometheus_server({"job": ["host:port"]}, ...)`.

    Every server started through this fixture is stopped at the end of the test.
    """
    started: list[PrometheusServer] = []

    def start(targets: Mapping[str, Sequence[str]], **options: Any) -> PrometheusServer:
        server = start_prometheus(tmp_path_factory.mktemp("prometheus"), targets, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return Path(__file__).resolve().parents[2]
