"""Start-up: a bad value stops a daemon with one clear line; secrets never reach the logs."""

from __future__ import annotations

import asyncio
import os
import socket
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


def run_daemon(daemon: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Start ``daemon`` on the given variables (the null store: these cases are about
    start-up, not the store); expected to stop at start-up, within the timeout."""
    full_env = {
        **os.environ,
        "DCL_SINK_URL": "null://",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "DEBUG",
        **env,
    }
    return subprocess.run(
        [str(BIN / daemon)], env=full_env, capture_output=True, text=True, timeout=60
    )


def only_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a daemon printed (stdout and stderr together); fails on more or a traceback."""
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("daemon", ["aam-bridge", "dcl-worker"])
def test_a_metrics_port_in_use_stops_the_daemon_with_one_line_and_exit_code_2(
    daemon: str, redis_url: str
) -> None:
    """METRICS_PORT held by another process: exit 2 at once naming the variable (it was a
    traceback from aiohttp)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"REDIS_URL": redis_url, "METRICS_HOST": "127.0.0.1", "METRICS_PORT": str(port)}
        result = run_daemon(daemon, env)
    assert result.returncode == 2
    assert only_line(result) == (
        f"{daemon}: configuration error: METRICS_PORT={port} is invalid: 127.0.0.1:{port} is "
        "already in use by another process: choose a free port (0 = any free port)"
    )


@pytest.mark.parametrize(
    ("host", "says"),
    [
        (
            "no-such-host.invalid",
            "METRICS_HOST='no-such-host.invalid' is invalid: it does not resolve",
        ),
        ("192.0.2.1", "METRICS_HOST='192.0.2.1' is invalid: it is not an address of this machine"),
        ("not a host", "METRICS_HOST='not a host' is invalid: use an IP address"),
    ],
)
@pytest.mark.parametrize("daemon", ["aam-bridge", "dcl-worker"])
def test_a_bad_metrics_host_stops_the_daemon_with_one_line_and_exit_code_2(
    daemon: str, host: str, says: str, redis_url: str
) -> None:
    """A host that does not resolve, is not this machine's, or is no host at all: exit 2."""
    env = {"REDIS_URL": redis_url, "METRICS_HOST": host, "METRICS_PORT": "0"}
    result = run_daemon(daemon, env)
    assert result.returncode == 2
    assert only_line(result).startswith(f"{daemon}: configuration error: {says}")


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("REDIS_URL", "redis://[::1", "REDIS_URL='redis://[::1' is invalid: a host in [ ]"),
        ("REDIS_URL", "redis://127.0.0.1:70000/0", "port must be a number from 1 to 65535"),
        ("REDIS_URL", "redis://127.0.0.1:6379/abc", "the path must be the database number"),
        ("AAM_IDEMPOTENCY_TTL", "999999999999", "less than or equal to 315360000"),
        (
            "DCL_SINK_URL",
            "postgresql://dcl:pw@127.0.0.1:99999/dcl",
            "DCL_SINK_URL='postgresql://dcl:***@",
        ),
    ],
)
@pytest.mark.parametrize("daemon", ["aam-bridge", "dcl-worker"])
def test_a_bad_url_or_bound_stops_the_daemon_with_one_line_and_exit_code_2(
    daemon: str, variable: str, value: str, says: str, redis_url: str
) -> None:
    """Caught by the settings, before anything starts: never a retry loop or a traceback."""
    result = run_daemon(daemon, {"REDIS_URL": redis_url, "METRICS_PORT": "0", variable: value})
    assert result.returncode == 2
    line = only_line(result)
    assert line.startswith(f"{daemon}: configuration error: {variable}="), line
    assert says in line


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (
            "connectors:\n  - name: café\n    type: demo\n".encode("latin-1"),
            "is not UTF-8 text (byte 0xe9 at line 2)",
        ),
        (
            b"connectors:\n  - name: a\n    type: demo\n    name: b\n",
            "key 'name' is given twice (first at line 2)",
        ),
        (
            b"connectors:\n  - name: a\n    type: demo\n    options: {records: '${CRM_RECORDS}'}\n",
            "options.records (from ${CRM_RECORDS}) is invalid",
        ),
    ],
)
def test_a_bad_connectors_file_stops_the_bridge_with_one_line_and_exit_code_2(
    content: bytes, says: str, redis_url: str, tmp_path: Path
) -> None:
    """Not UTF-8, a duplicate key, an option from ${VAR} that the connector rejects: one
    line naming the file and the problem (and the variable, never its value)."""
    path = tmp_path / "connectors.yaml"
    path.write_bytes(content)
    env = {
        "REDIS_URL": redis_url,
        "METRICS_PORT": "0",
        "AAM_CONNECTORS_FILE": str(path),
        "CRM_RECORDS": "CANARY-records-value",
    }
    result = run_daemon("aam-bridge", env)
    assert result.returncode == 2
    line = only_line(result)
    assert line.startswith(f"aam-bridge: configuration error: {path}: "), line
    assert says in line
    assert "CANARY" not in line
