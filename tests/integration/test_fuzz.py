"""Fuzzing the worker's input: whatever a producer XADDs, nothing stalls.

A pure property of ``aam_dcl.messages.decode`` (any bytes: a Batch or a MessageError, never
anything else), then an in-process worker fed arbitrary bytes, arbitrary JSON and near-valid
batches (wrong types, missing and extra keys, huge strings, deep nesting, bad column types,
records that are not objects, oversize payloads) mixed with valid batches: every valid batch
lands once, every bad entry is dead-lettered with its reason, nothing stays pending and no
loop crashes. Each example uses its own stream, so one example's poison cannot hide another's.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from aam_dcl import keys
from aam_dcl.config import Settings
from aam_dcl.errors import MessageError
from aam_dcl.messages import Batch, decode, encode
from aam_dcl.schema import table_batch
from tests.integration.test_redis_faults import (
    TENANT,
    drained,
    fault_settings,
    pending_count,
    recorded_logs,
    worker_task,
)

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_DELIVERIES = 2
EXAMPLE_TIMEOUT_S = 20.0
DEEP = (20, 300, 1100)  # fine; deeper than orjson writes (254); deeper than it reads (1024)
BAD_REASONS = {"malformed_json", "wrong_shape", "oversize"}

UNIT = settings(max_examples=400, deadline=None, database=None)
# The worker tests let hypothesis *generate* examples (a sync @given that only collects them),
# then feed them all to one worker in the async test. A failing async @given test sent the
# hypothesis pytest plugin down its failure-patch path, which on CPython 3.11 died with an
# INTERNALERROR ("AST constructor recursion depth mismatch") that aborted the whole session.
# Shrinking would replay a worker round trip per step anyway; the failure message names the
# offending entry instead.
GENERATE = settings(
    max_examples=40,  # one stream per example: stay well under the worker's 64 connections
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_ids = itertools.count(1)

# --- strategies -----------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
non_objects = json_values.filter(lambda v: not isinstance(v, dict))

# Where a near-valid batch can be broken: each dict of the template and the keys it holds.
_FIELDS: dict[tuple[Any, ...], list[str]] = {
    (): ["batch_id", "connector", "connector_config_id", "tables", "format_version",
         "emitted_at", "tenant_id", "final"],
    ("tables", 0): ["name", "schema", "samples", "stats", "records"],
    ("tables", 0, "schema"): ["columns", "primary_key"],
    ("tables", 0, "schema", "columns", 0): ["name", "type"],
    ("tables", 0, "records", 0): ["id", "name", "amount", "stage"],
    ("tables", 0, "stats"): ["total_count", "sample_count"],
}  # fmt: skip
_SPOTS = [(path, key) for path, names in _FIELDS.items() for key in names]


def _deep_marker(depth: int) -> str:
    """Stands in for a value nested ``depth`` lists deep: orjson cannot write more than 254."""
    return f"__deep_{depth}__"


def _expand_deep(raw: bytes, depth: int) -> bytes:
    nested = b"[" * depth + b'"bottom"' + b"]" * depth
    return raw.replace(orjson.dumps(_deep_marker(depth)), nested)


def _at(body: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        body = body[step]
    return body


def template(connector: str, records: int = 4) -> Batch:
    """A valid batch with a fresh id; record ids are unique across the whole run."""
    n = next(_ids)
    rows = [
        {"id": n * 1000 + i, "name": f"deal {n}-{i}", "amount": i * 2.5, "stage": "won"}
        for i in range(records)
    ]
    return Batch(
        batch_id=f"{connector}_{n}_1",
        connector=connector,
        connector_config_id=f"{connector}-001",
        tables=[table_batch("deals", rows, primary_key=["id"], max_samples=1)],
        tenant_id=TENANT,
    )


@st.composite
def mutation(draw: st.DrawFn) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """One way of breaking a batch body (applied in place; may leave it valid)."""
    kind = draw(
        st.sampled_from(
            ["wrong_type", "missing_key", "extra_key", "huge_string", "deep_nesting",
             "bad_column_type", "record_not_object", "table_not_object", "oversize"]
        )
    )  # fmt: skip
    path, key = draw(st.sampled_from(_SPOTS))
    value = draw(json_values)
    extra = draw(st.text(max_size=8))
    size = draw(st.sampled_from([10_000, 40_000, MAX_PAYLOAD_BYTES + 1]))
    depth = draw(st.sampled_from(DEEP))
    column_type = draw(st.text(max_size=10) | json_values)
    not_object = draw(non_objects)

    def apply(body: dict[str, Any]) -> dict[str, Any]:
        try:
            if kind == "wrong_type":
                _at(body, path)[key] = value
            elif kind == "missing_key":
                _at(body, path).pop(key, None)
            elif kind == "extra_key":
                _at(body, path)[extra] = value
            elif kind == "huge_string":
                _at(body, path)[key] = "x" * size
            elif kind == "deep_nesting":
                _at(body, ("tables", 0, "records", 0))["deep"] = _deep_marker(depth)
            elif kind == "bad_column_type":
                _at(body, ("tables", 0, "schema", "columns", 0))["type"] = column_type
            elif kind == "record_not_object":
                _at(body, ("tables", 0, "records"))[-1] = not_object
            elif kind == "table_not_object":
                body["tables"] = [*body.get("tables", []), not_object]
            else:
                body["padding"] = "x" * MAX_PAYLOAD_BYTES
        except (KeyError, IndexError, TypeError, AttributeError):
            pass  # an earlier mutation removed or replaced what this one would break
        return body

    return apply


class Payload(bytes):
    """Payload bytes whose repr stays short (hypothesis prints failing examples). orjson reads
    only exact bytes: ``plain()`` before decoding, as Redis hands the worker plain bytes."""

    def __repr__(self) -> str:
        if len(self) <= 600:
            return f"Payload({bytes(self)!r})"
        return f"Payload({len(self)} bytes: {self[:400]!r} ... {self[-150:]!r})"


@st.composite
def near_valid(draw: st.DrawFn, connector: str = "fuzzm") -> bytes:
    """A valid batch's JSON with one to three mutations."""
    body = orjson.loads(encode(template(connector)))
    for apply in draw(st.lists(mutation(), min_size=1, max_size=3)):
        body = apply(body)
    raw = orjson.dumps(body)
    for depth in DEEP:
        raw = _expand_deep(raw, depth)
    return Payload(raw)


