"""Prometheus config and alert rules: checked and unit-tested by the real promtool."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy.contract import METRIC_NAMES, metric_names
from tests.deploy.toolbox import REPO, output, run, system_tool

PROM_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
EXPECTED_ALERTS = {
    "AamDclConsumerLagHigh",
    "AamDclConsumerStalled",
    "AamDclDeadLettersGrowing",
    "AamDclPublishErrors",
    "AamDclBackpressureActive",
    "AamDclEntriesTrimmedWhilePending",
    "AamDclProcessedSetGrowing",
    "AamDclTargetDown",
}


def _rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_prometheus_config() -> None:
    """`promtool check config` passes for prometheus.yml and the rule file it loads."""
    result = run([system_tool("promtool"), "check", "config", PROM_DIR / "prometheus.yml"])
    assert result.returncode == 0, output(result)
    assert "1 rule files found" in result.stdout


def test_promtool_accepts_the_alert_rules() -> None:
    """`promtool check rules` passes and finds every alert."""
    result = run([system_tool("promtool"), "check", "rules", ALERTS])
    assert result.returncode == 0, output(result)
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_alert_rule_unit_tests_pass() -> None:
    """`promtool test rules alerts_test.yml` passes: every alert fires and stays
    quiet exactly where its tests say."""
    result = run([system_tool("promtool"), "test", "rules", ALERTS_TEST])
    assert result.returncode == 0, output(result)
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_fails_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The rule tests can fail: expecting AamDclConsumerLagHigh for a lag of 400
    (below its threshold of 500) is reported as a failure."""
    wrong = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'dcl_worker_group_lag{tenant="default",connector="hubspot"}',
                        "values": "400x20",
                    }
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "AamDclConsumerLagHigh",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "tenant": "default",
                                    "connector": "hubspot",
                                }
                            }
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "wrong_test.yml"
    path.write_text(yaml.safe_dump(wrong))
    result = run([system_tool("promtool"), "test", "rules", path])
    assert result.returncode != 0, output(result)
    assert "AamDclConsumerLagHigh" in result.stdout + result.stderr


def test_every_required_alert_is_defined() -> None:
    """alerts.yml defines the issue's alerts: lag high, stalled, dead letters,
    publish errors, back-pressure, trimmed while pending, processed-set growth,
    target down; each with a severity, a summary and a description."""
    rules = _rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    """alerts_test.yml checks each alert at least once firing and once not firing."""
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == EXPECTED_ALERTS, f"no firing case for {EXPECTED_ALERTS - firing}"
    assert quiet == EXPECTED_ALERTS, f"no quiet case for {EXPECTED_ALERTS - quiet}"


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_alert_expressions_use_only_contract_metrics(rule: dict[str, str]) -> None:
    """An alert's expression selects only metric names the daemons export (or `up`)."""
    names = metric_names(rule["expr"])
    assert names, rule["expr"]
    assert names <= METRIC_NAMES, f"unknown metrics {names - METRIC_NAMES}"


def test_metric_name_reader_sees_through_promql_syntax() -> None:
    """The PromQL reader used above returns metric names only: not functions,
    grouping labels, label matchers, durations or Grafana variables."""
    expr = (
        'histogram_quantile(0.99, sum by (connector, le) (rate(dcl_worker_x_bucket{tenant=~"$t"}'
        "[$__rate_interval]))) > on (tenant) group_left max without (job) (up offset 5m)"
    )
    assert metric_names(expr) == {"dcl_worker_x_bucket", "up"}
