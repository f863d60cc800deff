"""dcl-worker: discovers a tenant's connector streams and reads them all with one reader.

Each stream has a ``StreamConsumer`` (its handling, reclaim and finalize); one
``StreamReader`` reads every stream in a few multi-stream XREADGROUP calls, so any number
of streams needs a handful of connections. Beside it run stream discovery (new streams
appear while it runs), a monitor that publishes lag/pending/length gauges and follows the
operator's pause flag, and supervision that restarts a crashed loop with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.errors import SinkUnavailable
from aam_dcl.redis_conn import redis_problem
from aam_dcl.stream_info import group_lag
from dcl_worker import metrics
from dcl_worker.consumer import Backoff, StreamConsumer
from dcl_worker.reader import StreamReader
from dcl_worker.sinks.base import Sink

log = structlog.get_logger("dcl_worker.worker")

MONITOR_INTERVAL_S = 2.0


class Worker:
    def __init__(
        self, settings: Settings, client: aioredis.Redis, sink: Sink, stopping: asyncio.Event
    ) -> None:
        self.settings = settings
        self.redis = client
        self.sink = sink
        self.stopping = stopping
        self.tenant = settings.tenant_id
        self.running = asyncio.Event()  # cleared while paused
        self.running.set()
        self.consumers: dict[str, StreamConsumer] = {}
        self.reader = StreamReader(settings, client, self.consumers, stopping, self.running)
        self.ignored: set[str] = set()  # stream keys logged once as not a connector stream
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.sink_ready = False

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        metrics.CONSUMING.labels(self.tenant).set(1 if self.settings.use_aam_as_source else 0)
        metrics.init_tenant(self.tenant)
        if not self.settings.use_aam_as_source:
            log.warning(
                "consumption_disabled",
                reason="USE_AAM_AS_SOURCE=false: this worker reads no streams",
            )
            await self.stopping.wait()
            return
        if not await self._open_sink():
            return
        self._spawn("discovery", self._discovery_loop)
        self._spawn("monitor", self._monitor_loop)
        self._spawn("reader", self.reader.run)
        await self.stopping.wait()
        await self._drain()

    async def _open_sink(self) -> bool:
        backoff = Backoff(cap_s=10.0)
        while not self.stopping.is_set():
            try:
                await self.sink.open()
                self.sink_ready = True
                return True
            except SinkUnavailable as exc:
                delay = backoff.next_s()
                log.warning("sink_unavailable", error=str(exc), retry_in_s=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
        return False

    async def _drain(self) -> None:
        """Let consumers finish the read in hand, then cancel anything left after the grace."""
        log.info("draining", in_flight=sum(c.in_flight for c in self.consumers.values()))
        tasks = list(self.tasks.values())
        _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("grace_period_exceeded", cancelled=len(pending))
            await asyncio.wait(pending, timeout=5)

    def _spawn(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        self.tasks[name] = asyncio.create_task(self._supervise(name, loop), name=name)

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop`` until stopping; a crash is logged with context and restarted."""
        backoff = Backoff(cap_s=30.0)
        while not self.stopping.is_set():
            try:
                await loop()
                return
            except Exception:
                delay = backoff.next_s()
                log.exception("loop_crashed", loop=name, restart_in_s=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)

    # --- health -------------------------------------------------------------------------------

    def live(self) -> str | None:
        for name, task in self.tasks.items():
            if task.done() and not self.stopping.is_set():
                return f"loop {name} has ended"
        return None

    async def ready(self) -> str | None:
        problem = await redis_problem(self.redis)
        if problem is not None:
            return problem
        if not self.settings.use_aam_as_source:
            return None
        if not self.sink_ready:
            return "sink not open yet"
        try:
            await self.sink.ping()
        except SinkUnavailable as exc:
            return f"sink unavailable: {exc}"
        return None

    # --- loops --------------------------------------------------------------------------------

    async def _discovery_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                for connector in await self.discover():
                    if connector not in self.consumers:
                        self._start_consumer(connector)
            except RedisError as exc:
                log.warning("discovery_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.settings.discovery_interval_s)

    async def discover(self) -> list[str]:
        """Connector names of this tenant's streams (SCAN aam:dcl:{tenant}:* TYPE stream)."""
        found: list[str] = []
        async for key in self.redis.scan_iter(
            match=keys.stream_pattern(self.tenant), count=1000, _type="stream"
        ):
            text = key.decode(errors="replace")
            name = keys.connector_of_stream(self.tenant, text)
            if name is not None:
                found.append(name)
            elif text not in self.ignored:  # once per key: discovery runs every few seconds
                self.ignored.add(text)
                problem = keys.stream_key_problem(self.tenant, text)
                log.warning("stream_ignored", stream=text, reason=problem)
                metrics.IGNORED_STREAMS.labels(self.tenant).set(len(self.ignored))
        return sorted(found)

    def _start_consumer(self, connector: str) -> None:
        consumer = StreamConsumer(
            self.settings, self.redis, self.sink, connector, self.reader.waits, self.running
        )
        self.consumers[connector] = consumer
        self.reader.streams_added.set()
        metrics.init_stream(self.tenant, connector)
        metrics.STREAMS.labels(self.tenant).set(len(self.consumers))
        log.info("stream_discovered", connector=connector, stream=consumer.stream)

    async def _monitor_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                await self._follow_pause_flag()
                await self.observe()
            except RedisError as exc:
                log.warning("monitor_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), MONITOR_INTERVAL_S)

    async def _follow_pause_flag(self) -> None:
        paused = bool(await self.redis.exists(keys.paused_flag(self.tenant)))
        if paused and self.running.is_set():
            self.running.clear()
            log.warning("consumption_paused", by="aam-dcl pause")
        elif not paused and not self.running.is_set():
            self.running.set()
            log.info("consumption_resumed")
        metrics.PAUSED.labels(self.tenant).set(1 if paused else 0)

    async def observe(self) -> None:
        """Refresh the per-stream gauges (one pipeline round trip)."""
        connectors = list(self.consumers)
        group = keys.group(self.tenant)
        pipe = self.redis.pipeline(transaction=False)
        for connector in connectors:
            stream = keys.stream(self.tenant, connector)
            pipe.xinfo_stream(stream)
            pipe.xinfo_groups(stream)
            pipe.xpending(stream, group)
            pipe.xlen(keys.dead_letter_stream(self.tenant, connector))
        pipe.scard(keys.processed_set(self.tenant))
        replies = await pipe.execute(raise_on_error=False)
        errors = {str(r) for r in replies if isinstance(r, Exception)}
        for error in sorted(errors):  # e.g. NOPERM from a too narrow ACL: gauges would go stale
            log.warning("monitor_command_failed", error=error)
        now_ms = time.time() * 1000
        for i, connector in enumerate(connectors):
            stream_info, groups, pending, dlq_length = replies[4 * i : 4 * i + 4]
            labels = (self.tenant, connector)
            if isinstance(stream_info, dict):
                metrics.STREAM_LENGTH.labels(*labels).set(stream_info["length"])
            if isinstance(dlq_length, int):
                metrics.DEAD_LETTER_LENGTH.labels(*labels).set(dlq_length)
            for info in groups if isinstance(groups, list) else []:
                if info.get("name") == group.encode() and isinstance(stream_info, dict):
                    consumer = self.consumers[connector]
                    consumer.lag = group_lag(info, stream_info)
                    consumer.pending = int(info.get("pending", 0))
                    metrics.GROUP_LAG.labels(*labels).set(consumer.lag)
                    metrics.PENDING.labels(*labels).set(consumer.pending)
            if isinstance(pending, dict):
                oldest = pending.get("min")
                age_s = 0.0
                if oldest:
                    oldest_ms = int(oldest.split(b"-")[0])
                    age_s = max(0.0, (now_ms - oldest_ms) / 1000)
                metrics.OLDEST_PENDING_AGE.labels(*labels).set(age_s)
        if isinstance(replies[-1], int):
            metrics.PROCESSED_SET_SIZE.labels(self.tenant).set(replies[-1])
