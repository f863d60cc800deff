"""``aam-dcl k8s``: Kubernetes manifests made from what the tenant's Redis holds (the
rendering is in ``aam_dcl_cli.keda``)."""

from __future__ import annotations

from urllib.parse import urlsplit

import click

from aam_dcl.errors import ConfigError
from aam_dcl_cli.app import _ops, _tenant_settings, main, tenant_option


@main.group()
@tenant_option
def k8s() -> None:
    """Kubernetes manifests: keda."""


@k8s.command("keda")
@tenant_option
@click.option("--namespace", "-n", help="metadata.namespace of both manifests (default: none).")
@click.option("--name", default="dcl-worker", show_default=True, help="The ScaledObject's name.")
@click.option(
    "--deployment", default="dcl-worker", show_default=True,
    help="The Deployment it scales (and its container of that name, for --address-from-env).",
)  # fmt: skip
@click.option(
    "--address", "addresses", multiple=True, metavar="HOST:PORT",
    help="Where KEDA reaches Redis (default: REDIS_URL's host:port); repeat for cluster nodes.",
)  # fmt: skip
@click.option(
    "--address-from-env", metavar="VAR",
    help="Instead: the worker's variable holding host:port (the base uses REDIS_ADDRESS).",
)  # fmt: skip
@click.option("--cluster", is_flag=True, help="Redis Cluster: the redis-cluster-streams scaler.")
@click.option(
    "--tls/--no-tls", default=None,
    help="KEDA connects with TLS (enableTLS); default: when REDIS_URL is rediss://.",
)  # fmt: skip
@click.option(
    "--lag-count", default=50, show_default=True, type=click.IntRange(1),
    help="Target group lag per replica (lagCount).",
)  # fmt: skip
@click.option(
    "--activation-lag-count", default=10, show_default=True, type=click.IntRange(0),
    help="Lag above which the worker scales up from its minimum (activationLagCount).",
)  # fmt: skip
@click.option(
    "--pending-entries-count", type=click.IntRange(1),
    help="Scale on pending entries per replica (pendingEntriesCount) instead of the lag.",
)  # fmt: skip
@click.option("--min-replicas", default=1, show_default=True, type=click.IntRange(0))
@click.option("--max-replicas", default=6, show_default=True, type=click.IntRange(1))
@click.pass_context
def keda(
    ctx: click.Context,
    namespace: str | None,
    name: str,
    deployment: str,
    addresses: tuple[str, ...],
    address_from_env: str | None,
    cluster: bool,
    tls: bool | None,
    lag_count: int,
    activation_lag_count: int,
    pending_entries_count: int | None,
    min_replicas: int,
    max_replicas: int,
) -> None:
    """Print the KEDA TriggerAuthentication and ScaledObject that scale dcl-worker, with one
    trigger per connector stream the tenant has now (KEDA cannot list streams by pattern).

    Re-render and apply after adding a connector. The password is never printed: the
    TriggerAuthentication reads REDIS_PASSWORD from the Secret aam-dcl-secrets. TLS follows
    REDIS_URL's scheme (rediss:// sets enableTLS) unless --tls/--no-tls says otherwise.
    """
    from aam_dcl.streams import scan_streams
    from aam_dcl_cli import keda as k

    if pending_entries_count is not None:
        given = [
            f"--{p.replace('_', '-')}"
            for p in ("lag_count", "activation_lag_count")
            if ctx.get_parameter_source(p) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            raise click.UsageError(
                f"--pending-entries-count scales on pending entries: drop {' and '.join(given)}"
            )
    if addresses and address_from_env:
        raise click.UsageError("give --address or --address-from-env, not both")
    settings = _tenant_settings(ctx)
    url = settings.effective_redis_url
    if not addresses and not address_from_env:
        from_url = k.address_of_url(url)
        if from_url is None:
            raise click.UsageError("REDIS_URL is a unix socket: KEDA needs --address HOST:PORT")
        addresses = (from_url,)
    options = k.KedaOptions(
        addresses=addresses,
        address_from_env=address_from_env,
        cluster=cluster,
        tls=url.startswith("rediss://") if tls is None else tls,
        database_index=0 if cluster else k.database_of_url(url),
        lag_count=lag_count,
        activation_lag_count=activation_lag_count,
        pending_entries_count=pending_entries_count,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        name=name,
        deployment=deployment,
        namespace=namespace,
    )
    scan = _ops(ctx, scan_streams)
    tenant = settings.tenant_id
    if not scan.connectors:
        raise click.ClickException(
            f"tenant {tenant} has no connector streams (aam:dcl:{tenant}:*) yet: start the "
            "bridge with its connectors first, then render the ScaledObject"
        )
    try:
        manifests = k.render(tenant, scan.connectors, options)
    except (k.KedaRenderError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    header = (
        f"Rendered by `aam-dcl k8s keda` for tenant {tenant}: one trigger per connector stream\n"
        f"({', '.join(scan.connectors)}). Re-render after adding a connector; apply with kubectl."
    )
    click.echo(k.to_yaml(manifests, header), nl=False)
    user = urlsplit(url).username
    if user and user != "default":
        click.echo(
            f"note: REDIS_URL logs in as {user!r}; KEDA logs in as 'default' unless the "
            "TriggerAuthentication also has a username parameter (a key of aam-dcl-secrets)",
            err=True,
        )
