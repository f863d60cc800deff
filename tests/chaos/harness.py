"""Chaos harness: real ``aam-bridge`` and ``dcl-worker`` processes and a private Redis with an
AOF (``appendfsync always`` or ``everysec``), each killed with SIGKILL at seeded random moments
and restarted, while demo connectors push their records through; then the verdict of
``verify``. Redis is killed while entries are pending and the bridge is mid-run; with
``crash_loss_bytes`` the tail of its AOF is cut off as well, as a machine crash under
``everysec`` loses the last second of writes (a kill -9 alone loses nothing: the written AOF
is in the OS page cache).

A run: start Redis, the workers (each under a fixed DCL_CONSUMER_NAME) and the bridge
(connectors file with ``schedule: once``, so one bridge process = one sync run of every
connector). A "monkey" task sleeps a random delay, kills one process (a worker, the bridge or
Redis) and restarts it; whenever the bridge finishes a pass by itself a new pass starts, until
every connector has completed ``min_runs`` runs and the monkey is done. Then the harness waits
(polling, with a deadline) for the group to have no lag and nothing pending, stops the workers
with SIGTERM, and compares the store with what the connectors generated.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from aam_bridge.connectors.base import ConnectorConfig
from aam_dcl import keys
from aam_dcl_cli.local_server import LocalServer, start_local_server
from tests.chaos import verify
from tests.support import drained

BIN = Path(sys.executable).parent  # the venv's console scripts
TENANT = "default"
# Settings the daemons would otherwise inherit from the caller's environment.
_FOREIGN_ENV = ("AAM_", "DCL_", "REDIS_", "METRICS_", "LOG_", "TENANT_ID", "USE_AAM", "SHUTDOWN_")
# Log events worth counting in the report (info events that show the recovery paths, and
# every warning or error).
_NOTABLE = {"sync_run_resumed", "entries_reclaimed", "backpressure_on", "group_created"}


class ChaosFailure(AssertionError):
    """The run could not finish: a process died on its own, or a deadline passed."""


@dataclass(frozen=True)
class ChaosPlan:
    records_per_table: int
    sink: str = "postgres"  # postgres | duckdb
    connectors: tuple[str, ...] = ("salesforce", "hubspot", "dynamics")
    workers: tuple[str, ...] = ("chaos-worker-a", "chaos-worker-b")
    worker_kills: int = 10
    bridge_kills: int = 3
    redis_kills: int = 1
    min_runs: int = 2
    delay_s: tuple[float, float] = (0.5, 2.5)  # between two kills
    redis_down_s: tuple[float, float] = (0.2, 1.0)
    appendfsync: str = "always"  # the private Redis's AOF policy: always | everysec
    crash_loss_bytes: int = 0  # cut up to this much of the AOF's tail at each Redis kill
    seed: int = 20251107
    chunk_size: int = 200
    page_size: int = 500
    change_rate: float = 0.2  # share of rows each later run updates ...
    new_rate: float = 0.05  # ... and adds
    claim_idle_ms: int = 1000
    read_count: int | None = None  # DCL_READ_COUNT; None = the product's default
    stream_maxlen: int | None = None  # AAM_REDIS_STREAM_MAXLEN; None = the default
    deadline_s: float = 600.0


@dataclass
class Daemon:
    """One console script run as a real process, logging JSON lines to ``log``."""

    script: str
    label: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    log_offset: int = 0  # where the latest process's lines begin

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
        with self.log.open("ab") as out:
            self.log_offset = out.tell()
            self.proc = subprocess.Popen(
                [str(BIN / self.script)],
                env={**env, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def wait(self, timeout_s: float) -> int | None:
        """The exit code once the process ends by itself, or None after ``timeout_s``."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    def terminate(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM; the exit code, or None if it had to be killed after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return self.returncode()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def started_up(self) -> bool:
        """The latest process has logged its ``*_started`` line (its signal handlers are set)."""
        marker = b'"event": "' + self.script.split("-")[-1].encode() + b'_started"'
        with self.log.open("rb") as log:
            log.seek(self.log_offset)
            return marker in log.read()

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return f"--- last lines of {self.log} ---\n" + "\n".join(text[-lines:])


