"""aam-bridge entry point: settings → connectors, Redis, HTTP server → Bridge until SIGTERM."""

from __future__ import annotations

import asyncio

import structlog

from aam_bridge.bridge import Bridge
from aam_bridge.connectors.base import ConnectorConfig
from aam_bridge.connectors.registry import create
from aam_bridge.connectors_file import load_connectors
from aam_dcl import __version__
from aam_dcl.config import Settings
from aam_dcl.http import health_server
from aam_dcl.logs import redacted_url
from aam_dcl.redis_conn import connect

DEFAULT_METRICS_PORT = 9101

log = structlog.get_logger("aam_bridge")


async def serve(
    settings: Settings,
    stopping: asyncio.Event,
    configs: list[ConnectorConfig] | None = None,
) -> None:
    """Run the bridge until its connectors are done or ``stopping`` is set.

    ``configs`` defaults to AAM_CONNECTORS_FILE (or the built-in demo connectors).
    """
    if configs is None:
        configs = load_connectors(settings.connectors_file, settings.tenant_id)
    connectors = [create(config) for config in configs]
    client = await connect(settings)
    bridge = Bridge(settings, client, connectors, stopping)
    try:
        async with health_server(
            settings.metrics_host, settings.metrics_port, DEFAULT_METRICS_PORT,
            live=bridge.live, ready=bridge.ready,
        ) as port:  # fmt: skip
            log.info(
                "bridge_started",
                version=__version__,
                tenant=settings.tenant_id,
                redis=redacted_url(settings.effective_redis_url),
                connectors=[c.name for c in configs],
                chunk_size=settings.batch_chunk_size,
                maxlen=settings.stream_maxlen,
                trim_policy=settings.trim_policy,
                metrics_port=port,
            )
            await bridge.run()
    finally:
        await client.aclose()


def main() -> None:
    from aam_dcl.daemon import run_daemon

    def connector_names(settings: Settings) -> list[str]:
        return [c.name for c in load_connectors(settings.connectors_file, settings.tenant_id)]

    run_daemon("aam-bridge", serve, role="bridge", connector_names=connector_names)
