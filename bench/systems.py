"""The systems the transport case compares, each as a publisher role and a consumer role.

- ``aam-dcl``: the real bridge path (SyncRunner → Publisher: schema inference, encode, MULTI
  XADD + checkpoint) and the real worker (dcl_worker.worker.Worker with the null:// sink).
- ``redis-py``: a plain loop: one XADD per entry; one XREADGROUP (COUNT 1), SADD, XACK per
  entry; stdlib json.
- ``faststream``: FastStream's Redis Streams publisher and a consumer-group subscriber
  (COUNT 100 per read, like DCL_READ_COUNT), acked by FastStream after the handler.
- ``limit``: the practical limit: orjson, XADDs pipelined 100 per round trip; XREADGROUP
  COUNT 100, then one pipeline of SADD (all batch ids) + XACK (all entry ids).

A role's ``setup`` is untimed (connect, build data); ``run`` is timed and returns when its
work is done: every entry published, or every record consumed *and acknowledged*.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from workload import CONNECTOR, FIELDS, GROUP_CONSUMER, TENANT, PagesConnector, Workload

from aam_dcl import keys
from aam_dcl.config import Settings

STREAM = keys.stream(TENANT, CONNECTOR)
GROUP = keys.group(TENANT)
PROCESSED = keys.processed_set(TENANT)
PIPELINE_DEPTH = 100
READ_COUNT = 100
POLL_S = 0.002


class Role(Protocol):
    async def setup(self) -> None: ...
    async def run(self) -> dict[str, Any]: ...
    async def teardown(self) -> None: ...


def records_of(body: dict[str, Any]) -> int:
    return sum(len(t.get("records") or ()) for t in body["tables"])


class _Client:
    """A plain redis-py asyncio client, as the peers use it."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.workload = Workload(params["records"], params["chunk"])
        self.redis = aioredis.Redis.from_url(params["redis_url"])

    async def setup(self) -> None:
        await self.redis.ping()

    async def teardown(self) -> None:
        await self.redis.aclose()


# --- aam-dcl -------------------------------------------------------------------------------


def product_settings(params: dict[str, Any], **extra: Any) -> Settings:
    """Settings for the real daemons; an AAM_PROFILE in the environment still applies."""
    return Settings(
        redis_url=params["redis_url"],
        tenant_id=TENANT,
        consumer_name=GROUP_CONSUMER,
        metrics_port=0,
        log_level="WARNING",
        log_format="console",
        **extra,
    )


class AamBridge:
    """The bridge's publishing path: one sync run over pre-built pages."""

    def __init__(self, params: dict[str, Any]) -> None:
        extra = {"stream_maxlen": params["maxlen"]} if params.get("maxlen") else {}
        if params.get("profile") is None:
            extra["batch_chunk_size"] = params["chunk"]
        self.settings = product_settings(params, **extra)
        workload = Workload(params["records"], self.settings.batch_chunk_size)
        self.connector = PagesConnector(workload.pages(), params.get("pages_per_s"))

    async def setup(self) -> None:
        from aam_bridge.sync import SyncRunner
        from aam_dcl.redis_conn import connect

        self.redis = await connect(self.settings)
        self.runner = SyncRunner(self.settings, self.redis, self.connector)
        await self.redis.ping()

    async def run(self) -> dict[str, Any]:
        result = await self.runner.run_once()
        return {"records": result.records, "entries": result.chunks}

    async def teardown(self) -> None:
        await self.redis.aclose()


