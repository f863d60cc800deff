"""The stream entry, format version 1: one field ``payload`` holding a JSON batch.

Decoding is the worker's first line of defence: size is checked before parsing, the shape
is checked with plain type tests (no per-record validation objects: they would dominate
the hot path), and unknown fields are ignored so that other producers can add their own.

Numbers keep their decimal value exactly. ``encode`` writes a ``Decimal`` as its own digits.
``decode`` parses with orjson (floats) when every number in the payload has at most 15
significant digits, which a double holds exactly (its shortest repr is the number's value),
and otherwise with the standard library, numbers with a fraction or exponent becoming
``Decimal`` and integers staying exact however long.

Optional per-table members beyond the configuration guide's example (producers that don't
know them are unaffected): ``deleted``, the primary keys of rows deleted at the source, and
``full_refresh``, the completion marker of a run that read the table in full.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
import xxhash

from aam_dcl.errors import MalformedJson, PayloadTooLarge, WrongShape

FORMAT_VERSION = 1
PAYLOAD_FIELD = b"payload"
GUIDE_PLACEHOLDER = b'"samples":[...]'
COLUMN_TYPES = frozenset({"string", "integer", "numeric", "boolean", "datetime", "date", "json"})
FINGERPRINT_SCHEME = "xxh3"  # prefix of every fingerprint: a later scheme is never compared
_EMITTED_AT_KEY = b'"emitted_at":'
_STRUCTURE = frozenset(b"[]{}")
# A number a double may not hold exactly has 16 or more significant digits: 17 or more
# digits, points or a minus sign in a row, where a JSON number can start (after ":", ",",
# "[" or white space). One C-speed translate maps digits, "." and "-" to "0" and those
# separators to "S"; a long number is then "S" + 17 "0"s (about 1.5 GB/s; a regex takes
# 10-40 times longer). An 18-digit id inside a string follows a quote or a letter, not a
# separator, so it is text; a long run after a space inside a string only costs the slower
# exact parse.
_NUMBER_BYTES = bytes(
    0x30 if chr(c) in "0123456789.-" else 0x53 if chr(c) in ":,[ \t\r\n" else 0x78
    for c in range(256)
)
_LONG_NUMBER = b"S" + b"0" * 17

Record = dict[str, Any]


@dataclass(slots=True)
class Column:
    name: str
    type: str


@dataclass(slots=True)
class TableSchema:
    columns: list[Column]
    primary_key: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"columns": [{"name": c.name, "type": c.type} for c in self.columns]}
        if self.primary_key:
            out["primary_key"] = self.primary_key
        return out


@dataclass(frozen=True, slots=True)
class FullRefresh:
    """The completion marker of a run that read one table in full.

    The run's chunks of this table are ``{connector}_{run_start_ms}_{first_chunk}`` up to
    ``first_chunk + chunks - 1``. Once all of them are applied, the table's rows that the
    run did not write are deleted at the source.
    """

    run_start_ms: int
    first_chunk: int
    chunks: int

    def to_json(self) -> dict[str, int]:
        return {
            "run_start_ms": self.run_start_ms,
            "first_chunk": self.first_chunk,
            "chunks": self.chunks,
        }


@dataclass(slots=True)
class TableBatch:
    """One table's part of a batch. ``records`` is None in a schema-only entry; ``deleted``
    holds primary-key objects of rows deleted at the source."""

    name: str
    schema: TableSchema
    samples: list[Record]
    total_count: int
    records: list[Record] | None = None
    deleted: list[Record] | None = None
    full_refresh: FullRefresh | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "schema": self.schema.to_json(),
            "samples": self.samples,
            "stats": {"total_count": self.total_count, "sample_count": len(self.samples)},
        }
        if self.records is not None:
            out["records"] = self.records
        if self.deleted is not None:
            out["deleted"] = self.deleted
        if self.full_refresh is not None:
            out["full_refresh"] = self.full_refresh.to_json()
        return out


@dataclass(slots=True)
class Batch:
    batch_id: str
    connector: str
    connector_config_id: str
    tables: list[TableBatch]
    tenant_id: str | None = None
    emitted_at: float | None = None  # unix seconds, set by the producer just before XADD
    # The payload's content (payload_fingerprint), set by decode(); None for a batch built in
    # code: a sink then never compares it. Not part of equality: it describes the bytes.
    fingerprint: str | None = field(default=None, compare=False)

    @property
    def record_count(self) -> int:
        return sum(len(t.records) for t in self.tables if t.records)


def encode(batch: Batch) -> bytes:
    """The ``payload`` field's value. Stamps ``emitted_at`` unless already set."""
    body: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "batch_id": batch.batch_id,
        "connector": batch.connector,
        "connector_config_id": batch.connector_config_id,
        "tables": [t.to_json() for t in batch.tables],
        "emitted_at": batch.emitted_at if batch.emitted_at is not None else time.time(),
    }
    if batch.tenant_id is not None:
        body["tenant_id"] = batch.tenant_id
    return orjson.dumps(body, default=_exact_number)


