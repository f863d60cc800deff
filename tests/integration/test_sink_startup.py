"""dcl-worker and its DCL store: started as a process against a store that can never work, it
stops at start-up with one line naming DCL_SINK_URL (the password masked) and exit code 2;
against one that may come back (nothing listening yet) it keeps retrying with backoff
instead; and the sink it writes with takes DCL_DELETE_MODE.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import duckdb
import orjson
import redis.asyncio as aioredis

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.messages import encode, entry
from tests.integration import test_sink_registry as registry_tests
from tests.integration.conftest import running_worker
from tests.integration.test_processes import daemon
from tests.integration.test_sink_deletes import named
from tests.integration.test_sink_registry import other_dsn
from tests.integration.test_sinks import closed_port
from tests.support import drained, wait_until

RUN_S = 60
norights_role = registry_tests.norights_role  # a fixture: a login role without privileges


def started(url: str, redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {"REDIS_URL": redis_url, "DCL_SINK_URL": url, "LOG_LEVEL": "WARNING"}
    return daemon("dcl-worker", env, log)


async def test_a_database_that_does_not_exist_stops_the_worker_with_one_masked_line(
    redis_url: str, pg_dsn: str, tmp_path: Path
) -> None:
    url = other_dsn(pg_dsn, database="aam_dcl_no_such_db")
    log = tmp_path / "worker.log"
    proc = started(url, redis_url, log)
    assert await asyncio.to_thread(proc.wait, RUN_S) == 2
    (line,) = log.read_text().strip().splitlines()
    assert line.startswith(
        "dcl-worker: configuration error: DCL_SINK_URL=postgresql://postgres:***@"
    ), line
    assert 'database "aam_dcl_no_such_db" does not exist' in line
    assert "create the database" in line
    assert "CANARY" not in line


async def test_a_role_without_privileges_stops_the_worker_with_one_masked_line(
    redis_url: str,
    pg_dsn: str,
    norights_role: str,
    tmp_path: Path,
) -> None:
    url = other_dsn(pg_dsn, user=norights_role)
    log = tmp_path / "worker.log"
    proc = started(url, redis_url, log)
    assert await asyncio.to_thread(proc.wait, RUN_S) == 2
    (line,) = log.read_text().strip().splitlines()
    assert line.startswith(
        f"dcl-worker: configuration error: DCL_SINK_URL=postgresql://{norights_role}:***@"
    ), line
    assert "permission denied" in line
    assert "grant the user CREATE" in line
    assert "CANARY" not in line


async def test_a_store_not_listening_yet_is_retried_not_fatal(
    redis_url: str, tmp_path: Path
) -> None:
    """Nothing on the port: the worker logs sink_unavailable with a growing delay and keeps
    running; SIGTERM still stops it cleanly."""
    log = tmp_path / "worker.log"
    proc = started(f"postgresql://postgres:CANARY@127.0.0.1:{closed_port()}/x", redis_url, log)
    try:

        async def retried() -> bool:
            assert proc.poll() is None, log.read_text()[-2000:]
            events = [orjson.loads(line) for line in log.read_text().splitlines()]
            return sum(e.get("event") == "sink_unavailable" for e in events) >= 2

        await wait_until(retried, 30, "two sink_unavailable retries")
        assert "CANARY" not in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, RUN_S) == 0, log.read_text()[-2000:]


async def test_the_worker_writes_with_dcl_delete_mode(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """DCL_DELETE_MODE reaches the worker's sink: with hard, a batch's deleted key is gone from
    the store and a tombstone kept (soft, the default, keeps the row: test_sink_deletes)."""
    hard = settings.model_copy(update={"delete_mode": "hard"})
    b = named("crm_1700000000000_1", [1, 2])
    b.tables[0].deleted = [{"id": 2}]
    await redis.xadd(keys.stream("default", "crm"), entry(encode(b)))
    async with running_worker(hard):
        await wait_until(lambda: drained(redis, connectors=["crm"]), what="the batch applied")
    with duckdb.connect(hard.sink_url.removeprefix("duckdb://")) as con:
        assert con.execute("SELECT id FROM crm__contacts").fetchall() == [(1,)]
        assert con.execute("SELECT key FROM _dcl_tombstones").fetchall() == [('["2"]',)]
