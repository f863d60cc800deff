"""``aam-dcl sync`` and ``preview``: what the operator asks of the bridge's sync runs (the
Redis side is in ``aam_dcl_cli.syncs``), and a dry run of a connector (``aam_dcl_cli.preview``)."""

from __future__ import annotations

import click
import orjson

from aam_dcl_cli.app import (
    _echo_json,
    _ms,
    _ops,
    _run,
    _table,
    _tenant_settings,
    _when,
    json_option,
    main,
    tenant_option,
)


@main.command()
@tenant_option
@click.argument("connector")
@click.option("--full", is_flag=True, help="The next run reads every table from the start.")
@click.option("--now", is_flag=True, help="Run now rather than at the schedule's next time.")
@click.pass_context
def sync(ctx: click.Context, connector: str, full: bool, now: bool) -> None:
    """Ask the bridge for a full re-sync of CONNECTOR and/or a run now; the running bridge
    takes the request (within a second when it is waiting for its schedule), no restart."""
    from aam_dcl_cli.syncs import request_sync

    if not (full or now):
        raise click.UsageError("say what to do: --full, --now, or both")
    _ops(ctx, lambda r, t: request_sync(r, t, connector, full=full, now=now))
    tenant = _tenant_settings(ctx).tenant_id
    what = " and ".join(w for w, on in (("a full re-sync", full), ("a run now", now)) if on)
    click.echo(
        f"requested {what} of {tenant}/{connector}; aam-bridge takes it "
        + ("at once if it is waiting for its schedule" if now else "at the start of its next run")
    )


@main.command()
@tenant_option
@click.argument("connector")
@click.option("--rows", default=3, show_default=True, type=click.IntRange(0, 100))
@json_option
@click.pass_context
def preview(ctx: click.Context, connector: str, rows: int, as_json: bool) -> None:
    """Read the first page of each table of CONNECTOR (from AAM_CONNECTORS_FILE) without
    publishing anything: the schema the bridge would send and a few rows. A dry run that
    checks credentials, objects and field lists."""
    from aam_dcl.errors import AamDclError
    from aam_dcl_cli.preview import connector_of
    from aam_dcl_cli.preview import preview as read_first_pages

    settings = _tenant_settings(ctx)
    try:
        source = connector_of(settings, connector)
        tables = _run(lambda: read_first_pages(source, settings, rows))
    except AamDclError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _echo_json({"connector": connector, "tables": [t.to_json() for t in tables]})
    for table in [] if as_json else tables:
        key = ", ".join(table.primary_key) or "none"
        click.echo(f"table {table.name} (primary key: {key})")
        if table.error:
            click.echo(f"  error: {table.error}")
            continue
        click.echo(
            f"  first page: {table.rows_on_first_page} rows"
            + (f", {table.deleted_on_first_page} deleted" if table.deleted_on_first_page else "")
        )
        for name, type_ in table.columns:
            click.echo(f"  {name}: {type_}")
        for row in table.rows:
            click.echo("  " + orjson.dumps(row, default=str).decode())
    if any(t.error for t in tables):
        ctx.exit(1)


@main.command()
@tenant_option
@json_option
@click.pass_context
def tables(ctx: click.Context, as_json: bool) -> None:
    """What landed: per store table its live and deleted rows, columns, key, last batch and
    write; per connector its last sync run (from the bridge's state in Redis)."""
    from aam_dcl.errors import AamDclError
    from aam_dcl_cli.store import read_store, table_json
    from aam_dcl_cli.syncs import sync_runs

    settings = _tenant_settings(ctx)
    try:
        reports = _run(lambda: read_store(settings, lambda sink: sink.tables_report()))
    except AamDclError as exc:
        raise click.ClickException(str(exc)) from None
    runs = _ops(ctx, sync_runs)
    if as_json:
        _echo_json(
            {"tables": [table_json(r) for r in reports], "connectors": [r.to_json() for r in runs]}
        )
        return
    header = ("TABLE", "LIVE", "DELETED", "COLUMNS", "KEY", "LAST BATCH", "LAST WRITE (UTC)")
    rows = [
        (
            r.table, str(r.live_rows), str(r.deleted_rows), str(len(r.columns)),
            ", ".join(r.primary_key) or "-", r.last_batch_id or "-",
            r.last_write_at.strftime("%Y-%m-%d %H:%M:%S") if r.last_write_at else "-",
        )
        for r in reports
    ]  # fmt: skip
    click.echo(_table(header, rows) if rows else "no tables yet")
    if runs:
        click.echo("")
        click.echo(
            _table(
                ("CONNECTOR", "LAST RUN", "STARTED (UTC)", "DURATION", "RECORDS", "NOW"),
                [
                    (
                        r.connector, r.status or "-", _when(r.started_ms), _ms(r.duration_ms),
                        "-" if r.records is None else str(r.records),
                        "running" if r.running else ", ".join(r.requested) or "-",
                    )
                    for r in runs
                ],
            )
        )  # fmt: skip


@main.command()
@tenant_option
@click.argument("table")
@json_option
@click.pass_context
def schema(ctx: click.Context, table: str, as_json: bool) -> None:
    """One store table (``{connector}__{table}``, as `aam-dcl tables` names it): its columns
    with their types, its key, and every schema change with the batch that made it."""
    from aam_dcl.errors import AamDclError
    from aam_dcl_cli.store import read_store, schema_json

    settings = _tenant_settings(ctx)
    try:
        report = _run(lambda: read_store(settings, lambda sink: sink.schema_report(table)))
    except AamDclError as exc:
        raise click.ClickException(str(exc)) from None
    if report is None:
        raise click.ClickException(f"no table {table!r} in the store (aam-dcl tables lists them)")
    if as_json:
        _echo_json(schema_json(report))
        return
    info = report.table
    click.echo(f"table {info.table} (connector {info.connector}, source table {info.source_table})")
    click.echo(f"primary key: {', '.join(info.primary_key) or '-'}")
    click.echo(f"rows: {info.live_rows} live, {info.deleted_rows} deleted")
    click.echo(
        _table(
            ("COLUMN", "TYPE", "STORE TYPE"),
            [(c.name, c.type, c.store_type) for c in report.columns],
        )
    )
    click.echo("")
    click.echo(
        _table(
            ("CHANGED (UTC)", "KIND", "COLUMN", "FROM", "TO", "BATCH"),
            [
                (
                    h.changed_at.strftime("%Y-%m-%d %H:%M:%S"), h.kind, h.column or "-",
                    h.old_type or "-", h.new_type or h.detail or "-", h.batch_id or "-",
                )
                for h in report.history
            ],
        )
    )  # fmt: skip