any_json_payload = json_values.map(orjson.dumps)
any_payload = st.binary(max_size=300) | any_json_payload


# --- the pure property ------------------------------------------------------------------------

# A column type that is a JSON array: ``type not in COLUMN_TYPES`` cannot even hash it.
UNHASHABLE_COLUMN_TYPE = orjson.dumps(
    {"batch_id": "b_1_1", "connector": "b",
     "tables": [{"name": "t", "schema": {"columns": [{"name": "a", "type": []}]}}]}
)  # fmt: skip


def plain(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {bytes(k): bytes(v) for k, v in fields.items()}


def _decodes_or_message_error(fields: dict[bytes, bytes]) -> None:
    reason = None
    try:
        batch = decode(plain(fields), MAX_PAYLOAD_BYTES)
    except MessageError as exc:  # anything else propagates and fails the property
        reason = exc.reason
    if reason is None:
        assert isinstance(batch, Batch)
    else:
        assert reason in BAD_REASONS


@UNIT
@given(st.binary(max_size=2000))
def test_decode_of_any_payload_bytes_is_a_batch_or_a_message_error(raw: bytes) -> None:
    """decode() of arbitrary payload bytes returns a Batch or raises a MessageError, never else."""
    _decodes_or_message_error({b"payload": raw})


@UNIT
@given(st.dictionaries(st.binary(max_size=20), st.binary(max_size=50), max_size=4))
def test_decode_of_any_entry_fields_is_a_batch_or_a_message_error(
    fields: dict[bytes, bytes],
) -> None:
    """decode() of arbitrary stream-entry fields (payload or not) never raises a foreign error."""
    _decodes_or_message_error(fields)


@UNIT
@given(any_json_payload | near_valid())
@example(UNHASHABLE_COLUMN_TYPE)
def test_decode_of_any_json_or_near_valid_batch_is_a_batch_or_a_message_error(raw: bytes) -> None:
    """decode() of any JSON value, or of a valid batch with wrong types, missing or extra keys,
    bad column types, deep nesting or oversize, returns a Batch or raises a MessageError."""
    _decodes_or_message_error({b"payload": raw})


# --- the worker under fuzz --------------------------------------------------------------------


class Rig:
    """The worker under test and what watches it (not a dataclass: hypothesis would print it
    field by field, every log event included)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        pg: asyncpg.Connection,
        schema: str,
        settings: Settings,
        events: list[dict[str, Any]],
    ) -> None:
        self.redis, self.pg, self.schema, self.settings = redis, pg, schema, settings
        self.events = events
        self.streams = itertools.count(1)

    def __repr__(self) -> str:
        return f"Rig(schema={self.schema!r})"


@pytest.fixture
async def rig(
    redis: aioredis.Redis, redis_url: str, pg_dsn: str, tmp_path: Path
) -> AsyncIterator[Rig]:
    """One in-process worker (PostgreSQL store) that every example of a test feeds."""
    schema = f"fuzz_{uuid.uuid4().hex[:10]}"
    worker_settings = fault_settings(
        redis_url, tmp_path, sink_url=f"{pg_dsn}?schema={schema}", block_ms=50,
        discovery_interval_s=0.1, read_count=20, max_deliveries=MAX_DELIVERIES,
        max_payload_bytes=MAX_PAYLOAD_BYTES,
    )  # fmt: skip
    pg = await asyncpg.connect(pg_dsn)
    try:
        with recorded_logs() as events:
            async with worker_task(worker_settings):
                yield Rig(redis, pg, schema, worker_settings, events)
    finally:
        await pg.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await pg.close()


@dataclass
class Sent:
    entry_id: str
    fields: dict[bytes, bytes]
    valid: Batch | None  # a template batch that must land unchanged


def describe(sent: list[Sent]) -> str:
    return "\n  ".join(
        f"{s.entry_id}: {'valid ' if s.valid else ''}{_short(plain(s.fields))}" for s in sent
    )


def _short(fields: dict[bytes, bytes]) -> str:
    return repr({k: Payload(v) for k, v in fields.items()})


def expected_reasons(fields: dict[bytes, bytes], connector: str) -> set[str] | None:
    """Dead-letter reasons this entry may end with on ``connector``'s stream; None if it may
    also land."""
    try:
        batch = decode(plain(fields), MAX_PAYLOAD_BYTES)
    except MessageError as exc:
        return {exc.reason}
    except Exception:  # decode() itself is buggy here; the worker must still contain it
        return BAD_REASONS
    if batch.connector != connector:
        return {"connector_mismatch"}  # the stream decides the connector
    parsed = keys.parse_batch_id(batch.batch_id)
    if parsed is not None and parsed[1] > time.time() * 1000:
        return {"future_batch_id", "sink_rejected"}
    return None


Entries = list[tuple[dict[bytes, bytes], Batch | None]]  # fields, and the batch if valid


async def feed_and_check(rig: Rig, build: Callable[[str], Entries]) -> None:
    """XADD one example's entries to a fresh stream, wait for the worker, check every entry."""
    connector = f"fz{next(rig.streams)}"
    stream = keys.stream(TENANT, connector)
    pipe = rig.redis.pipeline(transaction=False)
    entries = build(connector)
    for fields, _ in entries:
        pipe.xadd(stream, fields)
    ids = await pipe.execute()
    sent = [Sent(i.decode(), f, v) for i, (f, v) in zip(ids, entries, strict=True)]

    deadline = time.monotonic() + EXAMPLE_TIMEOUT_S
    while not await drained(rig.redis, [connector]):
        crashed = [e for e in rig.events if e.get("event") == "loop_crashed"
                   or (e.get("event") == "stream_handling_failed"
                       and e.get("connector") == connector)]  # fmt: skip
        assert not crashed, (
            f"the consumer loop crashed: {crashed[0].get('exception', '')[-400:]}\n"
            f"entries: {describe(sent)}"
        )
        assert time.monotonic() < deadline, (
            f"stalled: {await pending_count(rig.redis, connector)} entries still pending\n"
            f"entries: {describe(sent)}"
        )
        await _pause()

    letters = {
        f[b"original_id"].decode(): f
        for _, f in await rig.redis.xrange(keys.dead_letter_stream(TENANT, connector))
    }
    processed_key = keys.processed_set(TENANT)
    for entry in sent:
        letter = letters.get(entry.entry_id)
        reasons = expected_reasons(entry.fields, connector)
        if entry.valid is not None:
            assert letter is None, f"a valid batch was dead-lettered: {letter}"
            assert await rig.redis.sismember(processed_key, entry.valid.batch_id)
        elif reasons is not None:
            assert letter is not None, f"bad entry {entry.fields!r:.300} was not dead-lettered"
            assert letter[b"error_type"].decode() in reasons, letter
            assert letter[b"error"], "a dead letter must say why"
        elif letter is not None:
            # A mutation may give two entries one batch id with other content: a conflict.
            assert letter[b"error_type"] in (b"sink_rejected", b"batch_id_conflict"), letter
            assert letter[b"error"]
        else:
            batch = decode(plain(entry.fields), MAX_PAYLOAD_BYTES)
            assert await rig.redis.sismember(processed_key, batch.batch_id), (
                f"entry {entry.entry_id} neither landed nor was dead-lettered"
            )
    await check_valid_rows(rig, connector, [s.valid for s in sent if s.valid is not None])


async def check_valid_rows(rig: Rig, connector: str, batches: list[Batch]) -> None:
    """Each valid batch is in the inbox once and its rows are stored under its id."""
    if not batches:
        return
    ids = [b.batch_id for b in batches]
    inbox = await rig.pg.fetch(
        f'SELECT batch_id FROM "{rig.schema}"._dcl_inbox WHERE batch_id = ANY($1)', ids
    )
    assert sorted(r[0] for r in inbox) == sorted(ids)
    rows = await rig.pg.fetch(
        f'SELECT id, _dcl_batch_id FROM "{rig.schema}"."{connector}__deals" ORDER BY id'
    )
    expected = sorted(
        (r["id"], b.batch_id) for b in batches for t in b.tables for r in t.records or []
    )
    assert [(r[0], r[1]) for r in rows] == expected


async def _pause() -> None:
    await asyncio.sleep(0.05)  # polling interval of the drain check


def valid_entry(connector: str) -> tuple[dict[bytes, bytes], Batch]:
    batch = template(connector)
    return {b"payload": encode(batch)}, batch


raw_entries = (
    any_payload.map(lambda p: {b"payload": p})
    | st.dictionaries(st.binary(min_size=1, max_size=10), st.binary(max_size=30), min_size=1,
                      max_size=3)
)  # fmt: skip
near_valid_entries = near_valid().map(lambda p: {b"payload": p})


@st.composite
def among_valid(draw: st.DrawFn, bad: st.SearchStrategy[dict[bytes, bytes]]) -> list[Any]:
    """1-6 bad entries' fields and 1-4 None (a valid batch, made per stream), shuffled."""
    entries: list[Any] = draw(st.lists(bad, min_size=1, max_size=6))
    entries += [None] * draw(st.integers(1, 4))
    return list(draw(st.permutations(entries)))


def entries_for(order: list[dict[bytes, bytes] | None]) -> Callable[[str], Entries]:
    def build(connector: str) -> Entries:
        return [valid_entry(connector) if f is None else (on(connector, f), None) for f in order]

    return build


def on(connector: str, fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """A near-valid entry made for the stream it goes to (the stream decides the connector),
    writing its own table, so the valid batches' rows can be checked apart."""
    payload = fields.get(b"payload")
    if payload is None:
        return fields
    ours = payload.replace(b'"connector":"fuzzm"', b'"connector":"%s"' % connector.encode())
    ours = ours.replace(b'"name":"deals"', b'"name":"fuzzed"')
    return {**fields, b"payload": Payload(ours)}


def examples(strategy: st.SearchStrategy[list[Any]]) -> list[list[Any]]:
    """GENERATE.max_examples draws of ``strategy``, for the worker to be fed one by one."""
    drawn: list[list[Any]] = []

    @GENERATE
    @given(strategy)
    def collect(value: list[Any]) -> None:
        drawn.append(value)

    collect()
    return drawn


async def test_worker_dead_letters_arbitrary_entries_and_lands_the_valid_batches_between(
    rig: Rig,
) -> None:
    """Arbitrary bytes, arbitrary JSON and entries without a payload field, XADDed between valid
    batches: each bad one is dead-lettered as malformed_json, wrong_shape or oversize, each valid
    batch lands once, nothing stays pending, the consumer loop never crashes."""
    for order in examples(among_valid(raw_entries)):
        await feed_and_check(rig, entries_for(order))


async def test_worker_contains_near_valid_batches_and_lands_the_valid_batches_between(
    rig: Rig,
) -> None:
    """Valid batches broken by wrong types, missing or extra keys, huge strings, deep nesting, bad
    column types, non-object records or oversize, between valid batches: each either lands or is
    dead-lettered with its reason (sink_rejected if only the store refuses it), every valid batch
    lands once, nothing stays pending, the consumer loop never crashes."""
    for order in examples(among_valid(near_valid_entries)):
        await feed_and_check(rig, entries_for(order))