class ChaosRedis:
    """A private Redis with an AOF that can crash (losing its AOF's tail) and come back."""

    def __init__(self, directory: Path, appendfsync: str = "always") -> None:
        self.server = start_local_server(
            directory, appendonly=True, appendfsync=appendfsync, prefer="redis"
        )
        self.kills = 0

    def lose_aof_tail(self, max_bytes: int, rng: Random) -> int:
        """Cut up to ``max_bytes`` off the newest AOF file, mid-command as a crash would
        (Redis loads a truncated AOF up to its last whole command); returns the bytes cut."""
        files = sorted(
            self.server.directory.glob("appendonlydir/*.incr.aof"),
            key=lambda f: int(f.name.split(".")[-3]),
        )
        if not files or max_bytes <= 0:
            return 0
        newest = files[-1]
        size = newest.stat().st_size
        cut = min(size, rng.randint(1, max_bytes))
        os.truncate(newest, size - cut)
        return cut

    @property
    def url(self) -> str:
        return self.server.url

    def kill9(self) -> None:
        self.server.stop(kill=True)
        self.kills += 1

    def restart(self) -> None:
        old = self.server
        self.server = LocalServer(
            old.directory, old.port, old.binary, appendonly=True, appendfsync=old.appendfsync
        ).start()

    def stop(self) -> None:
        self.server.stop()


def redis_client(url: str) -> aioredis.Redis:
    """The harness's own client: a connection cut by a Redis restart is retried once more."""
    return aioredis.Redis.from_url(
        url, socket_timeout=5, retry=Retry(NoBackoff(), 2), retry_on_error=[RedisConnectionError]
    )


@dataclass
class Report:
    plan: ChaosPlan
    duration_s: float = 0.0
    runs: dict[str, int] = field(default_factory=dict)
    bridge_passes: int = 0
    events: list[str] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)
    log_events: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    entries_added: int = 0
    final_lag: dict[str, object] = field(default_factory=dict)  # XINFO GROUPS lag, drained
    worker_exit_codes: dict[str, int | None] = field(default_factory=dict)
    verdict: verify.Verdict = field(default_factory=verify.Verdict)

    @property
    def ok(self) -> bool:
        clean_exits = all(rc == 0 for rc in self.worker_exit_codes.values())
        return self.verdict.ok and self.dead_letters == 0 and clean_exits

    def format(self) -> str:
        p, v = self.plan, self.verdict
        worker_kills = ", ".join(f"{w} {self.kills[w]}" for w in p.workers)
        lines = [
            f"chaos run: sink={p.sink} workers={len(p.workers)} connectors={len(p.connectors)} "
            f"records/table={p.records_per_table} chunk={p.chunk_size} seed={p.seed}",
            f"  duration            {self.duration_s:.1f} s",
            "  sync runs           "
            + " ".join(f"{c}={n}" for c, n in self.runs.items())
            + f" (bridge processes started: {self.bridge_passes})",
            f"  records generated   {v.records_generated:,}",
            f"  records applied     {v.records_applied:,} (store inbox: {v.batches_applied:,} "
            f"batches; stream entries added: {self.entries_added:,})",
            f"  rows expected       {v.expected_rows:,}",
            f"  rows landed         {v.landed_rows:,}",
            f"  missing             {v.missing:,}",
            f"  duplicated          {v.duplicated:,}",
            f"  mismatched          {v.mismatched:,}",
            f"  never generated     {v.unexpected:,}",
            f"  chunk gaps          {len(v.chunk_gaps):,}",
            f"  dead letters        {self.dead_letters:,}",
            f"  kills (kill -9)     worker {sum(self.kills[w] for w in p.workers)} "
            f"({worker_kills}), bridge {self.kills['bridge']}, redis {self.kills['redis']}",
            f"  worker exit codes   {self.worker_exit_codes} (SIGTERM at the end)",
            f"  XINFO lag, drained  {self.final_lag} (anything but 0 is overstated)",
            "  log events          "
            + ", ".join(f"{k}={n}" for k, n in sorted(self.log_events.items())),
            f"  verdict             {'OK' if self.ok else 'FAILED'}",
            "  timeline:",
            *(f"    {e}" for e in self.events),
        ]
        if v.chunk_gaps:
            lines.append("  chunk gaps (batch ids never applied): " + ", ".join(v.chunk_gaps[:20]))
        if v.samples:
            lines += ["  problems (samples):", *(f"    {s}" for s in v.samples[:40])]
        return "\n".join(lines)


