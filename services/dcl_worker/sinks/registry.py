"""DCL_SINK_URL -> a Sink. Adding a store is one module plus one line in SCHEMES."""

from __future__ import annotations

from aam_dcl.errors import ConfigError
from dcl_worker.sinks._deletes import SOFT
from dcl_worker.sinks._sql import DEFAULT_MAX_COLUMNS
from dcl_worker.sinks.base import Sink
from dcl_worker.sinks.duckdb import DuckDBSink
from dcl_worker.sinks.null import NullSink
from dcl_worker.sinks.postgres import PostgresSink

SCHEMES: dict[str, type[Sink]] = {
    "duckdb": DuckDBSink,
    "postgresql": PostgresSink,
    "postgres": PostgresSink,
    "null": NullSink,
}


def create_sink(
    url: str,
    tenant: str,
    *,
    max_columns: int = DEFAULT_MAX_COLUMNS,
    delete_mode: str = SOFT,
) -> Sink:
    """The sink for ``url`` (not yet opened), with DCL_MAX_COLUMNS and DCL_DELETE_MODE. An
    unknown scheme raises ConfigError."""
    scheme, sep, _ = url.partition("://")
    sink_class = SCHEMES.get(scheme.lower()) if sep else None
    if sink_class is None:
        raise ConfigError(
            f"DCL_SINK_URL={_redacted(url)!r} has an unknown scheme; allowed: "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    return sink_class(url, tenant, max_columns=max_columns, delete_mode=delete_mode)


def _redacted(url: str) -> str:
    """The URL without a password, for messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not (sep and at and ":" in creds):
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
