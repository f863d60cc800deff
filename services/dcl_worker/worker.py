"""dcl-worker: discovers a tenant's connector streams and reads them all with one reader.

Each stream has a ``StreamConsumer`` (its handling, reclaim and finalize); one
``StreamReader`` reads every stream in a few multi-stream XREADGROUP calls, so any number
of streams needs a handful of connections. Beside it run stream discovery (new streams
appear while it runs), a monitor that publishes lag/pending/length gauges, follows the
operator's pause flag and keeps this consumer's heartbeat (``dcl_worker.heartbeat``), and
supervision that restarts a crashed loop with backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from redis.exceptions import RedisError

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.errors import SinkUnavailable
from aam_dcl.redis_conn import RedisClient, redis_problem
from aam_dcl.streams import read_streams, scan_streams
from aam_dcl.waiting import Backoff, StopWaiter
from dcl_worker import metrics
from dcl_worker.consumer import StreamConsumer
from dcl_worker.heartbeat import BEAT_EVERY_S, Heartbeats
from dcl_worker.reader import StreamReader
from dcl_worker.sinks.base import Sink

log = structlog.get_logger("dcl_worker.worker")

MONITOR_INTERVAL_S = BEAT_EVERY_S


class Worker:
    def __init__(
        self, settings: Settings, client: RedisClient, sink: Sink, stopping: asyncio.Event
    ) -> None:
        self.settings = settings
        self.redis = client
        self.sink = sink
        self.stopping = stopping
        self.tenant = settings.tenant_id
        self.running = asyncio.Event()  # cleared while paused
        self.running.set()
        self.consumers: dict[str, StreamConsumer] = {}
        self.waits = StopWaiter(stopping)  # every loop's waits end when stopping is set
        self.reader = StreamReader(settings, client, self.consumers, self.waits, self.running)
        self.ignored: set[str] = set()  # stream keys logged once as not a connector stream
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.sink_ready = False
        self.heartbeats = Heartbeats(settings, client)

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
        try:
            if not await self._open_sink():
                return
            self._spawn("discovery", self._discovery_loop)
            self._spawn("monitor", self._monitor_loop)
            self._spawn("reader", self.reader.run)
            await self.stopping.wait()
            await self._drain()
        finally:
            self.waits.close()

    async def _open_sink(self) -> bool:
        """Open the sink, retrying SinkUnavailable (the store not reachable yet) with backoff
        until stopping. A ConfigError (a store that can never work: no such database, a
        refused role, a missing privilege, another tenant's schema) is not caught: it ends
        run(), and the daemon prints it as one line and exits 2 (aam_dcl.daemon)."""
        backoff = Backoff(cap_s=10.0)
        while not self.stopping.is_set():
            try:
                await self.sink.open()
                self.sink_ready = True
                return True
            except SinkUnavailable as exc:
                delay = backoff.next_s()
                log.warning("sink_unavailable", error=str(exc), retry_in_s=round(delay, 2))
                await self.waits.sleep(delay)
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
                await self.waits.sleep(delay)

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
            await self.waits.sleep(self.settings.discovery_interval_s)

    async def discover(self) -> list[str]:
        """Connector names of this tenant's streams (SCAN aam:dcl:{tenant}:* TYPE stream)."""
        scan = await scan_streams(self.redis, self.tenant)
        for stream in scan.ignored:
            if stream.key not in self.ignored:  # once per key: discovery runs every few seconds
                self.ignored.add(stream.key)
                log.warning("stream_ignored", stream=stream.key, reason=stream.reason)
                metrics.IGNORED_STREAMS.labels(self.tenant).set(len(self.ignored))
        return scan.connectors

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
                await self.heartbeats.beat()
                await self._follow_pause_flag()
                await self.observe()
                await self.heartbeats.sweep(list(self.consumers))
            except RedisError as exc:
                log.warning("monitor_failed", error=str(exc))
            await self.waits.sleep(MONITOR_INTERVAL_S)

    async def _follow_pause_flag(self) -> None:
        """Pause or resume as the operator's flag says; the processed-set gauge on the way."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(keys.paused_flag(self.tenant))
        pipe.scard(keys.processed_set(self.tenant))
        flag, processed = await pipe.execute(raise_on_error=False)
        if isinstance(flag, Exception):
            raise flag
        paused = bool(flag)
        if paused and self.running.is_set():
            self.running.clear()
            log.warning("consumption_paused", by="aam-dcl pause")
        elif not paused and not self.running.is_set():
            self.running.set()
            log.info("consumption_resumed")
        metrics.PAUSED.labels(self.tenant).set(1 if paused else 0)
        if isinstance(processed, Exception):  # e.g. NOPERM from a too narrow ACL
            log.warning("monitor_command_failed", error=str(processed))
        else:
            metrics.PROCESSED_SET_SIZE.labels(self.tenant).set(processed)

    async def observe(self) -> None:
        """Refresh the per-stream gauges (one pipeline round trip)."""
        group = keys.group(self.tenant)
        states = await read_streams(
            self.redis, self.tenant, list(self.consumers), pending="own", dead_letters=True
        )
        now_s = time.time()
        for connector, state in states.items():
            labels = (self.tenant, connector)
            metrics.DEAD_LETTER_LENGTH.labels(*labels).set(state.dead_letters)
            if not state.exists:
                continue
            metrics.STREAM_LENGTH.labels(*labels).set(state.length)
            own = state.group(group)
            if own is None:
                continue
            consumer = self.consumers[connector]
            consumer.lag, consumer.pending = own.lag, own.pending
            metrics.GROUP_LAG.labels(*labels).set(own.lag)
            metrics.PENDING.labels(*labels).set(own.pending)
            metrics.OLDEST_PENDING_AGE.labels(*labels).set(own.oldest_pending_age_s(now_s) or 0.0)