class ChaosRun:
    def __init__(self, plan: ChaosPlan, workdir: Path, sink_url: str) -> None:
        self.plan = plan
        self.workdir = workdir
        self.sink_url = sink_url
        self.report = Report(plan)
        self.rng = Random(plan.seed)
        self.configs = [
            ConnectorConfig(
                name=name,
                type="demo",
                connector_config_id=f"{name}-chaos",
                schedule_s=None,
                options={
                    "flavor": name,
                    "records": plan.records_per_table,
                    "seed": plan.seed,
                    "page_size": plan.page_size,
                    "change_rate": plan.change_rate,
                    "new_rate": plan.new_rate,
                },
            )
            for name in plan.connectors
        ]
        self.started = 0.0
        self.redis: ChaosRedis | None = None
        self.client: aioredis.Redis | None = None
        self.bridge: Daemon | None = None
        self.workers: list[Daemon] = []

    # --- the run ------------------------------------------------------------------------

    async def run(self) -> Report:
        self.started = time.monotonic()
        self.redis = ChaosRedis(self.workdir / "redis", self.plan.appendfsync)
        self.client = redis_client(self.redis.url)
        try:
            self._start_daemons()
            await self._drive()
            await self._wait_drained()
            for worker in self.workers:
                while not worker.started_up():  # SIGTERM before that is Python's default: -15
                    self._check_deadline(f"{worker.label} to start")
                    await asyncio.sleep(0.05)
                self.report.worker_exit_codes[worker.label] = worker.terminate()
            await self._collect()
        except ChaosFailure as exc:
            raise ChaosFailure(f"{exc}\n{await self._diagnose()}") from None
        finally:
            for daemon in [*self.workers, *([self.bridge] if self.bridge else [])]:
                if daemon.running:
                    daemon.kill9()
            await self.client.aclose()
            self.redis.stop()
            self.report.duration_s = time.monotonic() - self.started
            self._count_log_events()
        await self._verify()
        return self.report

    def _start_daemons(self) -> None:
        assert self.redis is not None
        common = {
            "REDIS_URL": self.redis.url,
            "TENANT_ID": TENANT,
            "METRICS_PORT": "0",
            "METRICS_HOST": "127.0.0.1",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "SHUTDOWN_GRACE_S": "20",
        }
        connectors_file = self.workdir / "connectors.yaml"
        connectors_file.write_text(
            "connectors:\n"
            + "".join(
                f"  - name: {c.name}\n"
                "    type: demo\n"
                f"    connector_config_id: {c.connector_config_id}\n"
                "    schedule: once\n"
                f"    options: {orjson.dumps(c.options).decode()}\n"
                for c in self.configs
            )
        )
        for name in self.plan.workers:
            env = {
                **common,
                "DCL_SINK_URL": self.sink_url,
                "DCL_CONSUMER_NAME": name,
                "DCL_CLAIM_IDLE_MS": str(self.plan.claim_idle_ms),
                "DCL_BLOCK_MS": "500",
                "DCL_DISCOVERY_INTERVAL_S": "0.5",
            }
            if self.plan.read_count is not None:
                env["DCL_READ_COUNT"] = str(self.plan.read_count)
            worker = Daemon("dcl-worker", name, env, self.workdir / f"{name}.log")
            worker.start()
            self.workers.append(worker)
        env = {
            **common,
            "AAM_CONNECTORS_FILE": str(connectors_file),
            "AAM_BATCH_CHUNK_SIZE": str(self.plan.chunk_size),
            # a bridge killed -9 holds its connectors' leases until they expire: the next
            # pass waits that long before it may publish
            "AAM_LEASE_TTL_MS": "2000",
        }
        if self.plan.stream_maxlen is not None:
            env["AAM_REDIS_STREAM_MAXLEN"] = str(self.plan.stream_maxlen)
        self.bridge = Daemon("aam-bridge", "bridge", env, self.workdir / "bridge.log")
        self._start_bridge()

    def _start_bridge(self) -> None:
        assert self.bridge is not None
        self.bridge.start()
        self.report.bridge_passes += 1

    async def _drive(self) -> None:
        """Restart finished bridge passes until the runs are done and the monkey has finished."""
        assert self.bridge is not None
        monkey = asyncio.create_task(self._monkey())
        try:
            while True:
                self._check_deadline("the sync runs")
                for worker in self.workers:
                    if not worker.running:
                        raise ChaosFailure(
                            f"{worker.label} exited by itself with {worker.returncode()}\n"
                            + worker.tail()
                        )
                if monkey.done():
                    monkey.result()  # a crash in the monkey fails the run here
                rc = self.bridge.returncode()
                if rc is not None:
                    if rc != 0:
                        raise ChaosFailure(f"aam-bridge exited with {rc}\n" + self.bridge.tail())
                    if monkey.done() and await self._runs_complete():
                        return
                    self._start_bridge()
                await asyncio.sleep(0.05)
        finally:
            monkey.cancel()

    async def _monkey(self) -> None:
        """Kill -9 (and restart) a worker, the bridge or Redis after each random delay."""
        plan, rng = self.plan, self.rng
        kinds = (
            ["worker"] * plan.worker_kills
            + ["bridge"] * plan.bridge_kills
            + ["redis"] * plan.redis_kills
        )
        rng.shuffle(kinds)
        # Kills start once every process is up and the bridge has created the streams.
        while not (
            all(d.started_up() for d in [*self.workers, self.bridge] if d)
            and await self._streams_exist()
        ):
            self._check_deadline("the daemons to start")
            await asyncio.sleep(0.05)
        self._event("all daemons up, streams created: kills begin")
        for kind in kinds:
            delay = rng.uniform(*plan.delay_s)
            target = rng.choice(self.workers)
            down_s = rng.uniform(*plan.redis_down_s)
            await asyncio.sleep(delay)  # the random pause between two kills
            if kind == "worker":
                await self._kill_worker(target)
            elif kind == "bridge":
                await self._kill_bridge()
            else:
                await self._kill_redis(down_s)

    async def _kill_worker(self, worker: Daemon) -> None:
        held = await self._pending_of(worker.label)
        worker.kill9()
        worker.start()
        self.report.kills[worker.label] += 1
        self._event(f"kill -9 {worker.label} (it held {held} pending entries); restarted")

    async def _kill_bridge(self) -> None:
        """Kill the bridge mid-run: the first moment after the delay that a run has published."""
        assert self.bridge is not None
        while True:
            self._check_deadline("a sync run to kill the bridge in")
            if self.bridge.running and self.bridge.started_up():
                runs = await self._sync_states()
                open_runs = {c: s["next_chunk"] for c, s in runs.items() if s.get("run_start_ms")}
                if any(int(n) > 1 for n in open_runs.values()):  # some chunks already out
                    break
            await asyncio.sleep(0.02)
        self.bridge.kill9()
        self._start_bridge()
        self.report.kills["bridge"] += 1
        self._event(f"kill -9 bridge mid-run (next chunk of the open runs: {open_runs}); restarted")

    async def _kill_redis(self, down_s: float) -> None:
        """Kill Redis mid-flow: the first moment after the delay that entries are pending and
        a sync run is publishing (a quiet moment would prove little)."""
        assert self.redis is not None
        assert self.bridge is not None
        while True:
            self._check_deadline("entries pending while the bridge publishes, to kill Redis")
            pending = await self._pending_total()
            runs = await self._sync_states() if self.bridge.running else {}
            publishing = any(int(s.get("next_chunk", 1)) > 1 for s in runs.values()
                             if s.get("run_start_ms"))  # fmt: skip
            if isinstance(pending, int) and pending > 0 and publishing:
                break
            await asyncio.sleep(0.01)
        unread = await self._unread()
        self.redis.kill9()
        lost = self.redis.lose_aof_tail(self.plan.crash_loss_bytes, self.rng)
        await asyncio.sleep(down_s)  # the outage itself
        await asyncio.to_thread(self.redis.restart)
        self.report.kills["redis"] += 1
        self._event(
            f"kill -9 redis ({pending} pending, lag+pending {unread}, bridge publishing; "
            f"appendfsync {self.plan.appendfsync}, {lost} bytes of AOF tail lost); restarted "
            f"on port {self.redis.server.port} from its AOF after {down_s:.2f} s"
        )

    async def _wait_drained(self) -> None:
        """Poll until every stream's group has no lag and nothing pending."""
        while not await self._drained():
            self._check_deadline("the workers to drain the streams")
            for worker in self.workers:
                if not worker.running:
                    raise ChaosFailure(f"{worker.label} exited by itself\n" + worker.tail())
            await asyncio.sleep(0.1)
        self._event("drained: every entry delivered and acknowledged")

    # --- Redis probes (each tolerates Redis being down) -----------------------------------

    async def _drained(self) -> bool:
        """Every entry of every stream was delivered to the group and acknowledged, judged
        without XINFO's ``lag``, which can stay overstated after an AOF replay (docs/chaos.md)
        and would make this wait forever."""
        assert self.client is not None
        return await drained(self.client, TENANT, self.plan.connectors, trust_lag=False)

    async def _group_states(self) -> dict[str, dict[str, object]]:
        """Per stream: the group's pending, lag, entries-read, last-delivered-id and the
        stream's last-generated-id, entries-added and length."""
        assert self.client is not None
        out: dict[str, dict[str, object]] = {}
        for connector in self.plan.connectors:
            stream = keys.stream(TENANT, connector)
            info = await self.client.xinfo_stream(stream)
            groups = await self.client.xinfo_groups(stream)
            group = next(g for g in groups if g["name"].decode() == keys.group(TENANT))
            out[connector] = {
                "pending": group["pending"],
                "lag": group["lag"],
                "entries-read": group["entries-read"],
                "last-delivered-id": group["last-delivered-id"],
                "last-generated-id": info["last-generated-id"],
                "entries-added": info["entries-added"],
                "length": info["length"],
            }
        return out

    async def _streams_exist(self) -> bool:
        assert self.client is not None
        streams = [keys.stream(TENANT, c) for c in self.plan.connectors]
        try:
            return int(await self.client.exists(*streams)) == len(streams)
        except RedisError:
            return False

    async def _unread(self) -> int | str:
        assert self.client is not None
        total = 0
        try:
            for connector in self.plan.connectors:
                for g in await self.client.xinfo_groups(keys.stream(TENANT, connector)):
                    total += int(g["pending"]) + int(g["lag"] or 0)
        except RedisError as exc:
            return f"unknown: {exc}"
        return total

    async def _pending_total(self) -> int | str:
        assert self.client is not None
        try:
            groups = [await self.client.xinfo_groups(keys.stream(TENANT, c))
                      for c in self.plan.connectors]  # fmt: skip
        except RedisError as exc:
            return f"unknown: {exc}"
        return sum(int(g["pending"]) for gs in groups for g in gs)

    async def _pending_of(self, consumer: str) -> int | str:
        assert self.client is not None
        total = 0
        try:
            for connector in self.plan.connectors:
                stream = keys.stream(TENANT, connector)
                for c in await self.client.xinfo_consumers(stream, keys.group(TENANT)):
                    if c["name"].decode() == consumer:
                        total += int(c["pending"])
        except RedisError as exc:
            return f"unknown: {exc}"
        return total

    async def _sync_states(self) -> dict[str, dict[str, str]]:
        assert self.client is not None
        out: dict[str, dict[str, str]] = {}
        for connector in self.plan.connectors:
            try:
                raw = await self.client.hgetall(keys.sync_state(TENANT, connector))
            except RedisError:
                raw = {}
            out[connector] = {k.decode(): v.decode() for k, v in raw.items()}
        return out

    async def _runs_complete(self) -> bool:
        states = await self._sync_states()
        return all(
            int(s.get("runs") or 0) >= self.plan.min_runs and not s.get("run_start_ms")
            for s in states.values()
        )

    # --- the end ----------------------------------------------------------------------------

    async def _collect(self) -> None:
        """Runs per connector, dead letters and entries added, read before Redis stops."""
        assert self.client is not None
        for connector, state in (await self._sync_states()).items():
            self.report.runs[connector] = int(state.get("runs") or 0)
            dlq = keys.dead_letter_stream(TENANT, connector)
            self.report.dead_letters += int(await self.client.xlen(dlq))
        for connector, state in (await self._group_states()).items():
            self.report.entries_added += int(str(state["entries-added"]))
            self.report.final_lag[connector] = state["lag"]

    async def _diagnose(self) -> str:
        """What Redis and the logs say, for a run that could not finish."""
        lines = ["timeline:", *self.report.events, "redis:"]
        try:
            for connector, state in (await self._group_states()).items():
                lines.append(f"  {connector}: {state}")
            for connector, sync in (await self._sync_states()).items():
                lines.append(f"  sync {connector}: {sync}")
        except RedisError as exc:
            lines.append(f"  unavailable: {exc}")
        for daemon in [*self.workers, *([self.bridge] if self.bridge else [])]:
            lines.append(daemon.tail(15))
        return "\n".join(lines)

    async def _verify(self) -> None:
        expected = await verify.expected_state(self.configs, self.report.runs)
        if self.plan.sink == "postgres":
            dsn, _, schema = self.sink_url.partition("?schema=")
            store = await verify.read_postgres(dsn, schema)
        else:
            store = verify.read_duckdb(Path(self.sink_url.removeprefix("duckdb://")))
        self.report.verdict = verify.compare(expected, store)

    def _count_log_events(self) -> None:
        for log in self.workdir.glob("*.log"):
            for line in log.read_bytes().splitlines():
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    self.report.log_events["non_json_line"] += 1
                    continue
                event = entry.get("event")
                if event in _NOTABLE or entry.get("level") in ("warning", "error", "critical"):
                    self.report.log_events[str(event)] += 1

    # --- helpers ----------------------------------------------------------------------------

    def _event(self, text: str) -> None:
        self.report.events.append(f"+{time.monotonic() - self.started:7.2f}s {text}")

    def _check_deadline(self, what: str) -> None:
        if time.monotonic() - self.started > self.plan.deadline_s:
            raise ChaosFailure(
                f"timed out after {self.plan.deadline_s:.0f} s waiting for {what}\n"
                + "\n".join(self.report.events)
            )