class AamWorker:
    """The real worker (null:// sink unless ``sink_url``) until every record is processed.

    Done is read from the worker's own counter dcl_worker_records_total{outcome=processed},
    which it increments after the Lua step that acks. With ``latency`` the end-to-end
    latency the worker observes for each batch (emitted_at → after XACK) is recorded too.
    """

    def __init__(self, params: dict[str, Any]) -> None:
        from dcl_worker import metrics
        from dcl_worker.sinks.registry import create_sink

        self.params = params
        self.settings = product_settings(
            params,
            sink_url=params.get("sink_url", "null://"),
            discovery_interval_s=0.05,
            block_ms=params.get("block_ms", 2000),
        )
        self.sink = create_sink(self.settings.sink_url, TENANT)
        self.stopping = asyncio.Event()
        self.labels = {"tenant": TENANT, "connector": CONNECTOR, "outcome": "processed"}
        self.records_metric = metrics.RECORDS
        self.latencies_s: list[float] = []
        if params.get("latency"):
            child = metrics.END_TO_END_SECONDS.labels(TENANT, CONNECTOR)
            observe = child.observe

            def record(value: float, exemplar: Any = None) -> None:
                self.latencies_s.append(value)
                observe(value, exemplar)

            child.observe = record  # type: ignore[method-assign]  # bench-only tap

    def processed(self) -> float:
        # This metric's own samples only: REGISTRY.get_sample_value would collect every
        # metric (process stats from /proc included), ~0.5 ms a poll taken from the worker.
        for sample in self.records_metric.collect()[0].samples:
            if sample.name == "dcl_worker_records_total" and sample.labels == self.labels:
                return sample.value
        return 0.0

    async def setup(self) -> None:
        from aam_dcl.redis_conn import connect
        from dcl_worker.worker import Worker

        self.redis = await connect(self.settings)
        self.worker = Worker(self.settings, self.redis, self.sink, self.stopping)
        await self.redis.ping()
        await self.sink.open()  # Worker.run opens it again: a no-op for an open sink

    async def run(self) -> dict[str, Any]:
        task = asyncio.create_task(self.worker.run())
        target = self.params["records"]
        while self.processed() < target:
            if task.done():
                task.result()
                raise RuntimeError("the worker stopped before processing every record")
            await asyncio.sleep(POLL_S)
        ended = time.perf_counter()
        self.stopping.set()
        await asyncio.wait_for(task, 30)
        out: dict[str, Any] = {"records": int(self.processed()), "ended": ended}
        if self.params.get("latency"):
            out["latencies_s"] = self.latencies_s
        return out

    async def teardown(self) -> None:
        await self.sink.close()
        await self.redis.aclose()


# --- plain redis-py ------------------------------------------------------------------------


class PlainPublisher(_Client):
    async def setup(self) -> None:
        await super().setup()
        self.bodies = self.workload.bodies()

    async def run(self) -> dict[str, Any]:
        maxlen = self.params["maxlen"]
        for body in self.bodies:
            payload = json.dumps(body, separators=(",", ":"))
            await self.redis.xadd(STREAM, {"payload": payload}, maxlen=maxlen, approximate=True)
        return {"entries": len(self.bodies)}


class PlainConsumer(_Client):
    async def run(self) -> dict[str, Any]:
        done = 0
        while done < self.workload.records:
            reply = await self.redis.xreadgroup(
                GROUP, GROUP_CONSUMER, {STREAM: ">"}, count=1, block=100
            )
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    body = json.loads(fields[b"payload"])
                    await self.redis.sadd(PROCESSED, body["batch_id"])
                    await self.redis.xack(STREAM, GROUP, entry_id)
                    done += records_of(body)
        return {"records": done}


# --- pipelined orjson: the practical limit ------------------------------------------------


class LimitPublisher(PlainPublisher):
    async def run(self) -> dict[str, Any]:
        maxlen = self.params["maxlen"]
        for start in range(0, len(self.bodies), PIPELINE_DEPTH):
            pipe = self.redis.pipeline(transaction=False)
            for body in self.bodies[start : start + PIPELINE_DEPTH]:
                pipe.xadd(STREAM, {"payload": orjson.dumps(body)}, maxlen=maxlen, approximate=True)
            await pipe.execute()
        return {"entries": len(self.bodies)}


class LimitConsumer(_Client):
    async def run(self) -> dict[str, Any]:
        done = 0
        while done < self.workload.records:
            reply = await self.redis.xreadgroup(
                GROUP, GROUP_CONSUMER, {STREAM: ">"}, count=READ_COUNT, block=100
            )
            for _, entries in reply or ():
                ids, batch_ids = [], []
                for entry_id, fields in entries:
                    body = orjson.loads(fields[b"payload"])
                    ids.append(entry_id)
                    batch_ids.append(body["batch_id"])
                    done += records_of(body)
                pipe = self.redis.pipeline(transaction=False)
                pipe.sadd(PROCESSED, *batch_ids)
                pipe.xack(STREAM, GROUP, *ids)
                await pipe.execute()
        return {"records": done}


# --- FastStream ----------------------------------------------------------------------------


