"""One reader for all of a tenant's streams: a few XREADGROUP calls, however many streams.

A blocked XREADGROUP holds a connection for its whole block time, so one blocked read per
stream ran the client out of connections at about a hundred streams (entries stayed unread
for minutes). The reader names every stream in one call instead:

1. reclaim for the consumers whose XAUTOCLAIM is due;
2. one non-blocking ``XREADGROUP ... STREAMS s1 s2 … 0 0 …`` for the consumers that must
   first re-read their own pending entries (after a start, a Redis error or a retry);
3. one ``XREADGROUP ... BLOCK ms STREAMS s1 s2 … > > …`` for the rest;

then every stream's entries are handled by its ``StreamConsumer``, several streams at once,
before the next read, so each stream is still handled in order. A stream whose handling
left entries pending (or failed) sits out its retry delay while the others go on.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Sequence

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aam_dcl import keys
from aam_dcl.config import Settings
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
_NOGROUP_KEY = re.compile(r"No such key '(.+?)' or consumer group")


class StreamReader:
    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
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

    async def run(self) -> None:
        backoff = Backoff()
        try:
            while not self.stopping.is_set():
                try:
                    if not self.running.is_set():
                        await self.waits.wait_for(self.running.wait())
                        continue
                    await self.step()
                    backoff.reset()
                except ResponseError as exc:
                    if not self._group_missing(exc):
                        raise
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    # Whatever was read is pending under our name: every stream re-reads first.
                    for consumer in self.consumers.values():
                        consumer.read_backlog = True
                        metrics.REDIS_ERRORS.labels(*consumer.labels).inc()
                    delay = backoff.next_s()
                    log.warning("redis_unavailable", error=str(exc), retry_in_s=round(delay, 2))
                    await self.waits.sleep(delay)
        finally:
            log.info("reader_stopped")

    async def step(self) -> None:
        """One round: reclaims that are due, backlog reads, one blocking read of new entries."""
        consumers = list(self.consumers.values())
        if not consumers:  # wait for discovery to find the first stream
            await self.waits.wait_for(self.streams_added.wait())
            self.streams_added.clear()
            return
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
        block_ms = self.settings.block_ms if not waiting else None
        if waiting and not any(c.due(time.monotonic()) for c in waiting):
            block_ms = max(1, min(self.settings.block_ms, int(self._until_due(waiting) * 1000)))
        await self._read(fresh, ">", block_ms)

    async def _read(
        self, consumers: Sequence[StreamConsumer], start: str, block_ms: int | None
    ) -> None:
        """One XREADGROUP over ``consumers``' streams; each stream's entries to its consumer."""
        count = max(1, min(self.settings.read_count, self.budget // len(consumers)))
        call = self.redis.xreadgroup(
            self.group,
            self.name,
            {c.stream: start for c in consumers},
            count=count,
            block=block_ms,
        )
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

    async def _handle(
        self, work: list[tuple[StreamConsumer, list[Entry]]], *, redelivered: bool
    ) -> None:
        """Handle several streams' entries at once; one stream's failure is that stream's."""
        limit = asyncio.Semaphore(MAX_CONCURRENT_HANDLES)

        async def one(consumer: StreamConsumer, entries: list[Entry]) -> None:
            async with limit:
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
            if not self._group_missing(exc):
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

    def _group_missing(self, exc: ResponseError) -> bool:
        """NOGROUP (stream and group deleted) or UNBLOCKED (deleted while we were blocked on
        it): the group is re-created from 0. False for any other error."""
        text = str(exc)
        if "NOGROUP" not in text and "UNBLOCKED" not in text:
            return False
        match = _NOGROUP_KEY.search(text)
        named = [c for c in self.consumers.values() if match and c.stream == match.group(1)]
        for consumer in named or self.consumers.values():  # UNBLOCKED names no stream
            consumer.group_ready = False
            consumer.read_backlog = True
        log.warning("group_missing", streams=[c.stream for c in named] or "all", error=text)
        return True

    def _until_due(self, consumers: Sequence[StreamConsumer]) -> float:
        """Seconds until the first of ``consumers`` may be read again (at most the block time)."""
        now = time.monotonic()
        first = min((c.not_before for c in consumers), default=now)
        return max(0.001, min(self.settings.block_ms / 1000, first - now))
