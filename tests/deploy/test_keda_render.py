"""`aam-dcl k8s keda` renders the KEDA manifests from the streams that exist: the output passes
the strict validation the base manifests pass, uses KEDA's own parameter names, and is what
deploy/k8s/base/keda.yaml holds for the demo connectors."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis.asyncio as aioredis
import yaml

from aam_dcl_cli import keda
from tests.deploy.contract import CONNECTORS
from tests.deploy.crd_schemas import SCHEMAS
from tests.deploy.test_k8s import K8S, K8S_VERSION
from tests.deploy.toolbox import output, run, venv_tool
from tests.support import invoke_cli

Doc = dict[str, Any]

# The parameters KEDA 2.12's scalers read, from their reference pages
# (keda.sh/docs/2.12/scalers/redis-streams/, .../redis-cluster-streams/): trigger metadata, and
# what a TriggerAuthentication may supply.
_COMMON = {
    "usernameFromEnv", "passwordFromEnv", "stream", "consumerGroup", "pendingEntriesCount",
    "streamLength", "lagCount", "activationLagCount", "enableTLS", "unsafeSsl", "databaseIndex",
}  # fmt: skip
KEDA_METADATA = {
    "redis-streams": _COMMON
    | {"address", "host", "port", "addressFromEnv", "hostFromEnv", "portFromEnv"},
    "redis-cluster-streams": _COMMON
    | {"addresses", "hosts", "ports", "addressesFromEnv", "hostsFromEnv", "portsFromEnv"},
}
KEDA_AUTH_PARAMETERS = {"username", "password", "tls", "ca", "cert", "key", "keyPassword"}

TENANT = "acme"
THREE = ("salesforce", "hubspot", "zendesk")


async def three_streams(redis: aioredis.Redis) -> None:
    """Tenant acme has three connector streams; around them, what must not become a trigger:
    another tenant's stream, a key under the pattern that is no stream, a bad connector name."""
    for connector in THREE:
        await redis.xadd(f"aam:dcl:{TENANT}:{connector}", {"payload": b"{}"})
    await redis.xadd("aam:dcl:other:salesforce", {"payload": b"{}"})
    await redis.set(f"aam:dcl:{TENANT}:not-a-stream", "x")
    await redis.xadd(f"aam:dcl:{TENANT}:bad:name", {"payload": b"{}"})


async def render_cli(args: Sequence[str], redis_url: str) -> tuple[int, str, str]:
    result = await invoke_cli(["k8s", "keda", "--tenant", TENANT, *args], {"REDIS_URL": redis_url})
    return result.exit_code, result.stdout, result.stderr


def strictly_valid(text: str, tmp_path: Path) -> list[Doc]:
    """The checks tests/deploy/test_k8s.py applies to the base manifests: kubernetes-validate
    --strict (which knows no CRD, so it only warns about each), then each custom resource
    against its CRD schema. Returns the documents."""
    path = tmp_path / "keda.yaml"
    path.write_text(text)
    result = run([venv_tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, path])
    assert result.returncode == 0, output(result)
    docs = [doc for doc in yaml.safe_load_all(text) if doc]
    warned = [line for line in result.stdout.splitlines() if line.startswith("WARN")]
    assert len(warned) == len(docs), output(result)
    for doc in docs:
        jsonschema.validate(doc, SCHEMAS[(doc["apiVersion"], doc["kind"])])
    return docs


def one(docs: list[Doc], kind: str) -> Doc:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


async def test_three_streams_render_three_triggers_that_pass_strict_validation(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """One redis-streams trigger per connector stream of the tenant (no other tenant's, no
    non-stream key, no bad name), on its stream and group, at REDIS_URL's host:port and
    database, with the password by TriggerAuthentication reference; namespace, name and
    target as given; valid for kubernetes-validate --strict and the CRD schemas."""
    await three_streams(redis)
    code, out, err = await render_cli(
        ["-n", "aam-dcl", "--name", "workers", "--deployment", "dcl-worker-b"], redis_url
    )
    assert code == 0, err
    docs = strictly_valid(out, tmp_path)
    scaled, auth = one(docs, "ScaledObject"), one(docs, "TriggerAuthentication")
    assert {d["metadata"]["namespace"] for d in docs} == {"aam-dcl"}
    assert scaled["metadata"]["name"] == "workers"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "dcl-worker-b"
    assert scaled["spec"]["scaleTargetRef"]["envSourceContainerName"] == "dcl-worker-b"
    address = redis_url.split("://")[1].split("/")[0]
    triggers = scaled["spec"]["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == [
        f"aam:dcl:{TENANT}:{c}" for c in sorted(THREE)
    ]
    for trigger in triggers:
        assert trigger["type"] == "redis-streams"
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
        assert {k: v for k, v in trigger["metadata"].items() if k != "stream"} == {
            "address": address, "consumerGroup": f"dcl_engine:{TENANT}",
            "lagCount": "50", "activationLagCount": "10", "databaseIndex": "0",
        }  # fmt: skip
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "aam-dcl-secrets", "key": "REDIS_PASSWORD"}
    ]
    assert out.startswith("# Rendered by `aam-dcl k8s keda` for tenant acme")


