"""One sync run of one connector: read every table from its cursor, chunk, publish, checkpoint.

The run's identity is its start time: ``batch_id = {connector}_{run_start_ms}_{chunk}``, with
the chunk counter running from 1 across the run. Both are stored with the checkpoint in
``aam:sync:{tenant}:{connector}`` by the same script call as the XADDs, together with the position
to resume from: a page cursor and how many records after it are already published. A run
killed at any point resumes from there with the same ids: no gap, nothing sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog
from redis.typing import EncodableT, FieldT

from aam_bridge import metrics
from aam_bridge.connectors.base import Connector, TableSpec
from aam_bridge.publisher import Publisher
from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.messages import Batch, Record, encode
from aam_dcl.progress import Progress
from aam_dcl.schema import table_batch
from aam_dcl.streams import as_text

log = structlog.get_logger("aam_bridge.sync")

FLUSH_AFTER_S = 0.005  # how long cut chunks may wait for more before they are published


@dataclass
class SyncState:
    """The checkpoint: the current run (if any) and each table's committed cursor."""

    run_start_ms: int | None = None
    next_chunk: int = 1
    table_index: int = 0
    pos_cursor: str | None = None  # resume reading the current table from here ...
    pos_skip: int = 0  # ... skipping this many records already published
    cursors: dict[str, str] = field(default_factory=dict)  # table -> cursor of its last run
    runs: int = 0

    @classmethod
    def from_hash(cls, raw: Mapping[bytes | str, bytes | str]) -> SyncState:
        text = {as_text(k): as_text(v) for k, v in raw.items()}
        run_start = text.get("run_start_ms", "")
        return cls(
            run_start_ms=int(run_start) if run_start else None,
            next_chunk=int(text.get("next_chunk", "1")),
            table_index=int(text.get("table_index", "0")),
            pos_cursor=text.get("pos_cursor") or None,
            pos_skip=int(text.get("pos_skip", "0")),
            cursors={k[7:]: v for k, v in text.items() if k.startswith("cursor:") and v},
            runs=int(text.get("runs", "0")),
        )

    def to_hash(self) -> dict[FieldT, EncodableT]:
        out: dict[FieldT, EncodableT] = {
            "run_start_ms": self.run_start_ms or "",
            "next_chunk": self.next_chunk,
            "table_index": self.table_index,
            "pos_cursor": self.pos_cursor or "",
            "pos_skip": self.pos_skip,
            "runs": self.runs,
        }
        out.update({f"cursor:{table}": cursor for table, cursor in self.cursors.items()})
        return out


@dataclass
class RunResult:
    run_start_ms: int
    chunks: int
    records: int
    resumed: bool


