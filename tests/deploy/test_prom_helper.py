"""The reusable Prometheus helper (prom.py) runs a real server that scrapes and answers."""

from __future__ import annotations

from collections.abc import Callable

from tests.deploy.prom import PrometheusServer, free_port


def test_prometheus_helper_scrapes_targets_and_answers_queries(
    prometheus_server: Callable[..., PrometheusServer],
) -> None:
    """A Prometheus started by the helper becomes ready, scrapes itself (up == 1,
    its own series queryable through /api/v1/query) and reports a target that
    nothing listens on as up == 0.

    One server for both checks: Prometheus' discovery hands targets to the
    scraper only after ~5 s, so each new server costs that much.
    """
    dead = f"127.0.0.1:{free_port()}"
    prom = prometheus_server({"dcl-worker": [dead]}, scrape_self=True, scrape_interval_s=0.5)

    up = prom.wait_for('up{job="prometheus"} == 1')
    assert up[0]["metric"]["instance"] == prom.address
    build = prom.wait_for('prometheus_build_info{job="prometheus"}')
    assert build[0]["value"][1] == "1"

    down = prom.wait_for('up{job="dcl-worker"} == 0')
    assert down[0]["metric"]["instance"] == dead


def test_prometheus_helper_stop_ends_the_process(
    prometheus_server: Callable[..., PrometheusServer],
) -> None:
    """stop() terminates the server and is idempotent."""
    prom = prometheus_server({}, scrape_self=True)
    prom.stop()
    prom.stop()
    assert prom.process.poll() is not None