def _exact_number(value: Any) -> orjson.Fragment:
    """orjson's fallback: a Decimal is written as its own digits, never through a float."""
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(str(value))
    raise TypeError(f"{value!r} ({type(value).__name__}) has no JSON form")


def entry(payload: bytes) -> dict[bytes, bytes]:
    """A stream entry's fields holding ``payload`` (an encoded batch, or bytes to re-send)."""
    return {PAYLOAD_FIELD: payload}


def payload_of(fields: Mapping[bytes, bytes]) -> bytes | None:
    """The payload of a stream entry's fields; None if it has none."""
    return fields.get(PAYLOAD_FIELD)


def decode(fields: Mapping[bytes, bytes], max_payload_bytes: int) -> Batch:
    """Parse one stream entry's fields into a Batch, or raise a MessageError saying why not."""
    raw = payload_of(fields)
    if raw is None:
        raise WrongShape(f"entry has no 'payload' field (fields: {sorted(map(_text, fields))})")
    if len(raw) > max_payload_bytes:
        raise PayloadTooLarge(
            f"payload is {len(raw)} bytes, over AAM_MAX_PAYLOAD_BYTES={max_payload_bytes}"
        )
    try:
        body = loads(raw)
    except ValueError as exc:  # orjson's and json's decode errors are ValueErrors
        body = _guide_example(raw)
        if body is None:
            raise MalformedJson(f"payload is not valid JSON: {exc}") from None
    batch = from_json(body)
    batch.fingerprint = payload_fingerprint(raw, body)
    return batch


def loads(raw: bytes) -> Any:
    """JSON with every number's value exact (see the module docstring)."""
    if not _has_long_number(raw):
        return orjson.loads(raw)
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_no_constant)
    except RecursionError:  # orjson refuses nesting past 1024 levels with a ValueError too
        raise ValueError("nested too deeply") from None


def _has_long_number(raw: bytes) -> bool:
    """Whether a number in ``raw`` may have more digits than a double holds (see
    ``_NUMBER_BYTES``). ``emitted_at`` is left out: a producer's ``time.time()`` has 16-17
    digits, and it is only a timestamp."""
    shapes = raw.translate(_NUMBER_BYTES)
    found = shapes.count(_LONG_NUMBER)
    if not found:
        return False
    at = raw.rfind(_EMITTED_AT_KEY)
    stamp_is_long = at >= 0 and shapes.startswith(_LONG_NUMBER, at + len(_EMITTED_AT_KEY) - 1)
    return found > stamp_is_long


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def payload_fingerprint(raw: bytes, body: dict[str, Any]) -> str | None:
    """What a batch's content is, cheaply: ``xxh3:`` + the 128-bit xxh3 digest of the payload
    bytes without the top-level ``"emitted_at":<value>``.

    The bridge re-sends a batch after a lost reply under the same id with a new emitted_at
    (stamped at encode time), so that one member is left out; everything else (tables, records,
    flags) is the content. The whole fingerprint of a 40 KB payload takes 2-6 µs (xxh3 itself
    about 1 µs; hashlib's sha256 about 36 µs, blake2b about 80 µs), against 125-215 µs for
    parsing it. orjson writes emitted_at after tables, so the member is found from the right
    with rfind, and taken only if it is the top-level one: its value is the decoded one and
    nothing after it opens or closes a container (a nested member is always followed by a
    closing bracket). A payload laid out otherwise (another producer) is hashed in a normal
    form, orjson's re-encoding of the body without emitted_at; if even that fails (nesting
    deeper than orjson writes), None: not compared, never a false conflict.
    """
    at = raw.rfind(_EMITTED_AT_KEY)
    if at < 0 and "emitted_at" not in body:
        return _digest(raw)
    value = body.get("emitted_at")
    if at >= 0 and type(value) in (int, float, Decimal):
        start = at + len(_EMITTED_AT_KEY)
        encoded = str(value).encode() if type(value) is Decimal else orjson.dumps(value)
        end = start + len(encoded)
        tail = raw[end:].rstrip()
        if (
            raw.startswith(encoded, start)
            and tail[:1] in (b",", b"}")
            and tail.endswith(b"}")
            and _STRUCTURE.isdisjoint(tail[:-1])
        ):
            view = memoryview(raw)
            return _digest(view[:at], view[end:])
    try:
        normal = orjson.dumps(
            {k: v for k, v in body.items() if k != "emitted_at"}, default=_exact_number
        )
    except orjson.JSONEncodeError:
        return None
    return _digest(normal)


def _digest(*parts: bytes | memoryview) -> str:
    h = xxhash.xxh3_128()
    for part in parts:
        h.update(part)
    return f"{FINGERPRINT_SCHEME}:{h.hexdigest()}"


