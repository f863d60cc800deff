"""dcl-worker entry point: settings → Redis, sink, HTTP server → Worker until SIGTERM."""

from __future__ import annotations

import asyncio

import structlog

from aam_dcl import __version__
from aam_dcl.config import Settings
from aam_dcl.http import health_server
from aam_dcl.logs import redacted_url
from aam_dcl.redis_conn import connect
from dcl_worker.sinks.registry import create_sink
from dcl_worker.worker import Worker

DEFAULT_METRICS_PORT = 9102

log = structlog.get_logger("dcl_worker")


async def serve(settings: Settings, stopping: asyncio.Event) -> None:
    """Run a worker until ``stopping`` is set; used by the console script and the demo."""
    client = connect(settings)
    sink = create_sink(
        settings.sink_url,
        settings.tenant_id,
        max_columns=settings.max_columns,
        delete_mode=settings.delete_mode,
    )
    worker = Worker(settings, client, sink, stopping)
    try:
        async with health_server(
            settings.metrics_host, settings.metrics_port, DEFAULT_METRICS_PORT,
            live=worker.live, ready=worker.ready,
        ) as port:  # fmt: skip
            log.info(
                "worker_started",
                version=__version__,
                tenant=settings.tenant_id,
                consumer=settings.consumer_name,
                redis=redacted_url(settings.effective_redis_url),
                sink=redacted_url(settings.sink_url),
                metrics_port=port,
            )
            await worker.run()
    finally:
        await sink.close()
        await client.aclose()


def main() -> None:
    from aam_dcl.daemon import run_daemon

    run_daemon("dcl-worker", serve, role="worker")