class FastStreamPublisher(PlainPublisher):
    async def setup(self) -> None:
        from faststream.redis import RedisBroker

        await super().setup()
        self.broker = RedisBroker(self.params["redis_url"], logger=None)
        await self.broker.connect()

    async def run(self) -> dict[str, Any]:
        maxlen = self.params["maxlen"]
        for body in self.bodies:
            await self.broker.publish(body, stream=STREAM, maxlen=maxlen)
        return {"entries": len(self.bodies)}

    async def teardown(self) -> None:
        await self.broker.stop()
        await super().teardown()


class FastStreamConsumer(_Client):
    """A FastStream subscriber in the group; FastStream decodes the JSON and acks."""

    async def setup(self) -> None:
        from faststream.redis import RedisBroker, StreamSub

        await super().setup()
        self.broker = RedisBroker(self.params["redis_url"], logger=None)
        self.done = 0
        self.all_seen = asyncio.Event()
        target = self.workload.records

        @self.broker.subscriber(
            stream=StreamSub(STREAM, group=GROUP, consumer=GROUP_CONSUMER, max_records=READ_COUNT)
        )
        async def handle(body: dict[str, Any]) -> None:
            self.done += records_of(body)
            if self.done >= target:
                self.all_seen.set()

        await self.broker.connect()

    async def run(self) -> dict[str, Any]:
        await self.broker.start()
        await self.all_seen.wait()
        # FastStream acks after the handler returns: wait for the last ack too (polling
        # Redis: there is nothing in-process to wait on).
        while (await self.redis.xpending(STREAM, GROUP))["pending"]:  # noqa: ASYNC110
            await asyncio.sleep(POLL_S)
        return {"records": self.done, "ended": time.perf_counter()}

    async def teardown(self) -> None:
        await self.broker.stop()
        await super().teardown()


class RawCopy:
    """The PostgreSQL baseline: asyncpg ``copy_records_to_table`` of the same rows.

    Like the worker it sends ``READ_COUNT × chunk`` rows per call into a table of the same
    column types; building the tuples and parsing the datetimes is part of the timing.
    """

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.workload = Workload(params["records"], params["chunk"])
        self.table = "raw_copy_pk" if params.get("keyed") else "raw_copy"

    async def setup(self) -> None:
        import asyncpg

        self.rows = self.workload.rows()
        self.con = await asyncpg.connect(self.params["pg_dsn"], server_settings={"timezone": "UTC"})
        key = " PRIMARY KEY" if self.params.get("keyed") else ""
        await self.con.execute(
            f"CREATE TABLE {self.table} (id text{key}, name text, stage text, "
            "amount double precision, probability bigint, is_closed boolean, "
            "close_date timestamptz)"
        )

    async def run(self) -> dict[str, Any]:
        get = itemgetter(*FIELDS)
        per_call = READ_COUNT * self.workload.chunk
        for start in range(0, len(self.rows), per_call):
            records = []
            for row in self.rows[start : start + per_call]:
                values = get(row)
                records.append((*values[:6], dt.datetime.fromisoformat(values[6])))
            await self.con.copy_records_to_table(self.table, records=records, columns=FIELDS)
        return {"records": len(self.rows)}

    async def teardown(self) -> None:
        await self.con.close()


TRANSPORT = ("aam-dcl", "faststream", "redis-py", "limit")
ROLES: dict[tuple[str, str], Callable[[dict[str, Any]], Role]] = {
    ("aam-dcl", "publish"): AamBridge,
    ("aam-dcl", "consume"): AamWorker,
    ("redis-py", "publish"): PlainPublisher,
    ("redis-py", "consume"): PlainConsumer,
    ("faststream", "publish"): FastStreamPublisher,
    ("faststream", "consume"): FastStreamConsumer,
    ("limit", "publish"): LimitPublisher,
    ("limit", "consume"): LimitConsumer,
    ("raw-copy", "publish"): RawCopy,
}
LABELS = {
    "aam-dcl": "aam-dcl (bridge / worker, null sink)",
    "faststream": "FastStream Redis Streams",
    "redis-py": "plain redis-py (per-entry calls, json)",
    "limit": "pipelined orjson redis-py (limit)",
}


def make_role(system: str, role: str, params: dict[str, Any]) -> Role:
    return ROLES[system, role](params)
