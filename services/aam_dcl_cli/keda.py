"""The KEDA manifests that scale dcl-worker on its tenant's connector streams: a
TriggerAuthentication (the Redis password, by Secret reference) and a ScaledObject with one
trigger per stream.

KEDA cannot list streams by pattern, so the triggers are rendered from the streams that exist
(``aam-dcl k8s keda``) and re-rendered when a connector is added. Parameter names are those of
KEDA 2.12+'s ``redis-streams`` and ``redis-cluster-streams`` scalers: with ``lagCount`` the
scaler reads the group's lag (XINFO GROUPS, Redis 7+; the only mode that may scale to zero,
and ``activationLagCount`` is required), without it the group's pending entries
(``pendingEntriesCount``, XPENDING).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

from aam_dcl import keys

# What deploy/k8s/base names: the worker's Deployment and container, the Secret and its key.
WORKER = "dcl-worker"
AUTH_NAME = "aam-dcl-redis"
SECRET_NAME = "aam-dcl-secrets"
PASSWORD_KEY = "REDIS_PASSWORD"
LABELS = {"app.kubernetes.io/part-of": "aam-dcl"}

_ADDRESS_RE = re.compile(r"^([^/:\[\]\s,]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$")
_ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")

Manifest = dict[str, Any]


class KedaRenderError(ValueError):
    """Options that make no ScaledObject KEDA would accept; the message says what to change."""


@dataclass(frozen=True, slots=True)
class KedaOptions:
    """How the ScaledObject reaches Redis and when it scales (defaults: deploy/k8s/base)."""

    addresses: tuple[str, ...] = ()  # host:port KEDA connects to (a cluster: any of its nodes)
    address_from_env: str | None = None  # or: a variable of the worker's container holding it
    cluster: bool = False  # redis-cluster-streams instead of redis-streams
    tls: bool = False
    database_index: int = 0  # standalone only: a cluster has database 0 only
    lag_count: int = 50
    activation_lag_count: int = 10
    pending_entries_count: int | None = None  # set: scale on pending entries, not the lag
    min_replicas: int = 1
    max_replicas: int = 6
    name: str = WORKER  # the ScaledObject
    deployment: str = WORKER  # its target, whose container of the same name has the env
    namespace: str | None = None


def address_of_url(url: str) -> str | None:
    """``host:port`` of a redis:// or rediss:// URL (port 6379 if none), or None for unix://.
    The URL's user and password are never part of it."""
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss"} or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or 6379}"


def database_of_url(url: str) -> int:
    """The database a redis:// URL selects (``/N`` or ``?db=N``; 0 by default)."""
    parts = urlsplit(url)
    dbs = [v for n, v in parse_qsl(parts.query) if n == "db"] or [unquote(parts.path).strip("/")]
    return int(dbs[-1] or 0)


def render(tenant: str, connectors: Sequence[str], options: KedaOptions) -> list[Manifest]:
    """The TriggerAuthentication and the ScaledObject for ``connectors`` of ``tenant``."""
    keys.validate_name(tenant, "tenant")
    for connector in connectors:
        keys.validate_name(connector, "connector")
    _check(connectors, options)
    mode = "pending" if options.pending_entries_count is not None else "lag"
    triggers = [
        {
            "type": "redis-cluster-streams" if options.cluster else "redis-streams",
            "name": f"{mode}-{connector}",
            "metadata": _trigger_metadata(tenant, connector, options),
            "authenticationRef": {"name": AUTH_NAME},
        }
        for connector in sorted(set(connectors))
    ]
    auth = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": _metadata(AUTH_NAME, options),
        "spec": {
            "secretTargetRef": [{"parameter": "password", "name": SECRET_NAME, "key": PASSWORD_KEY}]
        },
    }
    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(options.name, options),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": options.deployment,
                "envSourceContainerName": options.deployment,
            },
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            "minReplicaCount": options.min_replicas,
            "maxReplicaCount": options.max_replicas,
            "advanced": _ONE_POD_A_MINUTE_DOWN,
            "triggers": triggers,
        },
    }
    return [auth, scaled]


def to_yaml(manifests: Sequence[Manifest], header: str = "") -> str:
    """The manifests as one multi-document YAML text, ``header`` as its leading comment."""
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comment + yaml.safe_dump_all(manifests, sort_keys=False, default_flow_style=False)


# Scaling down stops workers; each drains its in-flight batches first: one pod a minute.
_ONE_POD_A_MINUTE_DOWN = {
    "horizontalPodAutoscalerConfig": {
        "behavior": {
            "scaleDown": {
                "stabilizationWindowSeconds": 300,
                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
            }
        }
    }
}


def _check(connectors: Sequence[str], options: KedaOptions) -> None:
    if not connectors:
        raise KedaRenderError("no connector streams: a ScaledObject needs at least one trigger")
    if bool(options.addresses) == bool(options.address_from_env):
        raise KedaRenderError("give the Redis address (host:port) or the variable holding it")
    for address in options.addresses:
        if not _ADDRESS_RE.match(address):
            raise KedaRenderError(f"address {address!r}: use host:port (IPv6 as [addr]:port)")
    if len(options.addresses) > 1 and not options.cluster:
        raise KedaRenderError("several addresses are the nodes of a Redis Cluster: add --cluster")
    if options.address_from_env and not _ENV_NAME_RE.match(options.address_from_env):
        raise KedaRenderError(f"variable {options.address_from_env!r}: use A-Z, 0-9 and _")
    if options.cluster and options.database_index:
        raise KedaRenderError("a Redis Cluster has database 0 only")
    if not 0 <= options.min_replicas <= options.max_replicas or options.max_replicas < 1:
        raise KedaRenderError("replicas: use 0 <= min <= max and max >= 1")


def _trigger_metadata(tenant: str, connector: str, options: KedaOptions) -> dict[str, str]:
    # KEDA parses every metadata value from a string.
    plural = "es" if options.cluster else ""
    meta: dict[str, str] = {}
    if options.address_from_env:
        meta[f"address{plural}FromEnv"] = options.address_from_env
    else:
        meta[f"address{plural}"] = ",".join(options.addresses)
    meta["stream"] = keys.stream(tenant, connector)
    meta["consumerGroup"] = keys.group(tenant)
    if options.pending_entries_count is None:
        meta["lagCount"] = str(options.lag_count)
        meta["activationLagCount"] = str(options.activation_lag_count)
    else:
        meta["pendingEntriesCount"] = str(options.pending_entries_count)
    if not options.cluster:
        meta["databaseIndex"] = str(options.database_index)
    if options.tls:
        meta["enableTLS"] = "true"
    return meta


def _metadata(name: str, options: KedaOptions) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if options.namespace:
        meta["namespace"] = options.namespace
    meta["labels"] = dict(LABELS)
    return meta
