"""aam-bridge: runs every configured connector on its schedule, one task per connector.

A failed run is logged and retried with backoff; because the checkpoint lives in Redis, the
retry resumes the interrupted run rather than starting over. Shutdown cancels the runs:
that is safe at any point, since XADDs and their checkpoint are one all-or-nothing script.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from redis.exceptions import RedisError

from aam_bridge import metrics
from aam_bridge.connectors.base import Connector
from aam_bridge.sync import SyncRunner
from aam_dcl.config import Settings
from aam_dcl.errors import AamDclError
from aam_dcl.redis_conn import RedisClient, redis_problem
from aam_dcl.waiting import Backoff, StopWaiter

log = structlog.get_logger("aam_bridge")

REQUEST_POLL_S = 1.0  # how often a sleeping connector looks for an operator's run request


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
        labels = (self.settings.tenant_id, config.name)
        metrics.init_connector(*labels)
        backoff = Backoff(cap_s=60.0, base_s=0.5)
        opened = False
        while not self.stopping.is_set():
            started = time.monotonic()
            started_at = time.time()
            try:
                if not opened:
                    await connector.open()
                    opened = True
                result = await runner.run_once()
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
                await self.waits.sleep(delay)
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
                return
            await self._until_due(runner, started + config.schedule_s)

    async def _until_due(self, runner: SyncRunner, due: float) -> None:
        """Sleep until ``due`` (monotonic), or until an operator asks for a run now
        (``aam-dcl sync --now``, looked for every ``REQUEST_POLL_S``), or until stopping."""
        while not self.stopping.is_set():
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
