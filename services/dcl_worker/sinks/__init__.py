"""The DCL stores a worker writes batches into, exactly once: DuckDB, PostgreSQL, null."""

from dcl_worker.sinks.base import Sink
from dcl_worker.sinks.registry import SCHEMES, create_sink

__all__ = ["SCHEMES", "Sink", "create_sink"]
