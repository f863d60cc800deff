"""The daemons' command line and start-up permission check, as real processes.

--help, --version and a bad argument never touch Redis; a Redis user without what the daemon
needs (the users ``aam-dcl acl`` prints, for another tenant) stops it with one line, exit 2.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from aam_dcl import __version__, keys
from aam_dcl.acl import ROLE_COMMANDS, UNPROBED, acl_users, probe_commands
from aam_dcl.permissions import denied_commands
from tests.support import wait_until

BIN = Path(sys.executable).parent
DAEMONS = ["aam-bridge", "dcl-worker"]


async def command_stats(redis: aioredis.Redis) -> tuple[dict[str, Any], int]:
    """Every command Redis has run so far (but INFO, which this check sends), and how many
    connections it has accepted."""
    stats = await redis.info("commandstats")
    connections = int((await redis.info("stats"))["total_connections_received"])
    return {k: v["calls"] for k, v in stats.items() if k != "cmdstat_info"}, connections


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--help"], 0, "Usage: {daemon} [OPTIONS]"),
        (["-h"], 0, "Usage: {daemon} [OPTIONS]"),
        (["--version"], 0, "{daemon} " + __version__),
        (["--bogus"], 2, "Error: No such option '--bogus'"),
        (["start"], 2, "Error: Got unexpected extra argument (start)"),
    ],
)
@pytest.mark.parametrize("daemon", DAEMONS)
async def test_help_version_and_a_bad_argument_never_touch_redis(
    daemon: str, args: list[str], code: int, says: str, redis: aioredis.Redis, redis_url: str
) -> None:
    """`aam-bridge --help` published three demo syncs before: now help and version print and
    exit 0, an unknown argument prints usage and exits 2, and the private Redis the daemon is
    pointed at sees no connection and no command."""
    before = await command_stats(redis)
    env = {**os.environ, "REDIS_URL": redis_url, "METRICS_PORT": "0", "DCL_SINK_URL": "null://"}
    result = await asyncio.to_thread(
        subprocess.run, [str(BIN / daemon), *args], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == code, result.stdout + result.stderr
    assert says.format(daemon=daemon) in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert await command_stats(redis) == before
    assert await redis.dbsize() == 0


@pytest.mark.parametrize("role", ["bridge", "worker"])
def test_the_probe_covers_every_command_of_the_role(role: str) -> None:
    """The start-up check is built from ROLE_COMMANDS, the list `aam-dcl acl` grants: every
    command but EXEC (which would run the probe) is probed, MULTI and DISCARD by the frame."""
    probed = {command for command, _ in probe_commands(role, "acme", ["crm"])}
    assert probed | {"multi", "discard", *UNPROBED} == set(ROLE_COMMANDS[role])


@pytest.mark.parametrize("role", ["bridge", "worker"])
async def test_the_generated_users_pass_the_probe_and_other_tenants_users_do_not(
    role: str, redis: aioredis.Redis, redis_url: str
) -> None:
    """As `aam-dcl acl` generates it, acme's user may send every probed command on acme's keys
    (nothing denied, nothing in ACL LOG) and is denied on globex's; the probe leaves no key."""
    (user,) = acl_users("acme", "pw", (role,))
    await redis.execute_command(*user.command().split())
    client = aioredis.Redis.from_url(redis_url.replace("redis://", f"redis://{user.user}:pw@"))
    try:
        await redis.acl_log_reset()
        assert await denied_commands(client, role, "acme", ["crm"]) == []
        assert await redis.acl_log() == []
        denied = await denied_commands(client, role, "globex", ["crm"])
        described = {d.describe() for d in denied}
        first = "XADD on 'aam:dcl:globex:crm'" if role == "bridge" else None
        if first:
            assert denied[0].describe() == first
        assert "XLEN on 'aam:dcl:globex:crm'" in described
        assert await redis.dbsize() == 0, "the probe must not write"
        assert await client.ping()  # the connection went back to the pool usable
    finally:
        await client.aclose()
        await redis.execute_command("ACL", "DELUSER", user.user)


def start(daemon: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = {
        **os.environ, "METRICS_PORT": "0", "DCL_SINK_URL": "null://", "LOG_FORMAT": "json",
        **env,
    }  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen([str(BIN / daemon)], env=full, stdout=out, stderr=out)


@pytest.mark.parametrize(("daemon", "role"), [("aam-bridge", "bridge"), ("dcl-worker", "worker")])
async def test_a_user_for_another_tenant_stops_the_daemon_with_one_line_naming_the_fix(
    daemon: str, role: str, redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """The doc's ACL example without TENANT_ID=acme retried NoPermissionError forever: the
    daemon now exits 2 at start-up with one line naming the user, the tenant, the denied
    command and key, and the aam-dcl acl line that grants it; with TENANT_ID=acme the same
    user starts normally (the bridge publishes, the worker creates its group)."""
    (user,) = acl_users("acme", "pw", (role,))
    await redis.execute_command(*user.command().split())
    url = redis_url.replace("redis://", f"redis://{user.user}:pw@")
    denial = {  # the first of the role's commands (ROLE_COMMANDS order) on its key
        "bridge": "XADD on 'aam:dcl:default:salesforce'",
        "worker": "EXISTS on 'dcl:paused:default'",
    }[role]
    try:
        log = tmp_path / "wrong.log"
        proc = start(daemon, {"REDIS_URL": url}, log)
        assert await asyncio.to_thread(proc.wait, 60) == 2
        lines = log.read_text().strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(
            f"{daemon}: Redis user '{user.user}' may not run {denial} (and "
        ), lines[0]
        assert lines[0].endswith(
            f"(tenant 'default'); grant it with aam-dcl acl --tenant default --role {role}"
        )

        log = tmp_path / "right.log"
        proc = start(daemon, {"REDIS_URL": url, "TENANT_ID": "acme"}, log)
        try:
            if role == "bridge":
                stream = keys.stream("acme", "salesforce")

                async def started() -> bool:
                    return bool(await redis.exists(stream))
            else:
                await redis.xadd(keys.stream("acme", "crm"), {"payload": b"{}"})

                async def started() -> bool:
                    return bool(await redis.exists(keys.dead_letter_stream("acme", "crm")))

            await wait_until(started, what=f"{daemon} to work as {user.user}")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 60) == 0, log.read_text()[-2000:]
    finally:
        await redis.execute_command("ACL", "DELUSER", user.user)


@pytest.mark.parametrize("daemon", DAEMONS)
async def test_a_wrong_password_stops_the_daemon_with_one_masked_line(
    daemon: str, redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """A login Redis refuses is one line with the password masked, exit 2 (no retry loop)."""
    await redis.execute_command("ACL", "SETUSER", "someone", "on", ">right", "~*", "+@all")
    url = redis_url.replace("redis://", "redis://someone:CANARY-wrong@")
    try:
        log = tmp_path / "d.log"
        proc = start(daemon, {"REDIS_URL": url}, log)
        assert await asyncio.to_thread(proc.wait, 60) == 2
        (line,) = log.read_text().strip().splitlines()
        assert line.startswith(f"{daemon}: Redis at redis://someone:***@"), line
        assert "refused the login of user 'someone'" in line
        assert "CANARY" not in line
    finally:
        await redis.execute_command("ACL", "DELUSER", "someone")
