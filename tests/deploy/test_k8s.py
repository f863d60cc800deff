"""Kubernetes manifests: every overlay rendered by `kubectl kustomize`, the
built-in kinds validated strictly by kubernetes-validate, the CRDs (ServiceMonitor,
ScaledObject, TriggerAuthentication) by the schemas in crd_schemas.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.deploy.contract import CONNECTORS, SHUTDOWN_GRACE_S
from tests.deploy.crd_schemas import SCHEMAS
from tests.deploy.toolbox import REPO, output, run, venv_tool

K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir())
K8S_VERSION = "1.31.0"  # a release kubernetes-validate ships schemas for
PORTS = {"aam-bridge": 9101, "dcl-worker": 9102}

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """overlay name -> file holding `kubectl kustomize` output for it."""
    out = tmp_path_factory.mktemp("kustomize")
    files = {}
    for overlay in OVERLAYS:
        result = run([venv_tool("kubectl"), "kustomize", K8S / "overlays" / overlay])
        assert result.returncode == 0, output(result)
        files[overlay] = out / f"{overlay}.yaml"
        files[overlay].write_text(result.stdout)
    return files


def _docs(rendered: dict[str, Path], overlay: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(rendered[overlay].read_text()) if doc]


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _container(deployment: Doc) -> Doc:
    containers: list[Doc] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _config(docs: list[Doc]) -> dict[str, str]:
    data: dict[str, str] = _one(docs, "ConfigMap", "aam-dcl-config")["data"]
    return data


def _secret(docs: list[Doc]) -> dict[str, str]:
    data: dict[str, str] = _one(docs, "Secret", "aam-dcl-secrets")["stringData"]
    return data


def test_there_are_dev_and_prod_overlays() -> None:
    """Both overlays exist (the tests below run for every overlay found)."""
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_pass_strict_schema_validation(
    rendered: dict[str, Path], overlay: str
) -> None:
    """kubernetes-validate --strict accepts every built-in resource (unknown fields
    rejected), and the only resources it has no schema for are the three CRDs."""
    result = run(
        [venv_tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, rendered[overlay]]
    )
    assert result.returncode == 0, output(result)
    docs = _docs(rendered, overlay)
    builtin = [d for d in docs if (d["apiVersion"], d["kind"]) not in SCHEMAS]
    passed = [line for line in result.stdout.splitlines() if line.startswith("INFO")]
    assert len(passed) == len(builtin), output(result)
    warned = [line for line in result.stdout.splitlines() if line.startswith("WARN")]
    assert len(warned) == len(docs) - len(builtin), output(result)


def test_strict_validation_rejects_an_unknown_field(
    rendered: dict[str, Path], tmp_path: Path
) -> None:
    """The validation can fail: a misspelt container field is an error."""
    docs = _docs(rendered, "dev")
    deployment = _one(docs, "Deployment", "dcl-worker")
    _container(deployment)["livenesProbe"] = {"tcpSocket": {"port": 9102}}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(deployment))
    result = run([venv_tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, path])
    assert result.returncode != 0, output(result)
    assert "livenesProbe" in result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_their_crd_schemas(rendered: dict[str, Path], overlay: str) -> None:
    """ServiceMonitor, ScaledObject and TriggerAuthentication validate against the
    schemas written from their CRD docs, and each is present exactly once."""
    docs = _docs(rendered, overlay)
    for (api_version, kind), schema in SCHEMAS.items():
        found = [d for d in docs if d["apiVersion"] == api_version and d["kind"] == kind]
        assert len(found) == 1, f"{kind}: {len(found)}"
        jsonschema.validate(found[0], schema)


def test_crd_schema_rejects_a_misspelt_trigger_field(rendered: dict[str, Path]) -> None:
    """The CRD check can fail: `lagcount` (wrong case) in a trigger is rejected."""
    scaled = _one(_docs(rendered, "dev"), "ScaledObject", "dcl-worker")
    metadata = scaled["spec"]["triggers"][0]["metadata"]
    metadata["lagcount"] = metadata.pop("lagCount")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")])


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("daemon", sorted(PORTS))
def test_daemon_pods_are_locked_down(rendered: dict[str, Path], overlay: str, daemon: str) -> None:
    """Restricted pod security: non-root, RuntimeDefault seccomp, no privilege
    escalation, all capabilities dropped, read-only root with emptyDirs for /tmp
    and /data; resources requested and limited."""
    deployment = _one(_docs(rendered, overlay), "Deployment", daemon)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for path in ("/tmp", "/data"):
        assert "emptyDir" in volumes[mounts[path]], path
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("daemon", sorted(PORTS))
def test_daemon_probes_and_port_follow_the_contract(
    rendered: dict[str, Path], overlay: str, daemon: str
) -> None:
    """Liveness on /healthz and readiness on /readyz of the daemon's metrics port
    (bridge 9101, worker 9102); METRICS_PORT says the same; the Service exposes it
    as `metrics` and selects the daemon's pods."""
    docs = _docs(rendered, overlay)
    deployment = _one(docs, "Deployment", daemon)
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": PORTS[daemon]}
    env = {e["name"]: e for e in container["env"]}
    assert env["METRICS_PORT"]["value"] == str(PORTS[daemon])
    assert container["args"] == [daemon]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    service = _one(docs, "Service", daemon)
    assert service["spec"]["ports"][0]["name"] == "metrics"
    assert service["spec"]["ports"][0]["port"] == PORTS[daemon]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_exceeds_the_shutdown_grace(
    rendered: dict[str, Path], overlay: str
) -> None:
    """terminationGracePeriodSeconds is at least 10 s above SHUTDOWN_GRACE_S (25,
    from the ConfigMap both daemons load), so SIGKILL never cuts a drain short."""
    docs = _docs(rendered, overlay)
    config = _config(docs)
    assert int(config["SHUTDOWN_GRACE_S"]) == SHUTDOWN_GRACE_S
    for daemon in PORTS:
        deployment = _one(docs, "Deployment", daemon)
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= SHUTDOWN_GRACE_S + 10, daemon
        env_from = _container(deployment)["envFrom"]
        assert {"configMapRef": {"name": "aam-dcl-config"}} in env_from


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_is_named_after_its_pod_and_writes_to_postgresql(
    rendered: dict[str, Path], overlay: str
) -> None:
    """DCL_CONSUMER_NAME comes from the pod name (downward API); REDIS_URL and
    DCL_SINK_URL come from the Secret, whose sink is PostgreSQL (DuckDB would
    limit the worker to one replica)."""
    docs = _docs(rendered, overlay)
    env = {e["name"]: e for e in _container(_one(docs, "Deployment", "dcl-worker"))["env"]}
    assert env["DCL_CONSUMER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    for name in ("REDIS_URL", "DCL_SINK_URL"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "aam-dcl-secrets", "key": name}
    assert _secret(docs)["DCL_SINK_URL"].startswith("postgresql://")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_the_worker_on_each_connector_streams_group_lag(
    rendered: dict[str, Path], overlay: str
) -> None:
    """One redis-streams trigger per demo connector, on aam:dcl:{tenant}:{connector}
    and group dcl_engine:{tenant}; the address variable is in the worker's env
    (via the ConfigMap) and matches REDIS_URL's host:port; the password comes from
    a TriggerAuthentication that reads an existing Secret key."""
    docs = _docs(rendered, overlay)
    config, secret = _config(docs), _secret(docs)
    tenant = config["TENANT_ID"]
    scaled = _one(docs, "ScaledObject", "dcl-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "dcl-worker"
    triggers = scaled["spec"]["triggers"]
    streams = sorted(t["metadata"]["stream"] for t in triggers)
    assert streams == sorted(f"aam:dcl:{tenant}:{c}" for c in CONNECTORS)
    redis_url = urlsplit(secret["REDIS_URL"])
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "redis-streams"
        assert meta["consumerGroup"] == f"dcl_engine:{tenant}"
        assert int(meta["lagCount"]) > int(meta["activationLagCount"]) > 0
        assert config[meta["addressFromEnv"]] == f"{redis_url.hostname}:{redis_url.port}"
        assert meta.get("enableTLS", "false") == str(redis_url.scheme == "rediss").lower()
        auth = _one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == "aam-dcl-secrets"
            assert ref["key"] in secret
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_match_the_pods_they_mean(rendered: dict[str, Path], overlay: str) -> None:
    """Each PodDisruptionBudget selects its daemon's pods, the NetworkPolicy admits
    scrapes on the metrics port, and the ServiceMonitor selects both Services on a
    port they name `metrics`."""
    docs = _docs(rendered, overlay)
    for daemon in PORTS:
        labels = _one(docs, "Deployment", daemon)["spec"]["template"]["metadata"]["labels"]
        pdb = _one(docs, "PodDisruptionBudget", daemon)
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    policy = _one(docs, "NetworkPolicy", "aam-dcl")
    (expression,) = policy["spec"]["podSelector"]["matchExpressions"]
    assert sorted(expression["values"]) == sorted(PORTS)
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    monitor = _one(docs, "ServiceMonitor", "aam-dcl")
    selector = monitor["spec"]["selector"]["matchLabels"]
    for daemon in PORTS:
        service = _one(docs, "Service", daemon)
        assert selector.items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_dev_runs_redis_with_aof_on_a_volume_and_postgresql_in_cluster(
    rendered: dict[str, Path],
) -> None:
    """dev: Redis and PostgreSQL StatefulSets with PersistentVolumeClaims, Redis
    with AOF fsynced every second and the Secret's password, and the daemons'
    URLs pointing at their Services."""
    docs = _docs(rendered, "dev")
    redis = _one(docs, "StatefulSet", "redis")
    args = " ".join(_container(redis)["args"])
    assert "--appendonly yes" in args
    assert "--appendfsync everysec" in args
    assert "--requirepass $(REDIS_PASSWORD)" in args
    postgres = _one(docs, "StatefulSet", "postgres")
    for sts in (redis, postgres):
        assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
        assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    secret = _secret(docs)
    redis_url, sink_url = urlsplit(secret["REDIS_URL"]), urlsplit(secret["DCL_SINK_URL"])
    assert redis_url.scheme == "redis"
    assert redis_url.password == secret["REDIS_PASSWORD"]
    assert sink_url.password == secret["POSTGRES_PASSWORD"]
    _one(docs, "Service", redis_url.hostname or "")
    _one(docs, "Service", sink_url.hostname or "")
    assert "CHANGE_ME" not in "".join(secret.values())


def test_prod_uses_external_tls_redis_and_more_workers(rendered: dict[str, Path]) -> None:
    """prod: no in-cluster stores, REDIS_URL is rediss:// (TLS, verified), the
    PostgreSQL sink verifies TLS too, the worker runs more replicas than dev and
    KEDA keeps at least two, and the image comes from a registry."""
    prod, dev = _docs(rendered, "prod"), _docs(rendered, "dev")
    assert not [d for d in prod if d["kind"] in {"StatefulSet", "PersistentVolumeClaim"}]
    secret = _secret(prod)
    assert urlsplit(secret["REDIS_URL"]).scheme == "rediss"
    assert "sslmode=verify-full" in secret["DCL_SINK_URL"]
    replicas = {
        name: _one(docs, "Deployment", "dcl-worker")["spec"]["replicas"]
        for name, docs in (("prod", prod), ("dev", dev))
    }
    assert replicas["prod"] > replicas["dev"]
    assert _one(prod, "ScaledObject", "dcl-worker")["spec"]["minReplicaCount"] >= 2
    image = _container(_one(prod, "Deployment", "dcl-worker"))["image"]
    assert "/" in image
    assert image.endswith(":0.1.0")
