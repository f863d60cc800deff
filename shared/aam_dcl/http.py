"""The one HTTP port of each daemon: /metrics (Prometheus), /healthz and /readyz.

/healthz is liveness: it answers from memory whether the daemon's loops are alive and
never calls Redis (a Redis outage must not get pods killed). /readyz asks the daemon's
readiness check (Redis reachable, group and sink ready) with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    disable_created_metrics,
    generate_latest,
)

from aam_dcl.errors import ConfigError

# `*_created` series double the series count and carry nothing an operator uses.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client

LiveCheck = Callable[[], str | None]  # None when alive, else what is wrong
ReadyCheck = Callable[[], Awaitable[str | None]]

READY_TIMEOUT_S = 2.0


async def start_http_server(
    host: str, port: int, *, live: LiveCheck, ready: ReadyCheck
) -> web.AppRunner:
    """Serve the three endpoints; returns the runner (``await runner.cleanup()`` to stop)."""

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        problem = live()
        return _status(problem)

    async def readyz(_: web.Request) -> web.Response:
        try:
            problem = await asyncio.wait_for(ready(), READY_TIMEOUT_S)
        except TimeoutError:
            problem = f"readiness check took longer than {READY_TIMEOUT_S}s"
        return _status(problem)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(_listen_problem(host, port, exc)) from None
    return runner


def _listen_problem(host: str, port: int, exc: OSError) -> str:
    """One line naming the variable to change when the HTTP port cannot be opened."""
    if isinstance(exc, socket.gaierror):
        return f"METRICS_HOST={host!r} is invalid: it does not resolve ({exc.strerror})"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"METRICS_PORT={port} is invalid: {host}:{port} is already in use by another "
            "process: choose a free port (0 = any free port)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"METRICS_HOST={host!r} is invalid: it is not an address of this machine "
            "(0.0.0.0 = every interface)"
        )
    if exc.errno == errno.EACCES:
        return f"METRICS_PORT={port} is invalid: not allowed to listen on it (ports < 1024)"
    reason = exc.strerror or str(exc)
    return f"METRICS_HOST={host!r} METRICS_PORT={port}: cannot listen there: {reason}"


@contextlib.asynccontextmanager
async def health_server(
    host: str, port: int | None, default_port: int, *, live: LiveCheck, ready: ReadyCheck
) -> AsyncIterator[int]:
    """The daemon's HTTP server for the duration of the block; yields the port it listens on
    (the free port chosen for METRICS_PORT=0). A host or port it cannot listen on raises
    ConfigError naming METRICS_HOST or METRICS_PORT: the daemon stops with one line."""
    port = default_port if port is None else port
    runner = await start_http_server(host, port, live=live, ready=ready)
    try:
        yield _bound_port(runner)
    finally:
        await runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (the free port chosen for METRICS_PORT=0)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise RuntimeError("the HTTP server is not listening")


def _status(problem: str | None) -> web.Response:
    if problem is None:
        return web.Response(text="ok\n")
    return web.Response(status=503, text=f"{problem}\n")
