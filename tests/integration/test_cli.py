"""aam-dcl status and demo, as a user runs them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from aam_dcl.config import Settings
from tests.integration.conftest import (
    demo_configs,
    drained,
    run_bridge_once,
    running_worker,
    wait_until,
)

BIN = Path(sys.executable).parent


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "aam-dcl"), *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_status_shows_what_the_guides_recipes_show_as_table_and_json(
    settings: Settings, redis: aioredis.Redis, redis_url: str
) -> None:
    async with running_worker(settings):
        await run_bridge_once(settings, demo_configs(records=100))
        await wait_until(lambda: drained(redis), what="the pipeline to drain")
    env = {"REDIS_URL": redis_url}
    table = await asyncio.to_thread(run_cli, "status", env=env)
    assert table.returncode == 0, table.stderr
    assert "aam:dcl:default:salesforce" in table.stdout
    assert "dcl_engine:default" in table.stdout
    assert "dcl:processed_batches:default:" in table.stdout
    as_json = await asyncio.to_thread(run_cli, "status", "--json", env=env)
    report = orjson.loads(as_json.stdout)
    streams = {s["connector"]: s for s in report["streams"]}
    assert set(streams) == {"salesforce", "hubspot", "dynamics"}
    sf = streams["salesforce"]
    assert sf["length"] == await redis.xlen("aam:dcl:default:salesforce")
    (group,) = sf["groups"]
    assert (group["name"], group["pending"], group["lag"]) == ("dcl_engine:default", 0, 0)
    assert report["processed_batches"]["size"] == await redis.scard("dcl:processed_batches:default")
    assert 0 < report["processed_batches"]["ttl_s"] <= 86400


async def test_status_with_a_bad_variable_names_it_and_exits_nonzero(redis_url: str) -> None:
    result = await asyncio.to_thread(
        run_cli, "status", env={"REDIS_URL": redis_url, "TENANT_ID": "a b"}
    )
    assert result.returncode != 0
    assert "TENANT_ID='a b' is invalid" in result.stderr


async def test_demo_runs_the_whole_pipeline_on_embedded_defaults(tmp_path: Path) -> None:
    """No REDIS_URL: the demo starts its own valkey-server and fills a DuckDB file under ./data."""
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DCL_SINK_URL"}}
    result = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "aam-dcl"), "demo", "--records", "300"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started a private valkey-server" in result.stdout
    assert ":6379" not in result.stdout
    assert "salesforce__opportunities" in result.stdout
    assert "run 2 ok" in result.stdout
    assert (tmp_path / "data" / "dcl.duckdb").exists()
    query = (
        result.stdout.split("query it:\n", 1)[1].strip().replace(".venv/bin/python", sys.executable)
    )
    shown = await asyncio.to_thread(
        subprocess.run, query, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "Closed Won" in shown.stdout
