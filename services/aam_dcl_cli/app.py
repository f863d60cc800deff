"""The ``aam-dcl`` command group and what its commands share: settings with ``--tenant``,
running a Redis operation with its errors as one line, JSON and table output.

The commands live in ``cli`` (status, watch, config, demo, pause, acl), ``cli_dlq`` (dead
letters, pending, trim) and ``cli_data`` (what landed, sync requests); ``cli`` registers them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from aam_dcl import __version__
from aam_dcl.config import Settings, load_settings
from aam_dcl.errors import ConfigError

if TYPE_CHECKING:
    from aam_dcl.redis_conn import RedisClient

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


def _remember_tenant(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    """``--tenant`` may come before or after any command name: the last one given wins."""
    if value:
        ctx.find_root().ensure_object(dict)["tenant"] = value


tenant_option = click.option(
    "--tenant",
    expose_value=False,
    callback=_remember_tenant,
    help="Tenant id (default: TENANT_ID); before or after the command name.",
)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.group()
@click.version_option(__version__, prog_name="aam-dcl", message="%(prog)s %(version)s")
@tenant_option
@click.pass_context
def main(ctx: click.Context) -> None:
    """Operate an aam-dcl pipeline: status, watch, demo, config check, dlq, pending, trim,
    pause, sync, acl."""
    ctx.ensure_object(dict)


def _tenant_settings(ctx: click.Context, **overrides: Any) -> Settings:
    tenant = ctx.find_root().ensure_object(dict).get("tenant")
    if tenant:
        overrides["tenant_id"] = tenant
    return _settings(**overrides)


# --- operator commands (the Redis logic is in aam_dcl_cli.ops; these only parse and format) -------

connector_option = click.option(
    "--connector", "-c", required=True, help="Connector name (its stream aam:dcl:{tenant}:{C})."
)


def _ops(ctx: click.Context, fn: Callable[[RedisClient, str], Awaitable[T]]) -> T:
    """Run ``fn(client, tenant)`` against REDIS_URL; map Redis and ops errors to one
    ``Error: ...`` line and exit code 1 (never a traceback)."""
    from aam_dcl.redis_conn import connect

    settings = _tenant_settings(ctx)

    async def call() -> T:
        client = await connect(settings)
        try:
            return await fn(client, settings.tenant_id)
        finally:
            await client.aclose()

    with _redis_errors(settings):
        return _run(call)


@contextlib.contextmanager
def _redis_errors(settings: Settings) -> Iterator[None]:
    """A Redis or operation error as one ``Error: ...`` line (masked URL), exit code 1."""
    from redis.exceptions import RedisError

    from aam_dcl.logs import redact_urls_in, redacted_url
    from aam_dcl_cli.ops import OperationRefused

    try:
        yield
    except OperationRefused as exc:
        raise click.ClickException(str(exc)) from None
    except ConfigError as exc:  # REDIS_URL unfit for what the server is (a cluster's /db)
        raise click.ClickException(f"configuration error: {exc}") from None
    except (RedisError, OSError) as exc:
        url = redacted_url(settings.effective_redis_url)
        text = " ".join(f"Redis at {url}: {exc}".split())  # one line, whatever Redis said
        raise click.ClickException(redact_urls_in(text)) from None


def _echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )


def _when(ms: int | None) -> str:
    import datetime as dt

    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms} ms" if ms < 10_000 else f"{ms / 1000:.0f} s"


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
