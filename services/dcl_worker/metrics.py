"""dcl-worker's Prometheus metrics (the README lists them; labels are bounded: no batch ids)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from aam_dcl import __version__

_C = ("tenant", "connector")
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)

BATCHES = Counter("dcl_worker_batches", "Batches handled, by outcome.", [*_C, "outcome"])
RECORDS = Counter("dcl_worker_records", "Records handled, by outcome.", [*_C, "outcome"])
PROCESSING_SECONDS = Histogram(
    "dcl_worker_processing_duration_seconds",
    "Time to handle one read of entries: decode, dedupe, sink write, mark and ack.",
    _C,
    buckets=_LATENCY_BUCKETS,
)
END_TO_END_SECONDS = Histogram(
    "dcl_worker_end_to_end_latency_seconds",
    "From the producer's emitted_at to the worker's XACK, per batch.",
    _C,
    buckets=_LATENCY_BUCKETS,
)
STREAM_LENGTH = Gauge("dcl_worker_stream_length", "XLEN of the connector stream.", _C)
GROUP_LAG = Gauge("dcl_worker_group_lag", "Entries not yet delivered to the group.", _C)
PENDING = Gauge("dcl_worker_pending_entries", "Entries delivered but not acknowledged.", _C)
OLDEST_PENDING_AGE = Gauge(
    "dcl_worker_oldest_pending_age_seconds", "Age of the oldest pending entry (by its id).", _C
)
PROCESSED_SET_SIZE = Gauge(
    "dcl_worker_processed_set_size", "SCARD of dcl:processed_batches:{tenant}.", ["tenant"]
)
RECLAIMED = Counter(
    "dcl_worker_reclaimed_entries", "Entries taken over from idle consumers (XAUTOCLAIM).", _C
)
DEAD_LETTERED = Counter(
    "dcl_worker_dead_lettered",
    "Entries moved to the dead-letter stream, by reason.",
    [*_C, "reason"],
)
DELETED_PENDING = Counter(
    "dcl_worker_deleted_pending_entries",
    "Pending entries found deleted from the stream (trimmed or XDEL'd before being processed).",
    _C,
)
DEAD_LETTER_LENGTH = Gauge(
    "dcl_worker_dead_letter_stream_length", "XLEN of the connector's dead-letter stream.", _C
)
SINK_ERRORS = Counter("dcl_worker_sink_errors", "Failed writes to the DCL store.", _C)
REDIS_ERRORS = Counter(
    "dcl_worker_redis_errors", "Redis commands that failed and were retried.", _C
)
PAUSED = Gauge("dcl_worker_paused", "1 while consumption is paused by an operator.", ["tenant"])
CONSUMING = Gauge(
    "dcl_worker_consuming", "1 when the worker consumes (USE_AAM_AS_SOURCE=true).", ["tenant"]
)
STREAMS = Gauge("dcl_worker_streams", "Connector streams this worker consumes.", ["tenant"])
IGNORED_STREAMS = Gauge(
    "dcl_worker_ignored_streams",
    "Keys under aam:dcl:{tenant}:* that are not connector streams (logged once each).",
    ["tenant"],
)
SCHEMA_CHANGES = Counter(
    "dcl_worker_schema_changes",
    "Changes to the store's tables (created, column added, type widened, key differs), by kind.",
    ["tenant", "kind"],
)
BUILD_INFO = Gauge("dcl_worker_build_info", "Build information.", ["version"])
BUILD_INFO.labels(__version__).set(1)

OUTCOMES = ("processed", "duplicate", "dead_lettered", "failed")
# What the sinks' schema history records (docs/sinks.md, The registry and the history).
SCHEMA_CHANGE_KINDS = ("table_created", "column_added", "type_widened", "key_differs")
# Every reason a batch can be dead-lettered for (docs/operations.md explains each).
DEAD_LETTER_REASONS = (
    "malformed_json", "wrong_shape", "oversize", "connector_mismatch", "future_batch_id",
    "sink_rejected", "max_deliveries", "too_many_columns", "name_collision", "batch_id_conflict",
    "bad_deleted_key",
)  # fmt: skip


def init_stream(tenant: str, connector: str) -> None:
    """Create every series of a stream at 0 (the Prometheus convention), so dashboards and
    alerts see 0 rather than "No data" on a healthy pipeline."""
    labels = (tenant, connector)
    for outcome in OUTCOMES:
        BATCHES.labels(*labels, outcome)
        RECORDS.labels(*labels, outcome)
    for reason in DEAD_LETTER_REASONS:
        DEAD_LETTERED.labels(*labels, reason)
    for counter in (RECLAIMED, DELETED_PENDING, SINK_ERRORS, REDIS_ERRORS):
        counter.labels(*labels)
    PROCESSING_SECONDS.labels(*labels)
    END_TO_END_SECONDS.labels(*labels)
    for gauge in (STREAM_LENGTH, PENDING, GROUP_LAG, OLDEST_PENDING_AGE, DEAD_LETTER_LENGTH):
        gauge.labels(*labels)


def init_tenant(tenant: str) -> None:
    for gauge in (PAUSED, STREAMS, IGNORED_STREAMS, PROCESSED_SET_SIZE):
        gauge.labels(tenant)
    for kind in SCHEMA_CHANGE_KINDS:
        SCHEMA_CHANGES.labels(tenant, kind)
