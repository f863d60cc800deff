"""Metrics of the connectors' HTTP layer (``_http``): requests, retries, waits, API quota.

Labels are ``tenant`` and ``connector`` (as in ``aam_bridge.metrics``) plus one bounded label.
"""

from __future__ import annotations

import structlog
from prometheus_client import Counter, Gauge

_C = ("tenant", "connector")

HTTP_REQUESTS = Counter(
    "aam_bridge_http_requests",
    "HTTP requests a connector sent to its source, by status code (or timeout / connection).",
    [*_C, "status"],
)
HTTP_RETRIES = Counter(
    "aam_bridge_http_retries",
    "Requests sent again, by reason (status_5xx, status_429, timeout, connection, token).",
    [*_C, "reason"],
)
HTTP_WAIT_SECONDS = Counter(
    "aam_bridge_http_rate_limit_wait_seconds",
    "Time requests waited for the request-rate limit (limiter) or a source's Retry-After.",
    [*_C, "source"],
)
API_QUOTA_USED = Gauge(
    "aam_bridge_api_quota_used", "API calls used of the source's quota, as it last said.", _C
)
API_QUOTA_LIMIT = Gauge("aam_bridge_api_quota_limit", "The source's API call quota.", _C)

RETRY_REASONS = ("status_5xx", "status_429", "timeout", "connection", "token")
WAIT_SOURCES = ("limiter", "retry_after")


def labels_for(connector: str) -> tuple[str, str]:
    """(tenant, connector) for a connector's series.

    A connector is not told its tenant (ConnectorConfig has no such field); the bridge binds
    it to the log context of the connector's task before ``open()``, so it is taken there.
    """
    tenant = structlog.contextvars.get_contextvars().get("tenant")
    return (tenant if isinstance(tenant, str) and tenant else "default", connector)


def init_series(labels: tuple[str, str]) -> None:
    """Create a connector's retry and wait series at 0 (request statuses appear as seen)."""
    for reason in RETRY_REASONS:
        HTTP_RETRIES.labels(*labels, reason)
    for source in WAIT_SOURCES:
        HTTP_WAIT_SECONDS.labels(*labels, source)
