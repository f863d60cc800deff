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
    """Run a worker until ``stopping`` is set; used by the console script and the demo.

    With TENANT_IDS, one worker per tenant in this process (each its own group, processed
    set, sink schema and loops), sharing the Redis client and the HTTP port."""
    client = await connect(settings)
    tenants = [settings.for_tenant(t) for t in settings.worker_tenants]
    sinks = [
        create_sink(
            s.sink_url,
            s.tenant_id,
            max_columns=s.max_columns,
            delete_mode=s.delete_mode,
        )
        for s in tenants
    ]
    workers = [Worker(s, client, sink, stopping) for s, sink in zip(tenants, sinks, strict=True)]

    def live() -> str | None:
        return next(filter(None, (w.live() for w in workers)), None)

    async def ready() -> str | None:
        for worker in workers:
            problem = await worker.ready()
            if problem:
                return problem if len(workers) == 1 else f"tenant {worker.tenant}: {problem}"
        return None

    try:
        async with health_server(
            settings.metrics_host, settings.metrics_port, DEFAULT_METRICS_PORT,
            live=live, ready=ready,
        ) as port:  # fmt: skip
            log.info(
                "worker_started",
                version=__version__,
                tenant=",".join(settings.worker_tenants),
                consumer=settings.consumer_name,
                redis=redacted_url(settings.effective_redis_url),
                sink=redacted_url(settings.sink_url),
                metrics_port=port,
            )
            await _run_all(workers, stopping)
    finally:
        for sink in sinks:
            await sink.close()
        await client.aclose()


async def _run_all(workers: list[Worker], stopping: asyncio.Event) -> None:
    """Every tenant's worker until stopping; one that fails stops the others gracefully,
    then its error is raised (a sink that can never work stops the daemon, as with one)."""

    async def run(worker: Worker) -> None:
        structlog.contextvars.bind_contextvars(tenant=worker.tenant)  # this task's log lines
        await worker.run()

    tasks = [asyncio.create_task(run(w), name=f"worker-{w.tenant}") for w in workers]
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    failed = [t for t in done if not t.cancelled() and t.exception() is not None]
    if failed:
        stopping.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    if failed:
        raise failed[0].exception()  # type: ignore[misc]  # not None: checked above


def main() -> None:
    from aam_dcl.daemon import run_daemon

    run_daemon("dcl-worker", serve, role="worker")