class SyncRunner:
    def __init__(self, settings: Settings, client: aioredis.Redis, connector: Connector) -> None:
        self.settings = settings
        self.redis = client
        self.connector = connector
        self.name = connector.config.name
        self.publisher = Publisher(settings, client, self.name)
        self.state_key = keys.sync_state(settings.tenant_id, self.name)
        self.labels = (settings.tenant_id, self.name)

    async def load_state(self) -> SyncState:
        return SyncState.from_hash(await self.redis.hgetall(self.state_key))

    async def run_once(self) -> RunResult:
        """One whole run (or the rest of an interrupted one)."""
        await self.publisher.ensure_group()
        state = await self.load_state()
        tables = await self.connector.tables()
        resumed = state.run_start_ms is not None
        if state.run_start_ms is None:
            state.run_start_ms = int(time.time() * 1000)
            state.next_chunk = 1
            state.table_index = 0
            state.pos_cursor = state.cursors.get(tables[0].name) if tables else None
            state.pos_skip = 0
            await self.redis.hset(self.state_key, mapping=state.to_hash())
        first_chunk = state.next_chunk
        log.info(
            "sync_run_started" if not resumed else "sync_run_resumed",
            run_start_ms=state.run_start_ms,
            next_chunk=state.next_chunk,
            table_index=state.table_index,
        )
        records = 0
        while state.table_index < len(tables):
            records += await self._sync_table(tables[state.table_index], state)
            state.table_index += 1
            nxt = tables[state.table_index].name if state.table_index < len(tables) else None
            state.pos_cursor = state.cursors.get(nxt) if nxt else None
            state.pos_skip = 0
            await self.redis.hset(self.state_key, mapping=state.to_hash())
        result = RunResult(state.run_start_ms, state.next_chunk - first_chunk, records, resumed)
        state.run_start_ms = None
        state.runs += 1
        await self.redis.hset(self.state_key, mapping=state.to_hash())
        return result

    async def _sync_table(self, table: TableSpec, state: SyncState) -> int:
        """Publish the table's records after ``state.pos_cursor``; returns records published.

        Chunks are cut as pages arrive and go out up to ``max_entries_per_call`` per publish call,
        each call with the checkpoint of its last chunk: few round trips, all or nothing.
        A chunk waits at most ``FLUSH_AFTER_S`` (plus one page read) for company. While one
        call is in flight the next pages are read, cut and encoded.
        """
        chunk_size = self.settings.batch_chunk_size
        step = self.publisher.max_entries_per_call
        skip = state.pos_skip
        base, since = state.pos_cursor, state.pos_skip  # resume point: cursor + records after it
        buffer: list[Record] = []
        ready: list[tuple[list[Record], tuple[str | None, int]]] = []  # chunk, its resume point
        ready_at = 0.0
        last_cursor = state.pos_cursor
        published = 0
        in_flight: asyncio.Task[None] | None = None  # one call at a time, overlapping our work
        progress = Progress(self.settings.progress_interval_s)

        async def flush() -> None:
            nonlocal published, in_flight
            for i in range(0, len(ready), step):
                group = [chunk for chunk, _ in ready[i : i + step]]
                state.pos_cursor, state.pos_skip = ready[i : i + step][-1][1]
                payloads = self._encode(table, group, state)
                checkpoint = state.to_hash()
                if in_flight is not None:
                    await in_flight  # calls stay in order: each checkpoint follows the last
                in_flight = asyncio.create_task(self._send(payloads, checkpoint, group))
                published += sum(map(len, group))
            ready.clear()

        try:
            async for page in self.connector.read(table, state.pos_cursor):
                records = page.records
                if skip:
                    dropped = min(skip, len(records))
                    records = records[dropped:]
                    skip -= dropped
                buffer.extend(records)
                full = len(buffer) - len(buffer) % chunk_size
                if full and not ready:
                    ready_at = time.monotonic()
                for i in range(0, full, chunk_size):
                    since += chunk_size
                    ready.append((buffer[i : i + chunk_size], (base, since)))
                buffer = buffer[full:]
                if page.cursor is not None:
                    last_cursor = page.cursor
                progress.add(pages=1, records=len(records))
                line = progress.due("records")
                if line is not None:
                    log.info("sync_progress", table=table.name, cursor=last_cursor, **line)
                if not buffer and skip == 0:
                    # Everything up to this page is cut: later chunks resume from its cursor.
                    base, since = last_cursor, 0
                if len(ready) >= step or (ready and time.monotonic() - ready_at >= FLUSH_AFTER_S):
                    await flush()
            if buffer:
                since += len(buffer)
                ready.append((buffer, (base, since)))
            await flush()
            if in_flight is not None:
                await in_flight
        finally:
            if in_flight is not None and not in_flight.done():
                # Failing or cancelled: the call either ran or not; the run resumes from Redis.
                in_flight.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await in_flight
        if last_cursor is not None:
            state.cursors[table.name] = last_cursor
        return published

    def _encode(
        self, table: TableSpec, chunks: list[list[Record]], state: SyncState
    ) -> list[bytes]:
        """One entry per chunk, numbered on from ``state.next_chunk`` (which it advances)."""
        assert state.run_start_ms is not None
        payloads = []
        for records in chunks:
            batch = Batch(
                batch_id=keys.batch_id(self.name, state.run_start_ms, state.next_chunk),
                connector=self.name,
                connector_config_id=self.connector.config.connector_config_id,
                tables=[
                    table_batch(
                        table.name,
                        records,
                        primary_key=table.primary_key,
                        max_samples=self.settings.max_samples_per_table,
                    )
                ],
                tenant_id=self.settings.tenant_id,
            )
            payloads.append(encode(batch))
            state.next_chunk += 1
        return payloads

    async def _send(
        self,
        payloads: list[bytes],
        checkpoint: dict[FieldT, EncodableT],
        chunks: list[list[Record]],
    ) -> None:
        await self.publisher.publish(payloads, checkpoint)
        metrics.BATCHES_PUBLISHED.labels(*self.labels).inc(len(chunks))
        metrics.RECORDS_PUBLISHED.labels(*self.labels).inc(sum(map(len, chunks)))