def fingerprints_conflict(stored: str | None, incoming: str | None) -> bool:
    """True if two copies of one batch id have different content. A copy without a
    fingerprint, or one of another scheme, is never a conflict."""
    if stored is None or incoming is None or stored == incoming:
        return False
    return stored.partition(":")[0] == incoming.partition(":")[0]


def _guide_example(raw: bytes) -> Any:
    """The configuration guide's example writes ``"samples":[...]`` literally; read that as []."""
    if GUIDE_PLACEHOLDER not in raw:
        return None
    try:
        return orjson.loads(raw.replace(GUIDE_PLACEHOLDER, b'"samples":[]'))
    except orjson.JSONDecodeError:
        return None


def from_json(body: Any) -> Batch:
    if not isinstance(body, dict):
        raise WrongShape(f"payload must be a JSON object, not {type(body).__name__}")
    version = body.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise WrongShape(f"format_version {version!r} is not supported (this worker reads 1)")
    batch_id = _required_str(body, "batch_id", "payload")
    connector = _required_str(body, "connector", "payload")
    config_id = body.get("connector_config_id", connector)
    tables = body.get("tables")
    if not isinstance(tables, list):
        raise WrongShape(f"batch {batch_id}: 'tables' must be a list")
    emitted_at = body.get("emitted_at")
    return Batch(
        batch_id=batch_id,
        connector=connector,
        connector_config_id=config_id if isinstance(config_id, str) else connector,
        tables=[_table(batch_id, i, t) for i, t in enumerate(tables)],
        tenant_id=body.get("tenant_id") if isinstance(body.get("tenant_id"), str) else None,
        emitted_at=float(emitted_at) if isinstance(emitted_at, int | float | Decimal) else None,
    )


def _table(batch_id: str, index: int, body: Any) -> TableBatch:
    where = f"batch {batch_id}: tables[{index}]"
    if not isinstance(body, dict):
        raise WrongShape(f"{where} must be an object")
    name = _required_str(body, "name", where)
    schema = body.get("schema")
    if not isinstance(schema, dict) or not isinstance(schema.get("columns"), list):
        raise WrongShape(f"{where} ({name}): 'schema.columns' must be a list")
    columns = []
    for col in schema["columns"]:
        if not (isinstance(col, dict) and isinstance(col.get("name"), str) and col["name"]):
            raise WrongShape(f"{where} ({name}): every column needs a non-empty 'name'")
        col_type = col.get("type", "string")
        if not isinstance(col_type, str) or col_type not in COLUMN_TYPES:
            raise WrongShape(
                f"{where} ({name}): column {col['name']!r} has type {col_type!r}; "
                f"allowed: {', '.join(sorted(COLUMN_TYPES))}"
            )
        columns.append(Column(col["name"], col_type))
    primary_key = schema.get("primary_key") or []
    if not (isinstance(primary_key, list) and all(isinstance(k, str) for k in primary_key)):
        raise WrongShape(f"{where} ({name}): 'schema.primary_key' must be a list of names")
    records = body.get("records")
    if records is not None:
        if not isinstance(records, list):
            raise WrongShape(f"{where} ({name}): 'records' must be a list")
        if set(map(type, records)) - {dict}:  # C speed; find the culprit only when there is one
            n = next(i for i, r in enumerate(records) if type(r) is not dict)
            raise WrongShape(f"{where} ({name}): records[{n}] must be an object")
    deleted = body.get("deleted")
    if deleted is not None and (not isinstance(deleted, list) or set(map(type, deleted)) - {dict}):
        raise WrongShape(f"{where} ({name}): 'deleted' must be a list of primary-key objects")
    samples = body.get("samples")
    stats = body.get("stats")
    total = stats.get("total_count") if isinstance(stats, dict) else None
    return TableBatch(
        name=name,
        schema=TableSchema(columns, primary_key),
        # The guide's own example writes "samples": [...] literally; keep only real samples.
        samples=[s for s in samples if isinstance(s, dict)] if isinstance(samples, list) else [],
        total_count=total if isinstance(total, int) else len(records or []),
        records=records,
        deleted=deleted,
        full_refresh=_full_refresh(body.get("full_refresh"), f"{where} ({name})"),
    )


def _full_refresh(body: Any, where: str) -> FullRefresh | None:
    if body is None:
        return None
    fields: dict[str, Any] = body if isinstance(body, dict) else {}
    values: list[Any] = [fields.get(n) for n in ("run_start_ms", "first_chunk", "chunks")]
    if not all(type(v) is int and v >= 0 for v in values) or values[1] < 1:
        raise WrongShape(
            f"{where}: 'full_refresh' must be an object of integers run_start_ms >= 0, "
            "first_chunk >= 1 and chunks >= 0"
        )
    run_start_ms, first_chunk, chunks = values
    return FullRefresh(run_start_ms, first_chunk, chunks)


def _required_str(body: dict[str, Any], key: str, where: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise WrongShape(f"{where}: '{key}' must be a non-empty string")
    return value


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
