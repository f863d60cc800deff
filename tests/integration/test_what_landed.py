"""Seeing what landed without SQL: ``aam-dcl tables``, ``aam-dcl schema TABLE`` and
``aam-dcl config check --connect``, on DuckDB and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from aam_dcl.config import Settings
from tests.conftest import PG_ADMIN_DSN
from tests.integration.conftest import demo_configs, run_bridge_once, running_worker
from tests.integration.test_cli import run_cli
from tests.integration.test_processes import daemon
from tests.support import drained, invoke_cli, wait_until


@pytest.fixture(params=["duckdb", "postgres"])
def store_settings(request: pytest.FixtureRequest, settings: Settings, pg_dsn: str) -> Settings:
    # A tenant of its own: the PostgreSQL database is shared by the run's tests, and a full
    # refresh rightly deletes rows of the same tables that this test's runs did not write.
    tenant = f"landed{uuid.uuid4().hex[:8]}"
    if request.param == "duckdb":
        return settings.for_tenant(tenant)
    return settings.model_copy(update={"sink_url": pg_dsn}).for_tenant(tenant)


def env(settings: Settings) -> dict[str, str]:
    return {
        "REDIS_URL": settings.effective_redis_url,
        "DCL_SINK_URL": settings.sink_url,
        "TENANT_ID": settings.tenant_id,
    }


@pytest.fixture
async def landed(store_settings: Settings, redis: aioredis.Redis) -> Settings:
    """Two demo runs (the second incremental) landed, the worker stopped."""
    configs = demo_configs(40, page_size=10)
    async with running_worker(store_settings):
        for _ in range(2):
            await run_bridge_once(store_settings, configs)
            await wait_until(lambda: drained(redis, store_settings.tenant_id), what="drained")
    return store_settings


async def test_tables_lists_every_table_with_rows_key_and_last_batch_and_the_runs(
    landed: Settings,
) -> None:
    result = await invoke_cli(["tables", "--json"], env(landed))
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    tables = {t["table"]: t for t in report["tables"]}
    opportunities = tables["salesforce__opportunities"]
    assert opportunities["connector"] == "salesforce"
    assert opportunities["primary_key"] == ["opportunity_id"]
    assert opportunities["live_rows"] >= 40
    assert opportunities["deleted_rows"] == 0
    assert opportunities["last_batch_id"].startswith("salesforce_")
    assert "amount" in opportunities["columns"]
    runs = {r["connector"]: r for r in report["connectors"]}
    assert runs["salesforce"]["last_run"]["status"] == "succeeded"
    assert runs["salesforce"]["runs"] == 2

    text = await invoke_cli(["tables"], env(landed))
    assert text.exit_code == 0, text.output
    assert "salesforce__opportunities" in text.output
    assert "succeeded" in text.output


async def test_schema_shows_columns_types_and_the_history_with_batches(landed: Settings) -> None:
    result = await invoke_cli(["schema", "salesforce__opportunities", "--json"], env(landed))
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    columns = {c["name"]: c for c in report["columns"]}
    assert columns["amount"]["type"] == "numeric"  # exact, as the store issue made it
    kinds = [h["kind"] for h in report["history"]]
    assert kinds[0] == "table_created"
    assert all(h["batch_id"] for h in report["history"])

    missing = await invoke_cli(["schema", "salesforce__nope"], env(landed))
    assert missing.exit_code == 1
    assert "no table 'salesforce__nope'" in missing.output


async def test_config_check_connect_says_what_is_wrong_with_the_sink_in_one_line(
    settings: Settings,
) -> None:
    good = await invoke_cli(["config", "check", "--connect"], env(settings))
    assert good.exit_code == 0, good.output
    assert "can be written" in good.output

    name = f"aam_dcl_missing_{uuid.uuid4().hex[:8]}"
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    bad = {**env(settings), "DCL_SINK_URL": f"{base}/{name}"}
    result = await invoke_cli(["config", "check", "--connect"], bad)
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]  # after the effective settings
    assert last.startswith("Error: DCL_SINK_URL")
    assert name in last
    assert "does not exist" in last
    assert "Traceback" not in result.output


async def test_tables_reads_a_duckdb_file_while_a_worker_process_waits_for_work(
    settings: Settings, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """DuckDB lets one process open a file: the worker releases it when idle (IDLE_RELEASE_S),
    `aam-dcl tables` in another process reads it, and the worker's next write opens it again."""
    worker_env = {**env(settings), "DCL_CONSUMER_NAME": "landed-worker"}
    worker = daemon("dcl-worker", worker_env, tmp_path / "worker.log")
    try:
        for run, records in enumerate((30, 30), 1):
            await run_bridge_once(settings, demo_configs(records, page_size=10))
            await wait_until(lambda: drained(redis), what=f"run {run} drained")
            result = await asyncio.to_thread(run_cli, "tables", "--json", env=env(settings))
            assert result.returncode == 0, result.stdout + result.stderr
            runs = {r["connector"]: r["runs"] for r in orjson.loads(result.stdout)["connectors"]}
            assert runs["salesforce"] == run
            tables = {t["table"] for t in orjson.loads(result.stdout)["tables"]}
            assert "salesforce__opportunities" in tables
        assert worker.poll() is None  # the worker kept running and writing between the reads
    finally:
        worker.terminate()
        worker.wait(30)
