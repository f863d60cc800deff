"""``aam-dcl dlq``, ``pending`` and ``trim``: dead letters and unacknowledged work (the Redis
logic is in ``aam_dcl_cli.ops`` and ``aam_dcl_cli.trim``; these parse and format)."""

from __future__ import annotations

import click
import orjson

from aam_dcl_cli.app import (
    _echo_json,
    _ms,
    _ops,
    _short,
    _table,
    _tenant_settings,
    _when,
    connector_option,
    json_option,
    main,
    tenant_option,
)


@main.group()
@tenant_option
def dlq() -> None:
    """Dead letters: list, show, replay, purge (streams aam:dlq:{aam:dcl:{tenant}:{connector}})."""


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
    """Who holds what: per consumer alive or dead (its heartbeat), its pending count and idle
    time; the oldest pending entries."""
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
                    ("  CONSUMER", "STATE", "PENDING", "IDLE", "INACTIVE"),
                    [
                        (
                            "  " + c.name,
                            "alive" if c.alive else "dead",
                            str(c.pending),
                            _ms(c.idle_ms),
                            _ms(c.inactive_ms),
                        )
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
