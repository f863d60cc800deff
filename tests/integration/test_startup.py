"""Start-up: a bad value stops a daemon with one clear line; secrets never reach the logs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from aam_dcl import keys
from tests.integration.conftest import wait_until

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("daemon", ["aam-bridge", "dcl-worker"])
def test_a_bad_value_stops_the_daemon_with_one_line_and_exit_code_2(daemon: str) -> None:
    env = {**os.environ, "AAM_BATCH_CHUNK_SIZE": "lots"}
    result = subprocess.run(
        [str(BIN / daemon)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"{daemon}: configuration error: AAM_BATCH_CHUNK_SIZE='lots' is invalid: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]


def test_a_bad_connectors_file_stops_the_bridge_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "connectors.yaml"
    path.write_text("connectors:\n  - name: crm\n    type: demo\n    schedule: sometimes\n")
    env = {**os.environ, "AAM_CONNECTORS_FILE": str(path), "METRICS_PORT": "0"}
    result = subprocess.run(
        [str(BIN / "aam-bridge")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "schedule='sometimes' is invalid" in result.stderr
    assert "connectors[0] (crm)" in result.stderr


async def test_the_redis_password_never_appears_in_logs_or_streams(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    secret = "s3cr3t-Token-value"
    await redis.execute_command("ACL", "SETUSER", "bridge", "on", f">{secret}", "~*", "&*", "+@all")
    host_port = redis_url.removeprefix("redis://")
    path = tmp_path / "connectors.yaml"
    path.write_text(
        "connectors:\n  - name: salesforce\n    type: demo\n    schedule: once\n"
        "    options: {records: 50}\n"
    )
    env = {
        **os.environ,
        "REDIS_URL": f"redis://bridge:{secret}@{host_port}",
        "AAM_CONNECTORS_FILE": str(path),
        "METRICS_PORT": "0",
        "LOG_LEVEL": "DEBUG",
    }
    result = await asyncio.to_thread(
        subprocess.run, [str(BIN / "aam-bridge")], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-2000:]
    assert "bridge_started" in text
    assert secret not in text
    entries = await redis.xrange(keys.stream("default", "salesforce"))
    assert entries
    assert all(secret.encode() not in fields[b"payload"] for _, fields in entries)

    async def ran() -> bool:
        return bool(await redis.hget(keys.sync_state("default", "salesforce"), "runs"))

    await wait_until(ran, what="the run to be recorded")


def test_a_second_signal_during_the_drain_exits_at_once() -> None:
    """SIGTERM starts a graceful stop; a second one does not wait for the grace period."""
    script = (
        "import asyncio, os, signal\n"
        "from aam_dcl.config import Settings\n"
        "from aam_dcl.daemon import _main\n"
        "async def service(settings, stopping):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    await stopping.wait()\n"
        "    print('draining', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    await asyncio.sleep(60)  # a drain that would outlast the test\n"
        "asyncio.run(_main('test-daemon', Settings(), service))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert "draining" in result.stdout.splitlines()
    assert result.returncode == 1
    assert "second_signal_exit_now" in result.stdout + result.stderr
