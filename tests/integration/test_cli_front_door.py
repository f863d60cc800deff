"""aam-dcl as a new user meets it: --version, one Error line instead of a traceback for every
subcommand, --tenant before or after the command name, watch, the demo's progress, and trim
leaving AAM_IGNORE_GROUPS out."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from click.testing import Result

from aam_dcl import __version__, keys
from aam_dcl.config import Settings
from tests.integration.conftest import demo_configs, run_bridge_once, running_worker
from tests.support import invoke_cli

BIN = Path(sys.executable).parent
C = "salesforce"

# Every subcommand that talks to Redis, with arguments it accepts.
REDIS_COMMANDS = [
    ["status"],
    ["watch", "--once", "--interval", "0.1"],
    ["config", "check"],
    ["demo", "--records", "10", "--runs", "1"],
    ["dlq", "list"],
    ["dlq", "show", "1-0", "-c", C],
    ["dlq", "replay", "1-0", "-c", C],
    ["dlq", "purge", "1-0", "-c", C, "--yes"],
    ["dlq", "purge", "--all", "-c", C],
    ["pending"],
    ["trim", "-c", C, "--maxlen", "10"],
    ["pause"],
    ["resume"],
]


def run_cli(args: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> (
    subprocess.CompletedProcess[str]
):  # fmt: skip
    return subprocess.run(
        [str(BIN / "aam-dcl"), *args], env={**os.environ, **env}, cwd=cwd, capture_output=True,
        text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://:CANARY-pw@127.0.0.1:{port}/0"


def test_version() -> None:
    """`aam-dcl --version` prints the version, like the daemons."""
    result = run_cli(["--version"], env={})
    assert (result.returncode, result.stdout.strip()) == (0, f"aam-dcl {__version__}")


@pytest.mark.parametrize("args", REDIS_COMMANDS, ids=" ".join)
async def test_every_subcommand_fails_in_one_error_line_on_a_refused_port(
    args: list[str], tmp_path: Path
) -> None:
    """Redis down: one `Error: Redis at <masked url>: ...` line on stderr, exit 1, no
    traceback, no password (status printed 93 lines of traceback before)."""
    url = refused_url()
    result = await asyncio.to_thread(run_cli, args, {"REDIS_URL": url}, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"Error: Redis at {url.replace('CANARY-pw', '***')}: "), lines[0]
    assert "CANARY" not in result.stdout + result.stderr


@pytest.mark.parametrize("args", REDIS_COMMANDS, ids=" ".join)
async def test_every_subcommand_fails_in_one_error_line_on_a_wrong_password(
    args: list[str], redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """A login Redis refuses: one Error line naming the masked URL and the refusal, exit 1."""
    await redis.execute_command("ACL", "SETUSER", "op", "on", ">right", "~*", "+@all")
    url = redis_url.replace("redis://", "redis://op:CANARY-wrong@")
    try:
        result = await asyncio.to_thread(run_cli, args, {"REDIS_URL": url}, tmp_path)
    finally:
        await redis.execute_command("ACL", "DELUSER", "op")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: Redis at redis://op:***@"), lines[0]
    assert "invalid username-password pair" in lines[0]
    assert "CANARY" not in result.stdout + result.stderr


def test_acl_needs_no_redis() -> None:
    """`aam-dcl acl` only prints rules: it works with Redis down."""
    result = run_cli(["acl", "--tenant", "acme"], {"REDIS_URL": refused_url()})
    assert result.returncode == 0, result.stderr
    assert "ACL SETUSER aam-bridge-acme" in result.stdout


# --- --tenant before and after the command name --------------------------------------------


async def acme_state(redis: aioredis.Redis) -> str:
    """Tenant acme has a stream with a group, an entry, and one dead letter; returns its id."""
    stream = keys.stream("acme", C)
    await redis.xadd(stream, {"payload": b"{}"}, id="1-0")
    await redis.xgroup_create(stream, keys.group("acme"), id="$")
    dead = await redis.xadd(
        keys.dead_letter_stream("acme", C),
        {"original_id": "1-0", "batch_id": "b1", "payload": b"{}", "error_type": "wrong_shape"},
    )
    return str(dead.decode())


def placed(position: str, args: list[str]) -> list[str]:
    """``args`` with ``--tenant acme`` before the first word or at the end."""
    return ["--tenant", "acme", *args] if position == "before" else [*args, "--tenant", "acme"]


async def invoke(args: list[str], redis_url: str, cwd: Path) -> Result:
    env = {"REDIS_URL": redis_url, "TENANT_ID": "default", "DCL_SINK_URL": f"duckdb://{cwd}/d"}
    return await invoke_cli(args, env)


@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize(
    "name",
    ["status", "watch", "config check", "dlq list", "dlq show", "dlq replay", "dlq purge",
     "pending", "trim", "pause", "resume", "acl", "demo", "dlq (group)"],
)  # fmt: skip
async def test_tenant_works_before_and_after_every_command_name(
    name: str, position: str, redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """With TENANT_ID=default, `--tenant acme` in either place makes the command act on acme
    (`aam-dcl status --tenant acme` failed before)."""
    dead = await acme_state(redis)
    out = {
        "status": (["status", "--json"], lambda r: orjson.loads(r.output)["tenant"] == "acme"),
        "watch": (
            ["watch", "--once", "--interval", "0.1"],
            lambda r: r.output.split()[7:8] == [C],
        ),
        "config check": (["config", "check"], lambda r: "tenant_id = acme" in r.output),
        "dlq list": (["dlq", "list", "--json"], lambda r: '"salesforce": 1' in r.output),
        "dlq show": (["dlq", "show", dead, "-c", C], lambda r: "wrong_shape" in r.output),
        "dlq replay": (["dlq", "replay", dead, "-c", C], lambda r: "1 dead letters" in r.output),
        "dlq purge": (["dlq", "purge", dead, "-c", C, "--yes"], lambda r: "1 dead" in r.output),
        "pending": (["pending"], lambda r: keys.stream("acme", C) in r.output),
        "trim": (["trim", "-c", C, "--maxlen", "10"], lambda r: "aam:dcl:acme:" in r.output),
        "pause": (["pause"], lambda r: "tenant acme paused" in r.output),
        "resume": (["resume"], lambda r: "tenant acme was not paused" in r.output),
        "acl": (["acl"], lambda r: "ACL SETUSER aam-bridge-acme" in r.output),
        "demo": (["demo", "--records", "20", "--runs", "1"], lambda r: "tenant: acme" in r.output),
    }
    if name == "dlq (group)":  # between the group and its subcommand
        args = ["dlq", "--tenant", "acme", "list", "--json"]
        result = await invoke(args, redis_url, tmp_path)
        assert result.exit_code == 0, result.output
        assert '"salesforce": 1' in result.output
        return
    args, ok = out[name]
    result = await invoke(placed(position, args), redis_url, tmp_path)
    assert result.exit_code == 0, result.output
    assert ok(result), result.output
    if name == "pause":
        assert await redis.exists(keys.paused_flag("acme"))
        assert not await redis.exists(keys.paused_flag("default"))


# --- watch -----------------------------------------------------------------------------------


async def test_watch_once_shows_rates_per_stream_of_a_running_pipeline(
    settings: Settings, redis: aioredis.Redis, redis_url: str
) -> None:
    """While the bridge publishes and the worker writes, `watch --once` (no terminal) prints a
    plain table with one row per connector: entries added/s and acked/s above 0, and the
    stream's length, lag, pending and dead letters as Redis has them after the run."""
    watched = asyncio.Event()

    async def publish_until_watched() -> None:  # sync runs back to back: entries keep coming
        while not watched.is_set():
            await run_bridge_once(settings, demo_configs(records=2000))

    async with running_worker(settings):
        bridge = asyncio.create_task(publish_until_watched())
        try:
            result = await asyncio.to_thread(
                run_cli, ["watch", "--once", "--interval", "1", "--json"], {"REDIS_URL": redis_url}
            )
        finally:
            watched.set()
            await bridge
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    rows = {r["connector"]: r for r in report["streams"]}
    assert set(rows) == {"salesforce", "hubspot", "dynamics"}
    assert sum(r["added_per_s"] for r in rows.values()) > 0
    assert sum(r["acked_per_s"] for r in rows.values()) > 0

    plain = await asyncio.to_thread(
        run_cli, ["watch", "--once", "--interval", "0.2"], {"REDIS_URL": redis_url}
    )
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.strip().splitlines()
    assert lines[0].split() == ["CONNECTOR", "ADDED/S", "ACKED/S", "LENGTH", "LAG", "PENDING",
                                "DLQ"]  # fmt: skip
    by_name = {line.split()[0]: line.split() for line in lines[1:]}
    length = await redis.xlen(keys.stream("default", "hubspot"))
    assert by_name["hubspot"][3] == str(length)
    assert by_name["hubspot"][6] == "0"
    assert "\x1b[" not in plain.stdout, "no terminal: no escape codes"


