"""``aam-dcl sync``: what the operator asks of the bridge's sync runs (the Redis side is in
``aam_dcl_cli.syncs``)."""

from __future__ import annotations

import click

from aam_dcl_cli.app import _ops, _tenant_settings, main, tenant_option


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
