"""What landed in the DCL store, for ``aam-dcl tables`` and ``aam-dcl schema``: the sink's
read-only reports, read through a sink opened for the tenant and closed again.

An embedded DuckDB file can be open in one process at a time: while the worker holds it, the
store is retried politely for a few seconds and then the command says so. Reading while the
worker writes under load needs PostgreSQL (docs/sinks.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aam_dcl.config import Settings
from aam_dcl.errors import SinkUnavailable
from dcl_worker.sinks.base import SchemaReport, Sink, TableReport
from dcl_worker.sinks.registry import create_sink

T = TypeVar("T")
RETRY_FOR_S = 5.0  # how long a busy or unreachable store is tried again
RETRY_EVERY_S = 0.5


async def read_store(settings: Settings, read: Callable[[Sink], Awaitable[T]]) -> T:
    """``read(sink)`` on the tenant's store; SinkUnavailable after RETRY_FOR_S of trying."""
    deadline = time.monotonic() + RETRY_FOR_S
    while True:
        sink = create_sink(
            settings.sink_url,
            settings.tenant_id,
            max_columns=settings.max_columns,
            delete_mode=settings.delete_mode,
        )
        try:
            await sink.open()
            return await read(sink)
        except SinkUnavailable as exc:
            if time.monotonic() >= deadline:
                hint = (
                    " (an embedded DuckDB file is open in one process at a time: stop the "
                    "worker, or let it go idle, to read it; under load use PostgreSQL)"
                    if sink.scheme == "duckdb"
                    else ""
                )
                raise SinkUnavailable(f"{exc}{hint}") from exc
        finally:
            await sink.close()
        await asyncio.sleep(RETRY_EVERY_S)


def table_json(report: TableReport) -> dict[str, Any]:
    return {
        "table": report.table,
        "connector": report.connector,
        "source_table": report.source_table,
        "live_rows": report.live_rows,
        "deleted_rows": report.deleted_rows,
        "columns": list(report.columns),
        "primary_key": list(report.primary_key),
        "created_at": _iso(report.created_at),
        "last_batch_id": report.last_batch_id,
        "last_write_at": _iso(report.last_write_at),
    }


def schema_json(report: SchemaReport) -> dict[str, Any]:
    return {
        **table_json(report.table),
        "columns": [
            {"name": c.name, "type": c.type, "store_type": c.store_type} for c in report.columns
        ],
        "history": [
            {
                "changed_at": _iso(h.changed_at),
                "batch_id": h.batch_id,
                "kind": h.kind,
                "column": h.column,
                "old_type": h.old_type,
                "new_type": h.new_type,
                "detail": h.detail,
            }
            for h in report.history
        ],
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
