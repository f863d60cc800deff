"""One sync run of one connector: read every table from its cursor, chunk, publish, checkpoint
(cutting and encoding the chunks is ``aam_bridge.chunks``; the checkpoint is ``SyncState``).

The run's identity is its start time: ``batch_id = {connector}_{run_start_ms}_{chunk}``, with
the chunk counter running from 1 across the run. Both are stored with the checkpoint in
``keys.sync_state`` (in the stream's slot) by the same script call as the XADDs, together with
the position to resume from: a page cursor and how many records after it are already
published. A run killed at any point resumes from there with the same ids: no gap, nothing
sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import structlog
from redis.exceptions import WatchError
from redis.typing import EncodableT, FieldT

from aam_bridge import metrics
from aam_bridge.chunks import Chunker, Encoder, Entry, Position
from aam_bridge.connectors.base import Connector, TableSpec, close_read
from aam_bridge.publisher import Publisher
from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.errors import LeaseLost
from aam_dcl.progress import Progress
from aam_dcl.redis_conn import RedisClient
from aam_dcl.streams import as_text

log = structlog.get_logger("aam_bridge.sync")

FLUSH_AFTER_S = 0.005  # how long cut chunks may wait for more before they are published


@dataclass(frozen=True, slots=True)
class SyncState:
    """The checkpoint: the current run (if any), where it is, and each table's cursor.

    A value: each step of a run makes the next state from the last one, and ``to_hash`` is
    the one place that turns a state into the hash written with the XADDs.
    """

    run_start_ms: int | None = None
    next_chunk: int = 1
    table_index: int = 0
    table_first_chunk: int | None = None  # the current table's first chunk in this run
    position: Position = field(default_factory=Position)  # where the current table resumes
    cursors: Mapping[str, str] = field(default_factory=dict)  # table -> cursor of its last run
    runs: int = 0
    full_requested: str | None = None  # an operator's ``aam-dcl sync --full``, as stored

    @classmethod
    def from_hash(cls, raw: Mapping[bytes | str, bytes | str]) -> SyncState:
        text = {as_text(k): as_text(v) for k, v in raw.items()}
        run_start = text.get("run_start_ms", "")
        return cls(
            run_start_ms=int(run_start) if run_start else None,
            next_chunk=int(text.get("next_chunk", "1")),
            table_index=int(text.get("table_index", "0")),
            table_first_chunk=int(text["table_first_chunk"])
            if text.get("table_first_chunk")
            else None,
            position=Position(text.get("pos_cursor") or None, int(text.get("pos_skip", "0"))),
            cursors={k[7:]: v for k, v in text.items() if k.startswith("cursor:") and v},
            runs=int(text.get("runs", "0")),
            full_requested=text.get(keys.SYNC_REQUEST_FULL) or None,
        )

    def to_hash(self) -> dict[FieldT, EncodableT]:
        out: dict[FieldT, EncodableT] = {
            "run_start_ms": self.run_start_ms or "",
            "next_chunk": self.next_chunk,
            "table_index": self.table_index,
            "table_first_chunk": self.table_first_chunk or "",
            "pos_cursor": self.position.cursor or "",
            "pos_skip": self.position.skip,
            "runs": self.runs,
        }
        out.update({f"cursor:{table}": cursor for table, cursor in self.cursors.items()})
        return out

    def started(self, run_start_ms: int, tables: Sequence[TableSpec]) -> SyncState:
        """A new run from the first table's cursor; from no cursor at all when an operator
        asked for a full sync (the cursors are written empty: HSET keeps absent fields)."""
        cursors = {t: "" for t in self.cursors} if self.full_requested else self.cursors
        return replace(
            self, run_start_ms=run_start_ms, next_chunk=1, table_index=0, table_first_chunk=1,
            cursors=cursors, position=self._start_of(tables, 0, cursors),
        )  # fmt: skip

    def after(self, entry: Entry) -> SyncState:
        """The state once ``entry`` (and every entry before it) is published."""
        return replace(self, next_chunk=entry.next_chunk, position=entry.resume)

    def table_done(
        self, tables: Sequence[TableSpec], cursor: str | None, next_chunk: int
    ) -> SyncState:
        """The current table read to ``cursor``: on to the next one, from its own cursor."""
        cursors = dict(self.cursors)
        if cursor is not None:
            cursors[tables[self.table_index].name] = cursor
        index = self.table_index + 1
        return replace(
            self, next_chunk=next_chunk, table_index=index, cursors=cursors,
            table_first_chunk=next_chunk, position=self._start_of(tables, index, cursors),
        )  # fmt: skip

    def finished(self) -> SyncState:
        return replace(self, run_start_ms=None, runs=self.runs + 1)

    @staticmethod
    def _start_of(tables: Sequence[TableSpec], index: int, cursors: Mapping[str, str]) -> Position:
        return Position(cursors.get(tables[index].name) or None if index < len(tables) else None)


@dataclass
class RunResult:
    run_start_ms: int
    chunks: int
    records: int
    resumed: bool


class SyncRunner:
    def __init__(self, settings: Settings, client: RedisClient, connector: Connector) -> None:
        self.settings = settings
        self.redis = client
        self.connector = connector
        self.name = connector.config.name
        self.publisher = Publisher(settings, client, self.name)
        self.state_key = keys.sync_state(settings.tenant_id, self.name)
        self.labels = (settings.tenant_id, self.name)

    async def load_state(self) -> SyncState:
        return SyncState.from_hash(await self.redis.hgetall(self.state_key))

    async def _save(self, state: SyncState) -> None:
        await self.publisher.save(state.to_hash())  # fenced: a stale holder writes nothing

    async def run_once(self) -> RunResult:
        """One whole run (or the rest of an interrupted one)."""
        await self.publisher.ensure_group()
        tables = await self.connector.tables()
        started = time.time()
        state, resumed = await self._begin(tables)
        run_start_ms = state.run_start_ms
        assert run_start_ms is not None
        first_chunk = state.next_chunk
        log.info(
            "sync_run_started" if not resumed else "sync_run_resumed",
            run_start_ms=run_start_ms,
            next_chunk=state.next_chunk,
            table_index=state.table_index,
        )
        records = 0
        while state.table_index < len(tables):
            published, state = await self._sync_table(tables, state)
            records += published
            await self._save(state)
        result = RunResult(run_start_ms, state.next_chunk - first_chunk, records, resumed)
        await self._save(state.finished())
        await self.record_outcome("succeeded", started, records=records)
        return result

    async def _begin(self, tables: Sequence[TableSpec]) -> tuple[SyncState, bool]:
        """The state to run from and whether it resumes: the interrupted run's, or a new
        run's, written together with taking the operator's full-sync request if there is one
        (under WATCH: a request made meanwhile is not lost, it is read again). Fenced too: the
        fence is watched, and a token no longer current raises LeaseLost."""
        token = self.publisher.token
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                await pipe.watch(self.state_key, self.publisher.fence_key)
                if (
                    token is not None
                    and await pipe.get(self.publisher.fence_key) != str(token).encode()
                ):
                    metrics.FENCED_WRITES.labels(*self.labels).inc()
                    raise LeaseLost(f"lease token {token} of {self.name} is no longer current")
                state = SyncState.from_hash(await pipe.hgetall(self.state_key))
                if state.run_start_ms is not None:
                    return state, True
                state = state.started(int(time.time() * 1000), tables)
                pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                pipe.hset(self.state_key, mapping=state.to_hash())
                if state.full_requested:
                    pipe.hdel(self.state_key, keys.SYNC_REQUEST_FULL)
                try:
                    await pipe.execute()
                except WatchError:
                    continue
            if state.full_requested:
                log.info("full_sync_requested", requested_ms=state.full_requested)
            return state, False

    async def record_outcome(
        self, status: str, started: float, *, records: int = 0, error: str = ""
    ) -> None:
        """The last run's outcome, for ``aam-dcl tables``."""
        await self.redis.hset(
            self.state_key,
            mapping={
                "last_run_status": status,
                "last_run_started_ms": int(started * 1000),
                "last_run_duration_ms": int((time.time() - started) * 1000),
                "last_run_records": records,
                "last_run_error": error[:500],
            },
        )

    async def last_success_end_s(self) -> float | None:
        """When the last run ended (epoch s), if it succeeded and no run is in progress."""
        text = {
            as_text(k): as_text(v) for k, v in (await self.redis.hgetall(self.state_key)).items()
        }
        if text.get("run_start_ms") or text.get("last_run_status") != "succeeded":
            return None
        started_ms = int(text.get("last_run_started_ms") or 0)
        return (started_ms + int(text.get("last_run_duration_ms") or 0)) / 1000

    async def take_run_request(self) -> bool:
        """True if an operator asked for a run now (``aam-dcl sync --now``); takes it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(self.state_key)
            fields = await pipe.hgetall(self.state_key)
            if keys.SYNC_REQUEST_NOW.encode() not in fields:
                return False
            pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            pipe.hdel(self.state_key, keys.SYNC_REQUEST_NOW)
            try:
                await pipe.execute()
            except WatchError:
                return False  # changed meanwhile: seen again at the next look
        return True

    async def _sync_table(
        self, tables: Sequence[TableSpec], state: SyncState
    ) -> tuple[int, SyncState]:
        """Publish the current table's records from ``state.position`` on; returns how many,
        and the state with the table done.

        Chunks are cut as pages arrive and go out up to ``max_entries_per_call`` entries per
        publish call, each call with the checkpoint of its last entry: few round trips, all or
        nothing. A chunk waits at most ``FLUSH_AFTER_S`` (plus one page read) for company.
        While one call is in flight the next pages are read, cut and encoded.
        """
        assert state.run_start_ms is not None
        table = tables[state.table_index]
        chunker = Chunker(state.position, self.settings.batch_chunk_size)
        encoder = Encoder(
            self.settings, self.connector.config, table, state.run_start_ms, state.next_chunk
        )
        step = self.publisher.max_entries_per_call
        ready: list[Entry] = []
        ready_at = 0.0
        published = 0
        in_flight: asyncio.Task[None] | None = None  # one call at a time, overlapping our work
        progress = Progress(self.settings.progress_interval_s)
        resume = state.position  # where the last chunk cut resumes

        async def flush() -> None:
            nonlocal published, in_flight
            for i in range(0, len(ready), step):
                call = ready[i : i + step]
                checkpoint = state.after(call[-1]).to_hash()
                if in_flight is not None:
                    await in_flight  # calls stay in order: each checkpoint follows the last
                in_flight = asyncio.create_task(self._send(call, checkpoint))
                published += sum(e.records for e in call)
            ready.clear()

        pages = self.connector.read(table, state.position.cursor)
        try:
            async for page in pages:
                chunks = chunker.cut(page)
                if chunks and not ready:
                    ready_at = time.monotonic()
                for chunk in chunks:
                    ready += encoder.encode(chunk)
                    resume = chunk.end
                progress.add(pages=1, records=chunker.taken)
                line = progress.due("records")
                if line is not None:
                    log.info("sync_progress", table=table.name, cursor=chunker.cursor, **line)
                if len(ready) >= step or (ready and time.monotonic() - ready_at >= FLUSH_AFTER_S):
                    await flush()
            for chunk in chunker.rest():
                ready += encoder.encode(chunk)
                resume = chunk.end
            if self._completes_full_read(table, state, encoder):
                assert state.table_first_chunk is not None
                ready.append(encoder.marker(state.table_first_chunk, resume))
            await flush()
            if in_flight is not None:
                await in_flight
        finally:
            await close_read(pages)  # a read left part-way (a failure, a stop)
            if in_flight is not None and not in_flight.done():
                # Failing or cancelled: the call either ran or not; the run resumes from Redis.
                in_flight.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await in_flight
        return published, state.table_done(tables, chunker.cursor, encoder.next_chunk)

    def _completes_full_read(self, table: TableSpec, state: SyncState, encoder: Encoder) -> bool:
        """Whether the table's read this run covered every row, so its end gets a completion
        marker (the store then deletes the rows the run did not write)."""
        if not self.connector.reads_in_full(table, state.cursors.get(table.name) or None):
            return False
        if state.table_first_chunk is None:  # a run begun by an older bridge: not known
            return False
        if encoder.rejected:
            log.warning(
                "full_refresh_skipped", table=table.name, rejected_records=encoder.rejected,
                reason="records were rejected: deleting what the run did not write would "
                "delete them",
            )  # fmt: skip
            return False
        return True

    async def _send(self, entries: list[Entry], checkpoint: dict[FieldT, EncodableT]) -> None:
        await self.publisher.publish([e.payload for e in entries], checkpoint)
        metrics.BATCHES_PUBLISHED.labels(*self.labels).inc(len(entries))
        metrics.RECORDS_PUBLISHED.labels(*self.labels).inc(sum(e.records for e in entries))
