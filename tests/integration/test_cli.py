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
from tests.integration.conftest import demo_configs, run_bridge_once, running_worker
from tests.support import drained, wait_until

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


async def test_status_lists_every_group_marks_ignored_ones_and_lists_ignored_streams(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """Per stream every consumer group appears with its pending, lag and oldest pending age;
    a group named in AAM_IGNORE_GROUPS is marked ignored; streams under aam:dcl:{tenant}:
    whose connector part is not a valid name (the worker ignores them) are listed with the
    reason, in the table and in --json (whose earlier keys are unchanged)."""
    stream = "aam:dcl:default:salesforce"
    for n in range(1, 11):
        await redis.xadd(stream, {"payload": b"{}"}, id=f"{n}-0")
    for group, read, acked in (("dcl_engine:default", 6, 4), ("analytics", 3, 0), ("audit", 0, 0)):
        await redis.xgroup_create(stream, group, id="0")
        if read:
            await redis.xreadgroup(group, "c1", {stream: ">"}, count=read)
        if acked:
            await redis.xack(stream, group, *[f"{n}-0" for n in range(1, acked + 1)])
    await redis.xadd("aam:dcl:default:bad:name", {"payload": b"{}"})
    await redis.xadd(b"aam:dcl:default:\xff", {"payload": b"{}"})
    env = {"REDIS_URL": redis_url, "AAM_IGNORE_GROUPS": "analytics, old"}

    as_json = await asyncio.to_thread(run_cli, "status", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    report = orjson.loads(as_json.stdout)
    (sf,) = report["streams"]
    groups = {g["name"]: g for g in sf["groups"]}
    assert set(groups) == {"dcl_engine:default", "analytics", "audit"}
    picked = {
        name: (g["pending"], g["lag"], g["own"], g["ignored"], g["oldest_pending_age_s"] is None)
        for name, g in groups.items()
    }
    assert picked == {
        "dcl_engine:default": (2, 4, True, False, False),
        "analytics": (3, 7, False, True, False),
        "audit": (0, 10, False, False, True),
    }
    assert sf["oldest_pending_age_s"] == groups["dcl_engine:default"]["oldest_pending_age_s"]
    assert report["ignore_groups"] == ["analytics", "old"]
    assert report["ignored_streams"] == [
        {"key": "aam:dcl:default:\\xff", "reason": "the key is not valid UTF-8"},
        {
            "key": "aam:dcl:default:bad:name",
            "reason": "connector part 'bad:name' is not a valid name "
            "(1-64 characters of letters, digits, '_', '.' or '-')",
        },
    ]

    table = await asyncio.to_thread(run_cli, "status", env=env)
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines() if line.startswith(stream)]
    assert [(r[2], r[3]) for r in rows] == [
        ("dcl_engine:default", "1"),
        ("analytics", "(ignored)"),
        ("audit", "0"),
    ]
    assert (
        "ignored stream aam:dcl:default:bad:name: connector part 'bad:name' is not a valid name"
        in table.stdout
    )
    assert "ignored stream aam:dcl:default:\\xff: the key is not valid UTF-8" in table.stdout
    assert "(AAM_IGNORE_GROUPS): analytics, old" in table.stdout


async def test_status_against_an_unreachable_redis_is_one_line_and_exit_1() -> None:
    """A Redis error is one line naming the (masked) URL, never a traceback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://:CANARY-pw@127.0.0.1:{port}/0"
    result = await asyncio.to_thread(run_cli, "status", env={"REDIS_URL": url})
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: Redis at redis://:***@127.0.0.1:{port}/0: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "CANARY" not in result.stdout + result.stderr
