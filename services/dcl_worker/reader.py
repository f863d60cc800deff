"""One reader for all of a tenant's streams: a few XREADGROUP calls, however many streams.

A blocked XREADGROUP holds a connection for its whole block time, so one blocked read per
stream ran the client out of connections at about a hundred streams (entries stayed unread
for minutes). The reader names every stream of a *lane* in one call instead; a lane is what
one XREADGROUP may name: on standalone Redis every stream (one lane), on a Redis Cluster the
streams of one hash slot (a command's keys share a slot; a tenant's streams spread over
slots, so in practice one lane per stream). Each lane loops:

1. reclaim for the consumers whose XAUTOCLAIM is due;
2. one non-blocking ``XREADGROUP ... STREAMS s1 s2 … 0 0 …`` for the consumers that must
   first re-read their own pending entries (after a start, a Redis error or a retry);
3. one ``XREADGROUP ... BLOCK ms STREAMS s1 s2 … > > …`` for the rest;

then every stream's entries are handled by its ``StreamConsumer``, several streams at once,
before the lane's next read, so each stream is still handled in order. A stream whose handling
left entries pending (or failed) sits out its retry delay while the others go on.

On a cluster at most ``MAX_LANE_READS`` lanes read at once (each read holds a connection on
its node); with more lanes than that, reads block for shorter (``DCL_BLOCK_MS`` scaled down,
at least ``MIN_SHARED_BLOCK_MS``) so that every lane gets its turn about every DCL_BLOCK_MS.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import structlog
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, KeyT, StreamIdT

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.redis_conn import RedisClient
from aam_dcl.streams import as_text
from aam_dcl.waiting import Backoff, StopWaiter
from dcl_worker import metrics
from dcl_worker.consumer import Entry, StreamConsumer

log = structlog.get_logger("dcl_worker.reader")

# Entries one read may return in all (COUNT applies per stream): bounds the worker's memory
# when many streams are busy at once; one stream still gets DCL_READ_COUNT.
MIN_READ_BUDGET = 1000
# Streams handled at once: the sink's connections are shared, Redis calls are short.
MAX_CONCURRENT_HANDLES = 8
# Reclaims (XAUTOCLAIM) per round, so a thousand streams coming due never stall the reads.
MAX_RECLAIMS_PER_ROUND = 64
# Cluster: lanes reading at once (redis-py's cluster client allows 100 connections per node,
# and refuses more at once), and the shortest block when more lanes share those reads.
MAX_LANE_READS = 64
MIN_SHARED_BLOCK_MS = 50
_NOGROUP_KEY = re.compile(r"No such key '(.+?)' or consumer group")


class StreamReader:
    def __init__(
        self,
        settings: Settings,
        client: RedisClient,
        consumers: dict[str, StreamConsumer],
        waits: StopWaiter,
        running: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.consumers = consumers  # the worker's: discovery adds to it while we run
        self.waits = waits  # the worker's, shared with every stream's consumer
        self.stopping = waits.stopping
        self.running = running  # cleared while an operator has paused consumption
        self.group = keys.group(settings.tenant_id)
        self.name = settings.consumer_name
        self.budget = max(MIN_READ_BUDGET, settings.read_count)
        self.streams_added = asyncio.Event()  # set by discovery when it adds a stream
        self.lanes: dict[int, asyncio.Task[None]] = {}  # by hash slot (standalone: one, 0)
        self.members: dict[int, list[StreamConsumer]] = {}  # each lane's consumers
        self.placed: set[str] = set()  # connectors whose consumer is in a lane
        self.reads = asyncio.Semaphore(MAX_LANE_READS)
        self.handles = asyncio.Semaphore(MAX_CONCURRENT_HANDLES)

    def lane_of(self, consumer: StreamConsumer) -> int:
        """The lane that reads ``consumer``'s stream: its hash slot on a cluster, else 0."""
        return self.redis.keyslot(consumer.stream) if isinstance(self.redis, RedisCluster) else 0

    async def run(self) -> None:
        """Start a lane for every slot that holds streams, as discovery finds them, until
        stopping; a lane that crashed ends the reader with its error (the worker restarts
        it)."""
        try:
            while not self.stopping.is_set():
                self.streams_added.clear()
                self._place_new_consumers()
                for lane in [t for t in self.lanes.values() if t.done()]:
                    lane.result()  # re-raises a lane's crash
                added = asyncio.ensure_future(self.streams_added.wait())
                try:
                    waited = asyncio.wait(
                        [added, *self.lanes.values()], return_when=asyncio.FIRST_COMPLETED
                    )
                    await self.waits.wait_for(waited)
                finally:
                    added.cancel()
        except BaseException:  # a lane's crash, or cancelled: the restarted reader starts anew
            for lane in self.lanes.values():
                lane.cancel()
            raise
        finally:
            lanes, self.lanes = list(self.lanes.values()), {}
            self.members, self.placed = {}, set()
            await asyncio.gather(*lanes, return_exceptions=True)  # stopping: each ends its step
            log.info("reader_stopped")

    def _place_new_consumers(self) -> None:
        """Put each consumer discovery added into its lane; start the lanes that are new."""
        for connector, consumer in list(self.consumers.items()):
            if connector in self.placed:
                continue
            self.placed.add(connector)
            slot = self.lane_of(consumer)
            self.members.setdefault(slot, []).append(consumer)
            if slot not in self.lanes:
                self.lanes[slot] = asyncio.create_task(self._lane(slot), name="reader-lane")

    async def _lane(self, slot: int) -> None:
        backoff = Backoff()
        consumers = self.members[slot]  # grows as discovery adds streams of this slot
        while not self.stopping.is_set():
            try:
                if not self.running.is_set():
                    await self.waits.wait_for(self.running.wait())
                    continue
                await self.step(consumers)
                backoff.reset()
            except ResponseError as exc:
                if not self._group_missing(exc, consumers):
                    raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # Whatever was read is pending under our name: the lane's streams re-read first.
                for consumer in consumers:
                    consumer.read_backlog = True
                    metrics.REDIS_ERRORS.labels(*consumer.labels).inc()
                delay = backoff.next_s()
                log.warning("redis_unavailable", error=str(exc), retry_in_s=round(delay, 2))
                await self.waits.sleep(delay)

    async def step(self, consumers: Sequence[StreamConsumer]) -> None:
        """One round of a lane: reclaims that are due, backlog reads, one blocking read of new
        entries."""
        for consumer in consumers:
            await consumer.ensure_group()
        now = time.monotonic()
        due = [c for c in consumers if c.due(now) and not c.read_backlog]
        for consumer in [c for c in due if now >= c.next_claim_at][:MAX_RECLAIMS_PER_ROUND]:
            await self._guarded(consumer, consumer.reclaim())
        backlog = [c for c in consumers if c.read_backlog and c.due(now)]
        if backlog:
            await self._read(backlog, "0", None)
        fresh = [c for c in consumers if not c.read_backlog and c.due(now)]
        if not fresh:
            await self.waits.sleep(self._until_due(consumers))
            return
        # Don't block while a stream has more of its backlog to read or a retry coming due.
        waiting = [c for c in consumers if c.read_backlog]
        block_ms = self._block_ms() if not waiting else None
        if waiting and not any(c.due(time.monotonic()) for c in waiting):
            block_ms = max(1, min(self._block_ms(), int(self._until_due(waiting) * 1000)))
        await self._read(fresh, ">", block_ms)

    def _block_ms(self) -> int:
        """DCL_BLOCK_MS; shorter when more lanes than MAX_LANE_READS take turns to read."""
        lanes = len(self.lanes)
        if lanes <= MAX_LANE_READS:
            return self.settings.block_ms
        shared = self.settings.block_ms * MAX_LANE_READS // lanes
        return min(self.settings.block_ms, max(MIN_SHARED_BLOCK_MS, shared))

    async def _read(
        self, consumers: Sequence[StreamConsumer], start: str, block_ms: int | None
    ) -> None:
        """One XREADGROUP over ``consumers``' streams; each stream's entries to its consumer."""
        readers = max(len(consumers), min(len(self.lanes), MAX_LANE_READS))
        count = max(1, min(self.settings.read_count, self.budget // readers))
        async with self.reads:
            streams: dict[KeyT, StreamIdT] = {c.stream: start for c in consumers}
            call = self._xreadgroup(streams, count, block_ms)
            reply = await self.waits.wait_for(call)
        if self.stopping.is_set() and reply is None:
            return  # abandoned: anything delivered stays pending and is re-read first
        entries_of: dict[str, list[Entry]] = {as_text(key): entries for key, entries in reply or []}
        work = []
        for consumer in consumers:
            entries = entries_of.get(consumer.stream) or []
            if start == "0" and not entries:
                consumer.read_backlog = False  # nothing of its own left pending
            elif entries:
                work.append((consumer, entries))
        if work:
            await self._handle(work, redelivered=start == "0")

    async def _xreadgroup(
        self, streams: dict[KeyT, StreamIdT], count: int, block_ms: int | None
    ) -> Any:
        if not isinstance(self.redis, RedisCluster):
            return await self.redis.xreadgroup(
                self.group, self.name, streams, count=count, block=block_ms
            )
        # To the slot's node by name: redis-py would first ask its default node where the keys
        # of XREADGROUP are (COMMAND GETKEYS): a round trip more, and none while it is down.
        await self.redis.initialize()  # a no-op unless a connection error asked for it
        node = self.redis.nodes_manager.get_node_from_slot(self.redis.keyslot(next(iter(streams))))
        block: list[EncodableT] = ["BLOCK", block_ms] if block_ms is not None else []
        return await self.redis.execute_command(
            "XREADGROUP", "GROUP", self.group, self.name, "COUNT", count, *block,
            "STREAMS", *streams, *streams.values(), target_nodes=node,
        )  # fmt: skip

    async def _handle(
        self, work: list[tuple[StreamConsumer, list[Entry]]], *, redelivered: bool
    ) -> None:
        """Handle several streams' entries at once; one stream's failure is that stream's."""

        async def one(consumer: StreamConsumer, entries: list[Entry]) -> None:
            async with self.handles:
                await self._guarded(consumer, consumer.handle(entries, redelivered=redelivered))

        await asyncio.gather(*(one(c, e) for c, e in work))

    async def _guarded(self, consumer: StreamConsumer, work: Awaitable[None]) -> None:
        """Run one stream's handling; if it fails, that stream (only) retries after a delay."""
        try:
            await work
            consumer.failures.reset()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            metrics.REDIS_ERRORS.labels(*consumer.labels).inc()
            delay = consumer.failures.next_s()
            consumer.retry_later(delay)
            log.warning(
                "redis_unavailable", connector=consumer.connector, error=str(exc),
                retry_in_s=round(delay, 2),
            )  # fmt: skip
        except ResponseError as exc:
            if not self._group_missing(exc, [consumer]):
                self._failed(consumer)
        except Exception:
            self._failed(consumer)

    def _failed(self, consumer: StreamConsumer) -> None:
        """A bug or an unexpected reply: log it, and retry this stream (only) with backoff."""
        delay = consumer.failures.next_s()
        consumer.retry_later(delay)
        log.exception(
            "stream_handling_failed", connector=consumer.connector, retry_in_s=round(delay, 2)
        )

    def _group_missing(self, exc: ResponseError, consumers: Sequence[StreamConsumer]) -> bool:
        """NOGROUP (stream and group deleted) or UNBLOCKED (deleted while we were blocked on
        it): the group is re-created from 0. False for any other error."""
        text = str(exc)
        if "NOGROUP" not in text and "UNBLOCKED" not in text:
            return False
        match = _NOGROUP_KEY.search(text)
        named = [c for c in consumers if match and c.stream == match.group(1)]
        for consumer in named or consumers:  # UNBLOCKED names no stream
            consumer.group_ready = False
            consumer.read_backlog = True
        log.warning("group_missing", streams=[c.stream for c in named] or "all", error=text)
        return True

    def _until_due(self, consumers: Sequence[StreamConsumer]) -> float:
        """Seconds until the first of ``consumers`` may be read again (at most the block time)."""
        now = time.monotonic()
        first = min((c.not_before for c in consumers), default=now)
        return max(0.001, min(self.settings.block_ms / 1000, first - now))
