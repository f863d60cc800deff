"""The Grafana dashboard and its provisioning for the compose stack."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.deploy.contract import HISTOGRAMS, METRIC_NAMES, metric_names
from tests.deploy.toolbox import REPO

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "aam-dcl.json"
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels() -> list[dict[str, Any]]:
    found = []
    for panel in _dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [panel for panel in found if panel["type"] != "row"]


def _exprs() -> list[str]:
    return [target["expr"] for panel in _panels() for target in panel["targets"]]


@pytest.mark.parametrize("panel", _panels(), ids=lambda panel: panel["title"])
def test_panel_queries_use_only_contract_metrics(panel: dict[str, Any]) -> None:
    """Every query of every panel selects only metric names the daemons export."""
    assert panel["targets"], "a panel without a query"
    for target in panel["targets"]:
        names = metric_names(target["expr"])
        assert names, target["expr"]
        assert names <= METRIC_NAMES, f"unknown metrics {names - METRIC_NAMES}"


def test_template_variables_tenant_and_connector_query_contract_metrics() -> None:
    """The dashboard has `tenant` and `connector` variables filled from a contract
    metric's labels, connector depending on the chosen tenant."""
    variables = {var["name"]: var for var in _dashboard()["templating"]["list"]}
    assert {"tenant", "connector"} <= set(variables)
    for name in ("tenant", "connector"):
        match = LABEL_VALUES.match(variables[name]["query"]["query"])
        assert match, variables[name]["query"]
        assert match["label"] == name
        assert metric_names(match["selector"]) <= METRIC_NAMES
    assert "$tenant" in variables["connector"]["query"]["query"]


def test_per_connector_queries_filter_on_the_variables() -> None:
    """Every query of a per-connector metric filters on $tenant and $connector."""
    for expr in _exprs():
        names = metric_names(expr)
        if names & {"up", "aam_bridge_build_info", "dcl_worker_build_info"}:
            continue
        assert 'tenant=~"$tenant"' in expr, expr
        if "connector" in expr:
            assert 'connector=~"$connector"' in expr, expr


def test_dashboard_shows_the_required_signals() -> None:
    """Throughput, lag, pending, oldest pending age, emit→ack latency percentiles
    (histogram_quantile over the end-to-end histogram), dead letters and
    back-pressure all appear in some panel."""
    exprs = "\n".join(_exprs())
    for metric in (
        "aam_bridge_records_published_total",
        "dcl_worker_records_total",
        "dcl_worker_group_lag",
        "dcl_worker_pending_entries",
        "dcl_worker_oldest_pending_age_seconds",
        "dcl_worker_dead_lettered_total",
        "aam_bridge_backpressure_active",
    ):
        assert metric in exprs, metric
    latency = [e for e in _exprs() if "dcl_worker_end_to_end_latency_seconds_bucket" in e]
    quantiles = {q for e in latency for q in re.findall(r"histogram_quantile\(([0-9.]+)", e)}
    assert {"0.5", "0.99"} <= quantiles
    assert all(" le)" in e or "le," in e for e in latency), "quantiles need the le label"
    for histogram in HISTOGRAMS:
        assert f"{histogram}_bucket" in exprs, histogram


def test_panels_have_unique_ids_and_use_the_provisioned_datasource() -> None:
    """Panel ids are unique and every panel queries the datasource uid that the
    provisioning file creates."""
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    panels = _panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]


def test_dashboard_provider_points_at_the_mounted_dashboards() -> None:
    """The dashboard provider reads the folder where docker-compose.yml mounts
    deploy/grafana/dashboards."""
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/aam-dcl.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
