"""aam-bridge's Prometheus metrics (the README lists them; labels are bounded)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from aam_dcl import __version__

_C = ("tenant", "connector")

RECORDS_PUBLISHED = Counter("aam_bridge_records_published", "Records published.", _C)
BATCHES_PUBLISHED = Counter("aam_bridge_batches_published", "Stream entries published.", _C)
PUBLISH_ERRORS = Counter("aam_bridge_publish_errors", "Failed publishes (retried).", _C)
FENCED_WRITES = Counter(
    "aam_bridge_fenced_writes",
    "Writes refused because another bridge took the connector's lease over (this one stops).",
    _C,
)
RECORDS_REJECTED = Counter(
    "aam_bridge_records_rejected",
    "Records not published, by reason (oversize: over AAM_MAX_PAYLOAD_BYTES on its own).",
    [*_C, "reason"],
)
PUBLISH_SECONDS = Histogram(
    "aam_bridge_publish_duration_seconds",
    "Time of one XADD + checkpoint transaction.",
    _C,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
SYNC_RUNS = Counter("aam_bridge_sync_runs", "Sync runs, by status.", [*_C, "status"])
SYNC_RUN_SECONDS = Histogram(
    "aam_bridge_sync_run_duration_seconds",
    "Time of one sync run (a resumed run from its resumption), by status.",
    [*_C, "status"],
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600),
)
BACKPRESSURE_SECONDS = Counter(
    "aam_bridge_backpressure_seconds",
    "Time spent waiting because the group's lag + pending neared AAM_REDIS_STREAM_MAXLEN.",
    _C,
)
BACKPRESSURE_ACTIVE = Gauge(
    "aam_bridge_backpressure_active", "1 while publishing waits for the worker to catch up.", _C
)
STREAM_LENGTH = Gauge("aam_bridge_stream_length", "XLEN of the connector stream.", _C)
LAST_SUCCESS = Gauge(
    "aam_bridge_last_sync_success_timestamp_seconds", "End of the last successful run.", _C
)
BUILD_INFO = Gauge("aam_bridge_build_info", "Build information.", ["version"])
BUILD_INFO.labels(__version__).set(1)

SYNC_STATUSES = ("succeeded", "failed")
REJECT_REASONS = ("oversize",)


def init_connector(tenant: str, connector: str) -> None:
    """Create every series of a connector at 0 (the Prometheus convention), so dashboards
    and alerts see 0 rather than "No data" before anything has happened."""
    labels = (tenant, connector)
    counters = (
        RECORDS_PUBLISHED, BATCHES_PUBLISHED, PUBLISH_ERRORS, FENCED_WRITES, BACKPRESSURE_SECONDS
    )  # fmt: skip
    for counter in counters:
        counter.labels(*labels)
    for status in SYNC_STATUSES:
        SYNC_RUNS.labels(*labels, status)
        SYNC_RUN_SECONDS.labels(*labels, status)
    for reason in REJECT_REASONS:
        RECORDS_REJECTED.labels(*labels, reason)
    PUBLISH_SECONDS.labels(*labels)
    BACKPRESSURE_ACTIVE.labels(*labels).set(0)
    STREAM_LENGTH.labels(*labels)