async def test_a_new_connector_stream_is_a_new_trigger(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """Re-rendering after a connector's first publish adds its trigger: the triggers follow
    the data."""
    await three_streams(redis)
    _, before, _ = await render_cli([], redis_url)
    await redis.xadd(f"aam:dcl:{TENANT}:dynamics", {"payload": b"{}"})
    _, after, _ = await render_cli([], redis_url)

    def streams(text: str) -> list[str]:
        triggers = one(list(yaml.safe_load_all(text)), "ScaledObject")["spec"]["triggers"]
        return [t["metadata"]["stream"] for t in triggers]

    assert f"aam:dcl:{TENANT}:dynamics" not in streams(before)
    assert streams(after) == sorted([*streams(before), f"aam:dcl:{TENANT}:dynamics"])


async def test_cluster_renders_the_redis_cluster_streams_scaler(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """--cluster: redis-cluster-streams triggers with `addresses` (REDIS_URL's node, or every
    --address given), no databaseIndex (a cluster has database 0 only); strictly valid."""
    await three_streams(redis)
    code, out, err = await render_cli(["--cluster"], redis_url)
    assert code == 0, err
    triggers = one(strictly_valid(out, tmp_path), "ScaledObject")["spec"]["triggers"]
    address = redis_url.split("://")[1].split("/")[0]
    assert {t["type"] for t in triggers} == {"redis-cluster-streams"}
    assert {t["metadata"]["addresses"] for t in triggers} == {address}
    assert not [t for t in triggers if "databaseIndex" in t["metadata"] or "address" in t]
    nodes = ["--cluster", "--address", "node-0:6379", "--address", "node-1:6379"]
    code, out, err = await render_cli(nodes, redis_url)
    assert code == 0, err
    triggers = one(strictly_valid(out, tmp_path), "ScaledObject")["spec"]["triggers"]
    assert {t["metadata"]["addresses"] for t in triggers} == {"node-0:6379,node-1:6379"}
    code, _, err = await render_cli(["--address", "a:1", "--address", "b:2"], redis_url)
    assert code == 1
    assert "add --cluster" in err


@pytest.mark.parametrize(
    "options",
    [
        keda.KedaOptions(addresses=("redis:6379",)),
        keda.KedaOptions(address_from_env="REDIS_ADDRESS", tls=True, database_index=3),
        keda.KedaOptions(addresses=("redis:6379",), pending_entries_count=20),
        keda.KedaOptions(addresses=("n0:6379", "n1:6379"), cluster=True, tls=True),
        keda.KedaOptions(address_from_env="REDIS_ADDRESSES", cluster=True, pending_entries_count=5),
    ],
    ids=["address", "from-env-tls-db", "pending", "cluster-tls", "cluster-env-pending"],
)
def test_every_parameter_rendered_is_one_keda_reads(
    options: keda.KedaOptions, tmp_path: Path
) -> None:
    """Each trigger's metadata keys are parameters of its KEDA scaler, the
    TriggerAuthentication's parameters are ones KEDA accepts, and the output is strictly
    valid: a misspelt name (KEDA ignores it silently) cannot be rendered."""
    docs = keda.render(TENANT, THREE, options)
    for trigger in one(docs, "ScaledObject")["spec"]["triggers"]:
        assert set(trigger["metadata"]) <= KEDA_METADATA[trigger["type"]], trigger
        assert all(isinstance(v, str) for v in trigger["metadata"].values())
    refs = one(docs, "TriggerAuthentication")["spec"]["secretTargetRef"]
    assert {ref["parameter"] for ref in refs} <= KEDA_AUTH_PARAMETERS
    strictly_valid(keda.to_yaml(docs), tmp_path)


def test_the_crd_schema_admits_only_kedas_parameter_names() -> None:
    """The schema the manifests are checked against names no trigger parameter or
    authentication parameter KEDA does not read."""
    triggers = SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")]["properties"]["spec"]["properties"][
        "triggers"
    ]["items"]
    for case in triggers["allOf"]:
        kind = case["if"]["properties"]["type"]["const"]
        metadata = case["then"]["properties"]["metadata"]
        assert set(metadata["properties"]) <= KEDA_METADATA[kind], kind
    auth = SCHEMAS[("keda.sh/v1alpha1", "TriggerAuthentication")]["properties"]["spec"]
    parameter = auth["properties"]["secretTargetRef"]["items"]["properties"]["parameter"]
    assert set(parameter["enum"]) <= KEDA_AUTH_PARAMETERS


def test_the_base_manifest_is_what_the_command_renders_for_the_demo_connectors() -> None:
    """deploy/k8s/base/keda.yaml equals the rendering for tenant default, the demo connectors
    and the worker's REDIS_ADDRESS: the base and the command cannot drift apart."""
    base = [d for d in yaml.safe_load_all((K8S / "base" / "keda.yaml").read_text()) if d]
    rendered = keda.render(
        "default", CONNECTORS, keda.KedaOptions(address_from_env="REDIS_ADDRESS")
    )
    for kind in ("TriggerAuthentication", "ScaledObject"):
        want, got = one(base, kind), one(rendered, kind)
        assert got["metadata"]["name"] == want["metadata"]["name"]
        for spec in (want["spec"], got["spec"]):
            spec.get("triggers", []).sort(key=lambda t: t["name"])
        assert got["spec"] == want["spec"], kind


def test_a_rendered_file_in_an_overlay_replaces_the_base_triggers(tmp_path: Path) -> None:
    """The documented kustomize step: the rendered file listed as a patch of the prod overlay
    replaces the base's triggers (four connectors → four triggers, all with TLS), and the
    overlay still passes the CRD schemas."""
    overlay = tmp_path / "prod"
    shutil.copytree(K8S / "overlays" / "prod", overlay)
    kustomization = overlay / "kustomization.yaml"
    base = os.path.relpath(K8S / "base", overlay)
    text = kustomization.read_text().replace("../../base", base)
    kustomization.write_text(text.replace("patches:\n", "patches:\n  - path: keda.yaml\n", 1))
    four = [*CONNECTORS, "zendesk"]
    options = keda.KedaOptions(address_from_env="REDIS_ADDRESS", tls=True)
    (overlay / "keda.yaml").write_text(keda.to_yaml(keda.render("default", four, options)))
    result = run(
        [venv_tool("kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone", overlay]
    )
    assert result.returncode == 0, output(result)
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    scaled = one(docs, "ScaledObject")
    jsonschema.validate(scaled, SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")])
    triggers = scaled["spec"]["triggers"]
    assert sorted(t["metadata"]["stream"] for t in triggers) == sorted(
        f"aam:dcl:default:{c}" for c in four
    )
    assert {t["metadata"].get("enableTLS") for t in triggers} == {"true"}
    assert scaled["spec"]["minReplicaCount"] == 2  # the overlay's own patches still apply


async def test_no_streams_yet_is_one_error_line_and_exit_1(redis_url: str) -> None:
    """A tenant without streams gets no empty ScaledObject (KEDA refuses one without
    triggers): one line saying what to do first, exit 1."""
    code, out, err = await render_cli([], redis_url)
    assert code == 1
    assert out == ""
    assert err.strip().splitlines() == [
        f"Error: tenant {TENANT} has no connector streams (aam:dcl:{TENANT}:*) yet: start the "
        "bridge with its connectors first, then render the ScaledObject"
    ]


async def test_the_password_is_never_printed(redis: aioredis.Redis, redis_url: str) -> None:
    """REDIS_URL's password stays out of the output (the TriggerAuthentication names the
    Secret's key); a URL user other than default is pointed out on stderr."""
    await three_streams(redis)
    await redis.execute_command("ACL", "SETUSER", "op", "on", ">CANARY-pw", "~*", "+@all")
    try:
        url = redis_url.replace("redis://", "redis://op:CANARY-pw@")
        code, out, err = await render_cli([], url)
    finally:
        await redis.execute_command("ACL", "DELUSER", "op")
    assert code == 0, err
    assert "CANARY" not in out + err
    assert "op@" not in out
    assert "REDIS_URL logs in as 'op'" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pending-entries-count", "5", "--lag-count", "9"], "drop --lag-count"),
        (["--address", "a:1", "--address-from-env", "REDIS_ADDRESS"], "not both"),
        (["--min-replicas", "3", "--max-replicas", "2"], "min <= max"),
        (["--address", "no-port"], "use host:port"),
    ],
)
async def test_contradicting_options_are_refused(
    redis: aioredis.Redis, redis_url: str, args: list[str], message: str
) -> None:
    """Options KEDA would reject or silently ignore are refused with what to change."""
    await three_streams(redis)
    code, out, err = await render_cli(args, redis_url)
    assert code in (1, 2)
    assert out == ""
    assert message in err


def test_redis_url_gives_address_and_database_never_credentials() -> None:
    """host:port (6379 when the URL has none, IPv6 bracketed) and the database of REDIS_URL;
    a unix socket has no address KEDA could use."""
    assert keda.address_of_url("rediss://op:pw@redis.example:6380/2") == "redis.example:6380"
    assert keda.address_of_url("redis://[::1]/0") == "[::1]:6379"
    assert keda.address_of_url("unix:///run/redis.sock") is None
    assert keda.database_of_url("rediss://op:pw@redis.example:6380/2") == 2
    assert keda.database_of_url("redis://h:1/0?db=4") == 4
    assert keda.database_of_url("redis://h:1") == 0
