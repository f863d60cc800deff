"""Daemon lifecycle shared by aam-bridge and dcl-worker.

Command line: ``--help``, ``--version``; anything else is a usage error (exit 2) before
Redis is touched. Everything else is configured by environment variables.
Start-up: settings (a bad value → one line on stderr naming it, exit 2), logging, uvloop,
then the permission check (the Redis user may send what the daemon sends on its tenant's
keys; else one line naming the user, the tenant and the denial, exit 2).
Shutdown: SIGTERM/SIGINT set an Event; the service stops reading, finishes in-flight work
within SHUTDOWN_GRACE_S, then whatever is left is cancelled. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

import click
import uvloop
from redis.exceptions import AuthenticationError, RedisError

from aam_dcl import __version__
from aam_dcl.config import Settings, load_settings
from aam_dcl.errors import ConfigError
from aam_dcl.logs import configure_logging, get_logger, redact_urls_in, redacted_url
from aam_dcl.permissions import PermissionProblem, denied_commands, problem_line, redis_user
from aam_dcl.redis_conn import connect
from aam_dcl.redis_tls import tls_problem, unverified_tls

log = get_logger("aam_dcl.daemon")

Service = Callable[[Settings, asyncio.Event], Awaitable[None]]
ConnectorNames = Callable[[Settings], Sequence[str]]

_HELP = {
    "bridge": "Run the configured connectors (AAM_CONNECTORS_FILE, else the demo connectors) "
    "and publish their records to the Redis streams aam:dcl:{tenant}:{connector}.",
    "worker": "Read the tenant's streams aam:dcl:{tenant}:* as consumer group "
    "dcl_engine:{tenant} and write each batch once to the DCL store (DCL_SINK_URL).",
}
_EPILOG = (
    "Configured by environment variables only (REDIS_URL, TENANT_ID, ...: the README's "
    "configuration table); `aam-dcl config check` validates them without starting anything."
)


def run_daemon(
    name: str, service: Service, *, role: str, connector_names: ConnectorNames | None = None
) -> None:
    """Entry point of a daemon: parses the command line, then never returns; exits 0 after
    a clean stop, 2 on a usage, configuration or permission problem.

    ``role`` (``bridge``/``worker``, as in ``aam-dcl acl --role``) picks what the permission
    check probes; ``connector_names`` gives the connectors whose keys it probes.
    """

    @click.command(
        name=name,
        help=_HELP[role],
        epilog=_EPILOG,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    @click.version_option(__version__, prog_name=name, message="%(prog)s %(version)s")
    def command() -> None:
        _start(name, service, role, connector_names)

    command.main(prog_name=name)


def _start(name: str, service: Service, role: str, connector_names: ConnectorNames | None) -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    warn_if_tls_unverified(settings)

    async def preflight(settings: Settings) -> None:
        names = connector_names(settings) if connector_names else ()
        tenants = settings.worker_tenants if role == "worker" else [settings.tenant_id]
        for tenant in tenants:  # a worker with TENANT_IDS serves each of them
            await check_permissions(settings.for_tenant(tenant), role, names)

    try:
        uvloop.run(_main(name, settings, service, preflight))
    except ConfigError as exc:  # found after start-up, e.g. in the connectors file
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except PermissionProblem as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(0)


def warn_if_tls_unverified(settings: Settings) -> None:
    """Once at start-up: a WARNING naming the REDIS_URL options that turn rediss://
    verification off (anyone on the path can then read and change the data)."""
    off = unverified_tls(settings)
    if off:
        log.warning(
            "redis_tls_unverified", off=off, redis_url=redacted_url(settings.effective_redis_url),
            risk="the Redis server is not authenticated: a machine in the middle can read "
            "and change every record and credential",
            fix="remove these options from REDIS_URL and give the server's CA in REDIS_TLS_CA",
        )  # fmt: skip


async def check_permissions(settings: Settings, role: str, connectors: Sequence[str]) -> None:
    """Raise PermissionProblem when the Redis user may not send what ``role``'s daemon sends
    on the tenant's keys, or Redis refuses the login; ConfigError when rediss:// fails on TLS
    (the certificates or the host name). Redis unreachable: logged, skipped (the daemon's
    loops wait for Redis as always; a denial then shows as NOPERM retries)."""
    client = await connect(settings)
    user = redis_user(client)
    try:
        denials = await denied_commands(client, role, settings.tenant_id, connectors)
    except AuthenticationError as exc:
        url = redacted_url(settings.effective_redis_url)
        raise PermissionProblem(
            redact_urls_in(f"Redis at {url} refused the login of user {user!r}: {exc}")
        ) from None
    except (RedisError, OSError) as exc:
        tls = await tls_problem(settings, exc)
        if tls:  # a certificate or host name never fixes itself: stop and say what to change
            url = redacted_url(settings.effective_redis_url)
            raise ConfigError(f"Redis at {url}: TLS: {tls}") from None
        log.warning("permission_check_skipped", reason=redact_urls_in(str(exc)), user=user)
        return
    finally:
        await client.aclose()
    if denials:
        raise PermissionProblem(problem_line(user, role, settings.tenant_id, denials))


async def _main(
    name: str,
    settings: Settings,
    service: Service,
    preflight: Callable[[Settings], Awaitable[None]] | None = None,
) -> None:
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
    if preflight is not None:
        await preflight(settings)
    await service(settings, stopping)
    log.info("stopped", daemon=name)