# --- demo --------------------------------------------------------------------------------------


@pytest.mark.parametrize("terminal", [False, True])
async def test_demo_shows_progress_with_rates(
    terminal: bool, redis_url: str, tmp_path: Path
) -> None:
    """Piped, the demo prints progress lines with published and written records and their
    rates; on a terminal (FORCE_COLOR) a live table per connector, and the runs' end lines."""
    env = {"REDIS_URL": redis_url, "DCL_SINK_URL": f"duckdb://{tmp_path}/d.duckdb"}
    if terminal:
        env |= {"FORCE_COLOR": "1", "TERM": "xterm", "COLUMNS": "160"}
    result = await asyncio.to_thread(
        run_cli, ["demo", "--records", "3000", "--runs", "1"], env, tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    progress = [line for line in result.stdout.splitlines() if "run 1 ok" in line]
    assert any("/s)  written" in line for line in progress), result.stdout
    if terminal:
        assert "CONNECTOR" in result.stdout
        assert "WAITING" in result.stdout
        assert "\x1b[" in result.stdout
    else:
        assert "\x1b[" not in result.stdout


# --- trim and AAM_IGNORE_GROUPS -------------------------------------------------------------


async def test_trim_does_not_wait_for_groups_in_aam_ignore_groups(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """A group nobody reads any more (named in AAM_IGNORE_GROUPS) holds 10 unread entries:
    trim runs without --force, as the bridge's trimming would; without the setting the same
    trim is refused naming that group. The worker's own group is never ignored."""
    stream = keys.stream("default", C)
    for n in range(1, 11):
        await redis.xadd(stream, {"payload": b"{}"}, id=f"{n}-0")
    await redis.xgroup_create(stream, keys.group("default"), id="$")
    await redis.xgroup_create(stream, "old-report", id="0")
    args = ["trim", "-c", C, "--maxlen", "0"]
    refused = await asyncio.to_thread(run_cli, args, {"REDIS_URL": redis_url})
    assert refused.returncode == 1
    assert "group old-report: 10 unread" in refused.stderr
    env = {"REDIS_URL": redis_url, "AAM_IGNORE_GROUPS": f"old-report,{keys.group('default')}"}
    done = await asyncio.to_thread(run_cli, args, env)
    assert done.returncode == 0, done.stderr
    assert await redis.xlen(stream) < 10
