"""One connector stream's consumer: dedupe, write, mark + ack what the reader hands it.

The reader (``dcl_worker/reader.py``) reads every stream; a stream's consumer first gets its
own pending entries (``XREADGROUP ... 0``), then new ones (``>``), and every
``DCL_CLAIM_IDLE_MS / 2`` takes over entries that dead consumers left (XAUTOCLAIM). A batch
must arrive on its own connector's stream, with a batch id not stamped in the future. A
read is handled as a whole: one SMISMEMBER to drop batches already processed,
one sink transaction (which records the batch ids in the store's own inbox: exactly once),
then two Lua calls (``finalize``): mark processed, then dead-letter poison and ack.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.dead_letter import DeadLetter
from aam_dcl.errors import (
    ForeignConnector,
    FutureBatchId,
    MessageError,
    SinkDataError,
    SinkUnavailable,
)
from aam_dcl.legacy import rename_legacy_keys
from aam_dcl.messages import Batch, decode, fingerprints_conflict, payload_of
from aam_dcl.progress import Progress
from aam_dcl.redis_conn import RedisClient
from aam_dcl.streams import create_group, entry_id_key
from aam_dcl.waiting import Backoff, StopWaiter
from dcl_worker import metrics
from dcl_worker.finalize import Finalizer
from dcl_worker.sinks.base import Sink

log = structlog.get_logger("dcl_worker.consumer")

Entry = tuple[bytes, dict[bytes, bytes] | None]


@dataclass(slots=True)
class Outcome:
    """What handling one read decided, entry by entry."""

    ack: list[bytes] = field(default_factory=list)
    mark: list[str] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    processed: list[Batch] = field(default_factory=list)
    duplicates: list[Batch] = field(default_factory=list)
    retry: int = 0  # entries left pending to be tried again
    known: set[str] = field(default_factory=set)  # processed per Redis, checked by the store


class StreamConsumer:
    def __init__(
        self,
        settings: Settings,
        client: RedisClient,
        sink: Sink,
        connector: str,
        waits: StopWaiter,
        running: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.sink = sink
        self.connector = connector
        self.tenant = settings.tenant_id
        self.stream = keys.stream(self.tenant, connector)
        self.group = keys.group(self.tenant)
        self.consumer = settings.consumer_name
        self.waits = waits
        self.stopping = waits.stopping
        self.running = running  # cleared while an operator has paused consumption
        self.finalize = Finalizer(client, self.tenant, connector, settings.idempotency_ttl_s)
        self.labels = (self.tenant, connector)
        self.read_backlog = True  # this consumer's own pending entries are read first
        self.not_before = 0.0  # monotonic time before which it is not read again
        self.failures = Backoff(cap_s=30.0)  # for handling that failed unexpectedly
        self.progress = Progress(settings.progress_interval_s)
        self.lag: int | None = None  # as the worker's monitor last saw them
        self.pending: int | None = None
        self.next_claim_at = 0.0
        self.claim_cursor = b"0-0"
        self.in_flight = False
        self.group_ready = False
        self.upgraded = False  # the old names were looked for

    # --- what the reader asks ---------------------------------------------------------------

    def due(self, now: float) -> bool:
        """Not waiting out a retry delay (a batch left pending, a failed handling)."""
        return now >= self.not_before

    def retry_later(self, delay_s: float) -> None:
        """Leave what this consumer holds pending; re-read it (backlog first) after ``delay_s``."""
        self.read_backlog = True
        self.not_before = time.monotonic() + delay_s

    async def ensure_group(self) -> None:
        """Create the group at 0 if it is missing; the first time, rename the dead letters and
        the expiry index under their old names (``aam_dcl.legacy``)."""
        if not self.group_ready:
            if not self.upgraded:
                pairs = keys.legacy_renames("worker", self.tenant, self.connector)
                await rename_legacy_keys(self.redis, pairs)
                self.upgraded = True
            await create_group(self.redis, self.stream, self.group)
            self.group_ready = True

    async def reclaim(self) -> None:
        """Take over entries idle longer than DCL_CLAIM_IDLE_MS, whoever holds them."""
        self.next_claim_at = time.monotonic() + self.settings.claim_idle_ms / 2000
        while not self.stopping.is_set():
            reply: list[Any] = await self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.settings.claim_idle_ms,
                start_id=self.claim_cursor,
                count=self.settings.read_count,
            )
            self.claim_cursor = reply[0]
            claimed: list[Entry] = reply[1]
            deleted: list[bytes] = reply[2] if len(reply) > 2 else []
            if deleted:
                # Redis dropped these from the PEL: they were trimmed before anyone acked them.
                metrics.DELETED_PENDING.labels(*self.labels).inc(len(deleted))
                log.error(
                    "pending_entries_deleted",
                    count=len(deleted),
                    first=deleted[0].decode(),
                    hint="the stream was trimmed or XDEL'd while these were unacknowledged",
                )
            if claimed:
                metrics.RECLAIMED.labels(*self.labels).inc(len(claimed))
                log.info("entries_reclaimed", count=len(claimed))
                await self.handle(claimed, redelivered=True)
            if self.claim_cursor in (b"0-0", "0-0"):
                return

    # --- handling a read ------------------------------------------------------------------

    async def handle(self, entries: list[Entry], *, redelivered: bool) -> None:
        """Decide every entry, write the fresh batches, then finalize (mark, then ack).

        Runs shielded: once a read is being handled, a shutdown waits for it to finish.
        """
        self.in_flight = True
        try:
            await asyncio.shield(self._handle(entries, redelivered))
        finally:
            self.in_flight = False

    async def _handle(self, entries: list[Entry], redelivered: bool) -> None:
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        out = Outcome()
        deliveries = await self._delivery_counts(entries) if redelivered else {}
        candidates: list[tuple[bytes, Batch]] = []
        fields_of = dict(entries)
        for entry_id, fields in entries:
            if not fields:  # pending, but deleted from the stream (XREADGROUP gives no fields)
                metrics.DELETED_PENDING.labels(*self.labels).inc()
                log.error("pending_entry_deleted", entry_id=entry_id.decode())
                out.ack.append(entry_id)
                continue
            try:
                batch = decode(fields, self.settings.max_payload_bytes)
                self._check_origin(batch, now_ms)
            except MessageError as exc:
                out.dead.append(self._dead(entry_id, fields, deliveries, exc.reason, str(exc)))
                out.ack.append(entry_id)
                continue
            candidates.append((entry_id, batch))

        # Duplicates first: a batch already processed is acked, however often it was delivered.
        fresh = await self._drop_processed(candidates, fields_of, deliveries, out)
        fresh = self._drop_overdelivered(fresh, entries, deliveries, out)
        await self._write(fresh, out, deliveries, entries)
        await self._finalize(out)
        self._observe(out, started)

    def _check_origin(self, batch: Batch, now_ms: int) -> None:
        """The stream decides the connector, and the clock bounds the batch's version.

        A payload naming another connector would write that connector's tables; a batch id
        stamped far in the future would give its rows a version no later batch can beat.
        """
        if batch.connector != self.connector:
            raise ForeignConnector(
                f"batch {batch.batch_id} names connector {batch.connector!r} but arrived on "
                f"{self.stream}: a stream carries its own connector's batches only"
            )
        parsed = keys.parse_batch_id(batch.batch_id)
        limit_ms = now_ms + self.settings.max_clock_skew_s * 1000
        if parsed is not None and parsed[1] > limit_ms:
            raise FutureBatchId(
                f"batch {batch.batch_id}: its timestamp {parsed[1]} ms is "
                f"{(parsed[1] - now_ms) / 1000:.0f} s in the future, over "
                f"DCL_MAX_CLOCK_SKEW_S={self.settings.max_clock_skew_s}"
            )

    def _drop_overdelivered(
        self,
        fresh: list[tuple[bytes, Batch]],
        entries: list[Entry],
        deliveries: dict[bytes, int],
        out: Outcome,
    ) -> list[tuple[bytes, Batch]]:
        """Dead-letter batches delivered more than DCL_MAX_DELIVERIES times (they kill workers)."""
        if not deliveries:
            return fresh
        fields_of = dict(entries)
        kept = []
        for entry_id, batch in fresh:
            count = deliveries.get(entry_id, 1)
            # A batch already processed is no poison, however often delivered: the store skips it.
            if count > self.settings.max_deliveries and batch.batch_id not in out.known:
                reason = f"delivered {count} times, over DCL_MAX_DELIVERIES"
                fields = fields_of.get(entry_id) or {}
                out.dead.append(
                    self._dead(entry_id, fields, deliveries, "max_deliveries", reason, batch)
                )
                out.ack.append(entry_id)
            else:
                kept.append((entry_id, batch))
        return kept

    async def _drop_processed(
        self,
        candidates: list[tuple[bytes, Batch]],
        fields_of: dict[bytes, dict[bytes, bytes] | None],
        deliveries: dict[bytes, int],
        out: Outcome,
    ) -> list[tuple[bytes, Batch]]:
        """Ack batches already processed (one SMISMEMBER) and repeats in this read.

        A batch id reused with other content is not a duplicate: a repeat within the read is
        compared with its first copy here; a batch Redis knows as processed that carries a
        fingerprint goes on to the sink, whose inbox compares it with the applied copy (and
        skips it when it is the same). Either conflict is dead-lettered as batch_id_conflict.
        """
        if not candidates:
            return []
        ids = [b.batch_id for _, b in candidates]
        known = await self.redis.smismember(keys.processed_set(self.tenant), ids)
        fresh: list[tuple[bytes, Batch]] = []
        first: dict[str, Batch] = {}
        for (entry_id, batch), is_known in zip(candidates, known, strict=True):
            earlier = first.get(batch.batch_id)
            if earlier is not None and fingerprints_conflict(
                earlier.fingerprint, batch.fingerprint
            ):
                error = (
                    f"batch {batch.batch_id} arrived twice in one read with different content "
                    f"(fingerprints {earlier.fingerprint}, {batch.fingerprint}): a producer "
                    "reused a batch id"
                )
                fields = fields_of.get(entry_id) or {}
                dead = self._dead(entry_id, fields, deliveries, "batch_id_conflict", error, batch)
                out.dead.append(dead)
                out.ack.append(entry_id)
            elif earlier is not None or (is_known and batch.fingerprint is None):
                out.duplicates.append(batch)
                out.ack.append(entry_id)
            else:
                first[batch.batch_id] = batch
                fresh.append((entry_id, batch))
                if is_known:
                    out.known.add(batch.batch_id)
        return fresh

    async def _write(
        self,
        fresh: list[tuple[bytes, Batch]],
        out: Outcome,
        deliveries: dict[bytes, int],
        entries: list[Entry],
    ) -> None:
        if not fresh:
            return
        try:
            already = await self._write_until_available([b for _, b in fresh])
        except SinkDataError:
            # Some batch in the group is poison: write one by one to find it.
            await self._write_one_by_one(fresh, out, deliveries, dict(entries))
            return
        if already is None:  # stopping while the store was unavailable: leave all pending
            out.retry += len(fresh)
            return
        for entry_id, batch in fresh:
            (out.duplicates if batch.batch_id in already else out.processed).append(batch)
            out.mark.append(batch.batch_id)
            out.ack.append(entry_id)

    async def _write_until_available(self, batches: list[Batch]) -> set[str] | None:
        """Write, retrying while the store is unavailable; None if told to stop meanwhile."""
        backoff = Backoff(cap_s=10.0)
        while True:
            try:
                return await self.sink.write(batches)
            except SinkUnavailable as exc:
                metrics.SINK_ERRORS.labels(*self.labels).inc()
                delay = backoff.next_s()
                log.warning("sink_unavailable", error=str(exc), retry_in_s=round(delay, 2))
                if self.stopping.is_set():
                    return None
                await self.waits.sleep(delay)
            except SinkDataError:
                metrics.SINK_ERRORS.labels(*self.labels).inc()
                raise

    async def _write_one_by_one(
        self,
        fresh: list[tuple[bytes, Batch]],
        out: Outcome,
        deliveries: dict[bytes, int],
        fields_of: dict[bytes, dict[bytes, bytes] | None],
    ) -> None:
        for entry_id, batch in fresh:
            try:
                already = await self._write_until_available([batch])
            except SinkDataError as exc:
                count = deliveries.get(entry_id, 1)
                log.warning(
                    "batch_rejected_by_sink",
                    batch_id=batch.batch_id,
                    deliveries=count,
                    error=str(exc),
                )
                # PoisonBatch (too wide, a name collision, a reused id) never gets better.
                if not exc.retriable or count >= self.settings.max_deliveries:
                    fields = fields_of.get(entry_id) or {}
                    out.dead.append(
                        self._dead(entry_id, fields, deliveries, exc.reason, str(exc), batch)
                    )
                    out.ack.append(entry_id)
                else:
                    out.retry += 1  # stays pending; re-read from the backlog after a pause
                continue
            if already is None:
                out.retry += 1
                continue
            (out.duplicates if batch.batch_id in already else out.processed).append(batch)
            out.mark.append(batch.batch_id)
            out.ack.append(entry_id)

    async def _finalize(self, out: Outcome) -> None:
        """Mark processed (the tenant's script), then dead-letter and ack (the stream's
        script); each retried until Redis takes it, the mark never after the ack."""
        marked = not out.mark
        backoff = Backoff()
        while not marked or out.ack or out.dead:
            try:
                if not marked:
                    await self.finalize.mark(int(time.time() * 1000), out.mark)
                    marked = True
                await self.finalize.settle(out.ack, out.dead)
                break
            except (RedisConnectionError, RedisTimeoutError) as exc:
                # Safe to retry: marking is idempotent, and a dead letter is written only
                # while its entry is pending, i.e. not by a script that already ran.
                metrics.REDIS_ERRORS.labels(*self.labels).inc()
                if self.stopping.is_set() and backoff.attempt > 3:
                    log.warning("finalize_abandoned", error=str(exc), entries=len(out.ack))
                    return  # entries stay pending; the sink inbox makes the retry safe
                await asyncio.sleep(backoff.next_s())
        if out.retry:  # the reader serves other streams meanwhile
            self.retry_later(min(5.0, 0.2 * 2 ** min(out.retry, 5)))

    async def _delivery_counts(self, entries: list[Entry]) -> dict[bytes, int]:
        """Times each redelivered entry has been delivered (one XPENDING over their range)."""
        ids = [entry_id for entry_id, _ in entries]
        rows = await self.redis.xpending_range(
            self.stream, self.group, min=min(ids, key=entry_id_key), max=max(ids, key=entry_id_key),
            count=len(ids), consumername=self.consumer,
        )  # fmt: skip
        return {_as_bytes(row["message_id"]): int(row["times_delivered"]) for row in rows}

    def _dead(
        self,
        entry_id: bytes,
        fields: dict[bytes, bytes],
        deliveries: dict[bytes, int],
        error_type: str,
        error: str,
        batch: Batch | None = None,
    ) -> DeadLetter:
        log.error("dead_lettered", entry_id=entry_id.decode(), reason=error_type, error=error[:300])
        payload = payload_of(fields)
        if payload is None:  # keep whatever the producer sent
            payload = b" ".join(k + b"=" + v for k, v in fields.items())
        return DeadLetter(
            original_id=entry_id.decode(),
            source_stream=self.stream,
            batch_id=batch.batch_id if batch else "",
            payload=payload,
            deliveries=deliveries.get(entry_id, 1),
            error_type=error_type,
            error=error,
            failed_at_ms=int(time.time() * 1000),
            consumer=self.consumer,
        )

    def _observe(self, out: Outcome, started: float) -> None:
        now = time.time()
        for outcome, batches in (("processed", out.processed), ("duplicate", out.duplicates)):
            if not batches:
                continue
            metrics.BATCHES.labels(*self.labels, outcome).inc(len(batches))
            metrics.RECORDS.labels(*self.labels, outcome).inc(sum(b.record_count for b in batches))
        latency = metrics.END_TO_END_SECONDS.labels(*self.labels)
        for batch in out.processed:
            if batch.emitted_at is not None:
                latency.observe(max(0.0, now - batch.emitted_at))
        for dead in out.dead:
            metrics.DEAD_LETTERED.labels(*self.labels, dead.error_type).inc()
        if out.dead:
            metrics.BATCHES.labels(*self.labels, "dead_lettered").inc(len(out.dead))
        if out.retry:
            metrics.BATCHES.labels(*self.labels, "failed").inc(out.retry)
        metrics.PROCESSING_SECONDS.labels(*self.labels).observe(time.perf_counter() - started)
        self.progress.add(
            batches=len(out.processed),
            records=sum(b.record_count for b in out.processed),
            duplicates=len(out.duplicates),
            dead_lettered=len(out.dead),
        )
        line = self.progress.due("records")
        if line is not None:
            log.info(
                "stream_progress", stream=self.stream, lag=self.lag, pending=self.pending, **line
            )
        if out.processed:
            log.debug(
                "batches_processed",
                batches=len(out.processed),
                records=sum(b.record_count for b in out.processed),
                duplicates=len(out.duplicates),
                first_batch_id=out.processed[0].batch_id,
            )


def _as_bytes(value: bytes | str | int) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
