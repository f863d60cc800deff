"""Canary secrets never leave the process: not in a log line, /metrics, /readyz, `aam-dcl
status --json`, `aam-dcl config check`, nor in any error — both daemons run as processes
with canary passwords in every URL form and a canary behind a ${VAR} of the connectors file."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import aiohttp
import orjson
import redis.asyncio as aioredis

from aam_dcl import keys
from tests.support import drained, wait_until

BIN = Path(sys.executable).parent
REDIS_PW = "CANARY-redis-7f3a"
PG_PW = "CANARY-pg-91c2"
ENV_VALUE = "CANARY-env-55d0"
WRONG_PW = "CANARY-wrong-0b1e"
CANARIES = (REDIS_PW, PG_PW, ENV_VALUE, WRONG_PW)


class Seen:
    """Everything an operator or a log shipper could see, collected to be searched."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: str | bytes) -> str:
        shown = text.decode(errors="replace") if isinstance(text, bytes) else text
        self.texts.append((where, shown))
        return shown

    def assert_no_canary(self) -> None:
        for where, text in self.texts:
            for canary in CANARIES:
                for form in (canary, quote(canary, safe=""), canary.lower()):
                    assert form not in text, f"{canary} leaked in {where}: {text[-2000:]}"


def start(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full_env = {
        **os.environ,
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": "0",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "DEBUG",
        **env,
    }
    with log.open("ab") as out:
        return subprocess.Popen([str(BIN / name)], env=full_env, stdout=out, stderr=out)


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def log_events(log: Path) -> list[dict[str, object]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            events.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return events


async def port_of(log: Path, event: str) -> int:
    """The port a daemon logged in its ``*_started`` line."""

    async def started() -> bool:
        return any(e.get("event") == event for e in log_events(log))

    await wait_until(started, what=event)
    (line,) = [e for e in log_events(log) if e.get("event") == event]
    return int(str(line["metrics_port"]))


async def scrape(port: int, seen: Seen, who: str) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/metrics", "/healthz", "/readyz"):
            async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                seen.add(f"{who} {path}", await response.read())


async def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.wait, 60)


async def test_no_canary_secret_reaches_logs_metrics_status_or_errors(
    redis_url: str, redis: aioredis.Redis, pg_dsn: str, tmp_path: Path
) -> None:
    await redis.execute_command("ACL", "SETUSER", "dcl", "on", f">{REDIS_PW}", "~*", "&*", "+@all")
    host_port = redis_url.removeprefix("redis://").removesuffix("/0")
    bridge_redis = f"redis://dcl:{REDIS_PW}@{host_port}/0"  # user:pass@
    worker_redis = f"redis://dcl@{host_port}/0?password={REDIS_PW}"  # ?password=
    cli_redis = f"redis://dcl@{host_port}/0?client_name=ops&password={REDIS_PW}"  # &password=
    sink = pg_dsn.replace("postgres@", f"postgres:{PG_PW}@") + f"?sslpassword={PG_PW}"
    good = tmp_path / "connectors.yaml"
    good.write_text(
        "connectors:\n  - name: salesforce\n    type: demo\n    schedule: 1h\n"
        "    options: {flavor: '${CRM_FLAVOR}', records: 50}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "connectors:\n  - name: salesforce\n    type: demo\n"
        "    options: {records: '${CRM_RECORDS}'}\n"
    )
    secrets_env = {"CRM_FLAVOR": "salesforce", "CRM_RECORDS": ENV_VALUE}
    seen = Seen()

    # Both daemons, end to end, each scraped while it runs.
    worker_log, bridge_log = tmp_path / "worker.log", tmp_path / "bridge.log"
    worker = start(
        "dcl-worker",
        {"REDIS_URL": worker_redis, "DCL_SINK_URL": sink, "DCL_CONSUMER_NAME": "w1"},
        worker_log,
    )
    bridge = start(
        "aam-bridge",
        {"REDIS_URL": bridge_redis, "AAM_CONNECTORS_FILE": str(good), **secrets_env},
        bridge_log,
    )
    try:

        async def ran() -> bool:
            return bool(await redis.hget(keys.sync_state("default", "salesforce"), "runs"))

        await wait_until(ran, what="the bridge's first run")
        await wait_until(lambda: drained(redis), what="the worker to drain the stream")
        await scrape(await port_of(worker_log, "worker_started"), seen, "dcl-worker")
        await scrape(await port_of(bridge_log, "bridge_started"), seen, "aam-bridge")

        status = run([str(BIN / "aam-dcl"), "status", "--json"], {"REDIS_URL": cli_redis})
        assert status.returncode == 0, status.stderr
        assert orjson.loads(seen.add("status --json", status.stdout))["streams"]
        seen.add("status stderr", status.stderr)
        check = run(
            [str(BIN / "aam-dcl"), "config", "check"],
            {"REDIS_URL": bridge_redis, "DCL_SINK_URL": sink, "AAM_CONNECTORS_FILE": str(good),
             **secrets_env},
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
        seen.add("config check", check.stdout + check.stderr)
    finally:
        await stop(bridge)
        await stop(worker)
    for who, log in (("dcl-worker", worker_log), ("aam-bridge", bridge_log)):
        seen.add(f"{who} log", log.read_bytes())
    (started,) = [e for e in log_events(worker_log) if e.get("event") == "worker_started"]
    assert started["redis"] == f"redis://dcl@{host_port}/0?password=***"
    assert str(started["sink"]).startswith("postgresql://postgres:***@127.0.0.1:5432/")
    assert str(started["sink"]).endswith("?sslpassword=***")

    # Error paths: a wrong password, URLs that fail the settings, a rejected ${VAR} value.
    wrong = f"redis://dcl:{WRONG_PW}@{host_port}/0"
    refused = run([str(BIN / "aam-dcl"), "status"], {"REDIS_URL": wrong})
    assert refused.returncode == 1
    assert "Traceback" not in seen.add("status, wrong password", refused.stdout + refused.stderr)
    failing_log = tmp_path / "failing-worker.log"
    failing = start(
        "dcl-worker", {"REDIS_URL": wrong, "DCL_SINK_URL": sink, "DCL_BLOCK_MS": "100"}, failing_log
    )
    try:
        # The start-up check refuses a wrong password: one line and exit 2, before serving.
        assert failing.wait(60) == 2
    finally:
        await stop(failing)
    seen.add("dcl-worker log, wrong password", failing_log.read_bytes())
    for daemon, env in (
        ("aam-bridge", {"REDIS_URL": f"redis://dcl:{REDIS_PW}@{host_port}:1/0"}),
        ("dcl-worker", {"REDIS_URL": redis_url, "DCL_SINK_URL": sink.replace(":5432/", ":99999/")}),
        ("aam-bridge", {"REDIS_URL": redis_url, "AAM_CONNECTORS_FILE": str(bad), **secrets_env}),
    ):
        result = run([str(BIN / daemon)], {"METRICS_PORT": "0", **env})
        assert result.returncode == 2, result.stderr
        seen.add(f"{daemon} start-up error", result.stdout + result.stderr)
    check = run(
        [str(BIN / "aam-dcl"), "config", "check"],
        {"AAM_CONNECTORS_FILE": str(bad), **secrets_env},
    )
    assert check.returncode == 1
    assert "options.records (from ${CRM_RECORDS}) is invalid" in seen.add(
        "config check, bad file", check.stderr
    )
    seen.assert_no_canary()
