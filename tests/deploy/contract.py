"""The metric names of the daemons' contract, and a small PromQL reader that lists the metric
names an expression selects."""

from __future__ import annotations

import re

COUNTERS_AND_GAUGES = frozenset(
    {
        "aam_bridge_records_published_total",
        "aam_bridge_batches_published_total",
        "aam_bridge_publish_errors_total",
        "aam_bridge_sync_runs_total",
        "aam_bridge_backpressure_seconds_total",
        "aam_bridge_backpressure_active",
        "aam_bridge_stream_length",
        "aam_bridge_build_info",
        "dcl_worker_batches_total",
        "dcl_worker_records_total",
        "dcl_worker_stream_length",
        "dcl_worker_group_lag",
        "dcl_worker_pending_entries",
        "dcl_worker_oldest_pending_age_seconds",
        "dcl_worker_processed_set_size",
        "dcl_worker_reclaimed_entries_total",
        "dcl_worker_dead_lettered_total",
        "dcl_worker_deleted_pending_entries_total",
        "dcl_worker_dead_letter_stream_length",
        "dcl_worker_sink_errors_total",
        "dcl_worker_paused",
        "dcl_worker_consuming",
        "dcl_worker_build_info",
    }
)
HISTOGRAMS = frozenset(
    {
        "aam_bridge_publish_duration_seconds",
        "dcl_worker_processing_duration_seconds",
        "dcl_worker_end_to_end_latency_seconds",
    }
)
# Prometheus' own per-target series.
SCRAPE_SERIES = frozenset({"up"})

METRIC_NAMES = (
    COUNTERS_AND_GAUGES
    | SCRAPE_SERIES
    | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)

CONNECTORS = ("salesforce", "hubspot", "dynamics")
SHUTDOWN_GRACE_S = 25

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"and", "or", "unless", "bool", "offset", "inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (functions, keywords, label
    names and values, durations and Grafana variables are not metric names)."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub("", text)
    text = _BRACKETS.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.groups()
        if call or name in _KEYWORDS:
            continue
        names.add(name)
    return names
