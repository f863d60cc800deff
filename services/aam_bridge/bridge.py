"""aam-bridge: runs every configured connector on its schedule, one task per connector.

A failed run is logged and retried with backoff; because the checkpoint lives in Redis, the
retry resumes the interrupted run rather than starting over. Shutdown cancels the runs:
that is safe at any point, since XADDs and their checkpoint are one all-or-nothing script.

Several bridges may run: a connector is synced only by the replica holding its lease
(``aam_bridge.lease``); the others poll for it every ``LEASE_POLL_S`` and take it when its
holder dies or pauses past AAM_LEASE_TTL_MS. A run in progress learns that it lost the lease
at its next write, which the fence refuses (``aam_bridge_fenced_writes_total``); an idle
connector learns it from the renewal. Either way the replica goes back to waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from redis.exceptions import RedisError

from aam_bridge import metrics
from aam_bridge.connectors.base import Connector
from aam_bridge.lease import Lease
from aam_bridge.sync import SyncRunner
from aam_dcl.config import Settings
from aam_dcl.errors import AamDclError, LeaseLost
from aam_dcl.redis_conn import RedisClient, redis_problem
from aam_dcl.waiting import Backoff, StopWaiter

log = structlog.get_logger("aam_bridge")

REQUEST_POLL_S = 1.0  # how often a sleeping connector looks for an operator's run request
LEASE_POLL_S = 1.0  # how often a replica without a connector's lease tries to take it


class Bridge:
    def __init__(
        self,
        settings: Settings,
        client: RedisClient,
        connectors: list[Connector],
        stopping: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.connectors = connectors
        self.stopping = stopping
        self.waits = StopWaiter(stopping)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.started_s = time.time()  # a 'once' connector synced since then is done

    async def run(self) -> None:
        """Run until every connector is done (schedule 'once') or stopping is set."""
        for connector in self.connectors:
            name = connector.config.name
            self.tasks[name] = asyncio.create_task(self._schedule(connector), name=name)
        stop = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait([*self.tasks.values(), stop], return_when=asyncio.FIRST_COMPLETED)
            while not self.stopping.is_set() and not all(t.done() for t in self.tasks.values()):
                await asyncio.wait(
                    [*self.tasks.values(), stop], return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            stop.cancel()
            for task in self.tasks.values():
                task.cancel()
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            self.waits.close()
            for connector in self.connectors:
                await connector.close()

    def live(self) -> str | None:
        for name, task in self.tasks.items():
            if task.done() and not task.cancelled() and task.exception() is not None:
                return f"connector {name} crashed: {task.exception()}"
        return None

    async def ready(self) -> str | None:
        return await redis_problem(self.redis)

    async def _schedule(self, connector: Connector) -> None:
        config = connector.config
        structlog.contextvars.bind_contextvars(
            tenant=self.settings.tenant_id, connector=config.name
        )
        runner = SyncRunner(self.settings, self.redis, connector)
        metrics.init_connector(self.settings.tenant_id, config.name)
        lease = Lease(self.settings, self.redis, config.name)
        try:
            while await self._acquire(lease):
                runner.publisher.token = lease.token
                log.info("lease_acquired", holder=lease.holder, token=lease.token)
                lost = asyncio.Event()
                keeper = asyncio.create_task(self._keep(lease, lost), name=f"lease:{config.name}")
                try:
                    if await self._run_while_held(connector, runner, lost):
                        return  # schedule 'once': done
                except LeaseLost as exc:
                    log.warning("lease_lost", token=runner.publisher.token, error=str(exc))
                finally:
                    keeper.cancel()
                    await asyncio.gather(keeper, return_exceptions=True)
        finally:
            with contextlib.suppress(RedisError, OSError):  # else it expires after the TTL
                await lease.release()

    async def _acquire(self, lease: Lease) -> bool:
        """Wait until this replica holds the lease (True), or until stopping (False)."""
        said = False
        while not self.stopping.is_set():
            try:
                if await lease.acquire():
                    return True
            except (RedisError, OSError) as exc:
                log.warning("lease_acquire_failed", error=str(exc), retry_in_s=LEASE_POLL_S)
            else:
                if not said:
                    log.info("lease_held_elsewhere", poll_s=LEASE_POLL_S)
                    said = True
            await self.waits.sleep(LEASE_POLL_S)
        return False

    async def _keep(self, lease: Lease, lost: asyncio.Event) -> None:
        """Renew the lease every third of its TTL until it is found lost (``lost`` set)."""
        while True:
            await asyncio.sleep(lease.renew_every_s)
            try:
                held = await lease.renew()
            except (RedisError, OSError) as exc:  # the fence guards the writes meanwhile
                log.warning("lease_renew_failed", error=str(exc))
                continue
            if not held:
                log.warning(
                    "lease_taken_over",
                    hint="another bridge holds the lease (this one was paused or cut off past "
                    "AAM_LEASE_TTL_MS); a run in progress stops at its next write",
                )  # fmt: skip
                lost.set()
                return

    async def _run_while_held(
        self, connector: Connector, runner: SyncRunner, lost: asyncio.Event
    ) -> bool:
        """Run on the schedule while the lease is held: True when a 'once' connector is done,
        False when the lease was lost while idle; LeaseLost when a write was refused."""
        config = connector.config
        labels = (self.settings.tenant_id, config.name)
        if config.schedule_s is None and await self._ran_since_start(runner):
            return True
        backoff = Backoff(cap_s=60.0, base_s=0.5)
        opened = False
        while not self.stopping.is_set() and not lost.is_set():
            started = time.monotonic()
            started_at = time.time()
            try:
                if not opened:
                    await connector.open()
                    opened = True
                result = await runner.run_once()
            except LeaseLost:
                raise
            except Exception as exc:
                # One connector's failure (its source, Redis, or a bug in it) never stops the
                # bridge or the other connectors: log, count, retry with backoff. The retry
                # resumes the interrupted run from its checkpoint.
                metrics.SYNC_RUNS.labels(*labels, "failed").inc()
                metrics.SYNC_RUN_SECONDS.labels(*labels, "failed").observe(
                    time.monotonic() - started
                )
                delay = backoff.next_s()
                expected = isinstance(exc, AamDclError | RedisError | OSError)
                (log.warning if expected else log.exception)(
                    "sync_run_failed", error=str(exc), error_type=type(exc).__name__,
                    retry_in_s=round(delay, 1),
                )  # fmt: skip
                with contextlib.suppress(RedisError, OSError):  # Redis may be the failure
                    await runner.record_outcome("failed", started_at, error=str(exc))
                await self._sleep_unless(lost, delay)
                continue
            backoff.reset()
            metrics.SYNC_RUNS.labels(*labels, "succeeded").inc()
            metrics.SYNC_RUN_SECONDS.labels(*labels, "succeeded").observe(
                time.monotonic() - started
            )
            metrics.LAST_SUCCESS.labels(*labels).set(time.time())
            log.info(
                "sync_run_finished",
                run_start_ms=result.run_start_ms,
                chunks=result.chunks,
                records=result.records,
                resumed=result.resumed,
                duration_s=round(time.monotonic() - started, 3),
            )
            if config.schedule_s is None:
                return True
            await self._until_due(runner, started + config.schedule_s, lost)
        return False

    async def _ran_since_start(self, runner: SyncRunner) -> bool:
        """Whether another replica finished a run of this connector after this one started: a
        'once' connector taken over then is done, not run a second time."""
        try:
            ended_s = await runner.last_success_end_s()
        except (RedisError, OSError):  # the run itself will say what is wrong
            return False
        if ended_s is None or ended_s < self.started_s:
            return False
        log.info("sync_run_skipped", reason="another bridge finished a run since this one started")
        return True

    async def _sleep_unless(self, lost: asyncio.Event, delay_s: float) -> None:
        """Sleep ``delay_s``, less if the lease is lost or stopping is set meanwhile."""
        with contextlib.suppress(TimeoutError):
            await self.waits.wait_for(asyncio.wait_for(lost.wait(), delay_s))

    async def _until_due(self, runner: SyncRunner, due: float, lost: asyncio.Event) -> None:
        """Sleep until ``due`` (monotonic), or until an operator asks for a run now
        (``aam-dcl sync --now``, looked for every ``REQUEST_POLL_S``), or until stopping or
        the lease is lost."""
        while not self.stopping.is_set() and not lost.is_set():
            left = due - time.monotonic()
            if left <= 0:
                return
            await self.waits.sleep(min(left, REQUEST_POLL_S))
            try:
                if await runner.take_run_request():
                    log.info("sync_run_requested")
                    return
            except (RedisError, OSError):  # the run itself will say what is wrong
                return
