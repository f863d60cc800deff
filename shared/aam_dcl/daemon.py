"""Daemon lifecycle shared by aam-bridge and dcl-worker.

Start-up: settings (a bad value → one line on stderr naming it, exit 2), logging, uvloop.
Shutdown: SIGTERM/SIGINT set an Event; the service stops reading, finishes in-flight work
within SHUTDOWN_GRACE_S, then whatever is left is cancelled. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

import uvloop

from aam_dcl.config import Settings, load_settings
from aam_dcl.errors import ConfigError
from aam_dcl.logs import configure_logging, get_logger

log = get_logger("aam_dcl.daemon")

Service = Callable[[Settings, asyncio.Event], Awaitable[None]]


def run_daemon(name: str, service: Service) -> None:
    """Entry point of a daemon: never returns; exits 0 after a clean stop."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    try:
        uvloop.run(_main(name, settings, service))
    except ConfigError as exc:  # found after start-up, e.g. in the connectors file
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(0)


async def _main(name: str, settings: Settings, service: Service) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second_signal_exit_now", signal=signal.Signals(signum).name)
            raise SystemExit(1)
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await service(settings, stopping)
    log.info("stopped", daemon=name)
