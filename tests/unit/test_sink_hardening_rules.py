"""The store-independent rules of the sink hardening: batch fingerprints, the tenant schema
name, the column limit and case collisions as the planner sees them (no store involved)."""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from aam_dcl.errors import ConfigError, PoisonBatch
from aam_dcl.keys import NAME_RE
from aam_dcl.messages import (
    Batch,
    decode,
    encode,
    fingerprints_conflict,
    payload_fingerprint,
)
from aam_dcl.schema import table_batch
from dcl_worker.sinks._sql import TableInfo, fold, plan_table, plan_writes
from dcl_worker.sinks._tenancy import adopt_legacy, check_owner, tenant_schema

MAX = 1 << 24


def crm_batch(records: list[dict[str, Any]], batch_id: str = "crm_1762299908994_1") -> Batch:
    tb = table_batch("deals", records, primary_key=["id"], max_samples=2)
    tb.records = records
    return Batch(batch_id, "crm", "crm-001", [tb], tenant_id="acme")


def fingerprint_of(raw: bytes) -> str | None:
    return decode({b"payload": raw}, MAX).fingerprint


RECORDS: list[dict[str, Any]] = [
    {"id": i, "name": f"deal {i}", "amount": i * 2.5} for i in range(50)
]


# --- fingerprints ---------------------------------------------------------------------------


def test_a_resend_with_a_new_emitted_at_has_the_same_fingerprint() -> None:
    """The bridge re-encodes a batch after a lost reply: only emitted_at differs."""
    b = crm_batch(RECORDS)
    first, second = encode(b), encode(b)
    assert first != second  # a new emitted_at each time
    assert fingerprint_of(first) == fingerprint_of(second)
    assert str(fingerprint_of(first)).startswith("xxh3:")


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r[0].update(name="changed"),
        lambda r: r.append({"id": 99, "name": "extra", "amount": 0.0}),
        lambda r: r[3].update(amount=7.5000001),
    ],
    ids=["value", "record", "float"],
)
def test_other_content_under_the_same_id_has_another_fingerprint(
    change: Callable[[list[dict[str, Any]]], None],
) -> None:
    """A changed value, an added record, a float off in the 7th digit: another fingerprint."""
    records = [dict(r) for r in RECORDS]
    change(records)
    assert fingerprint_of(encode(crm_batch(records))) != fingerprint_of(encode(crm_batch(RECORDS)))


def test_a_record_field_named_emitted_at_is_content() -> None:
    """Only the top-level emitted_at is left out: a record's own emitted_at field is content,
    also when it carries the same value as the top-level one."""
    stamp = 1762299908.5
    same = [{"id": 1, "emitted_at": stamp}]
    other = [{"id": 1, "emitted_at": stamp + 1}]
    b_same, b_other = crm_batch(same), crm_batch(other)
    b_same.emitted_at = b_other.emitted_at = stamp
    assert fingerprint_of(encode(b_same)) != fingerprint_of(encode(b_other))
    resent = crm_batch(same)
    resent.emitted_at = stamp + 60
    assert fingerprint_of(encode(resent)) == fingerprint_of(encode(b_same))


def test_another_producers_layout_is_fingerprinted_without_emitted_at() -> None:
    """emitted_at first and json.dumps' spaces (another producer): a resend with a new
    emitted_at still has the same fingerprint, other content another one."""

    def payload(emitted_at: float, name: str) -> bytes:
        body = orjson.loads(encode(crm_batch([{"id": 1, "name": name}])))
        del body["emitted_at"]
        return json.dumps({"emitted_at": emitted_at, **body}).encode()

    assert fingerprint_of(payload(1.0, "a")) == fingerprint_of(payload(2.5, "a"))
    assert fingerprint_of(payload(1.0, "a")) != fingerprint_of(payload(1.0, "b"))


def test_a_payload_without_emitted_at_is_fingerprinted_whole() -> None:
    """No emitted_at at all (another producer): the whole payload is the content."""
    body = orjson.loads(encode(crm_batch(RECORDS)))
    del body["emitted_at"]
    raw = orjson.dumps(body)
    assert fingerprint_of(raw) == payload_fingerprint(raw, body) is not None


def test_a_batch_built_in_code_has_no_fingerprint_and_never_conflicts() -> None:
    """None means not compared; so does another fingerprint scheme (a later worker's)."""
    assert crm_batch(RECORDS).fingerprint is None
    assert not fingerprints_conflict(None, "xxh3:aa")
    assert not fingerprints_conflict("xxh3:aa", None)
    assert not fingerprints_conflict("xxh3:aa", "xxh3:aa")
    assert not fingerprints_conflict("xxh3:aa", "other:bb")
    assert fingerprints_conflict("xxh3:aa", "xxh3:bb")


def test_fingerprint_costs_a_few_microseconds_per_40_kb() -> None:
    """The consume leg is benchmarked: the fingerprint must stay far below decoding."""
    records = [{"id": f"opp-{i:06d}", "name": f"Deal {i}", "note": "x" * 150} for i in range(200)]
    raw = encode(crm_batch(records))
    assert 35_000 < len(raw) < 50_000
    body = orjson.loads(raw)
    best_s = min(timeit.repeat(lambda: payload_fingerprint(raw, body), number=200, repeat=5))
    assert best_s / 200 < 50e-6  # measured ~2 us; generous for a loaded 2-core machine


# --- the tenant's schema --------------------------------------------------------------------


def test_tenant_schema_rule() -> None:
    """default keeps the store's default schema; others get dcl_<tenant>; long ids are cut to
    63 bytes with a digest, so two long ids never share a (silently truncated) name."""
    assert tenant_schema("default", "public") == "public"
    assert tenant_schema("default", "main") == "main"
    assert tenant_schema("acme.eu-1", "public") == "dcl_acme.eu-1"
    long_a, long_b = "a" * 63 + "x", "a" * 63 + "y"
    assert NAME_RE.match(long_a)
    assert NAME_RE.match(long_b)
    assert len(tenant_schema("a" * 59, "public")) == 63
    for tenant in (long_a, long_b):
        assert len(tenant_schema(tenant, "public").encode()) == 63
    assert tenant_schema(long_a, "public") != tenant_schema(long_b, "public")


def test_owner_rules() -> None:
    """The owner writes; another tenant, or a schema holding another tenant's batches from
    before owners were recorded, is ConfigError naming both and the schema."""
    assert check_owner("dcl_tx", "tx", [], []) is True  # claim it
    assert check_owner("dcl_tx", "tx", ["tx"], []) is False
    with pytest.raises(ConfigError, match=r"'dcl_tx' belongs to tenant 'tx'.*'ty'"):
        check_owner("dcl_tx", "ty", ["tx"], [])
    with pytest.raises(ConfigError, match=r"holds batches of tenant\(s\) 'tx'.*'ty'"):
        check_owner("public", "ty", [], ["tx"])
    assert adopt_legacy("public", "tx", ["tx"]) is True
    assert adopt_legacy("public", "ty", ["tx"]) is False
    with pytest.raises(ConfigError, match="'tx' and of 'ty'"):
        adopt_legacy("public", "tx", ["tx", "ty"])


# --- the planner ----------------------------------------------------------------------------


def test_fold_ignores_ascii_case_only() -> None:
    """As DuckDB compares identifiers: Bar = bar, but É and é stay two names."""
    assert fold("Crm__Bar") == fold("crm__bar")
    assert fold("É") != fold("é")


def test_plan_refuses_case_collisions_within_a_write_naming_both() -> None:
    """Name and name in two batches of one write: the second batch is named, with both."""
    b1 = crm_batch([{"id": 1, "Name": "a"}], "crm_1_1")
    b2 = crm_batch([{"id": 2, "name": "b"}], "crm_1_2")
    with pytest.raises(PoisonBatch, match="'name' collides with 'Name'") as info:
        plan_writes([b1, b2])
    assert (info.value.reason, info.value.batch_id) == ("name_collision", "crm_1_2")


def test_plan_table_names_the_batch_whose_columns_pass_the_limit() -> None:
    """Against a stored table of 8 columns and a limit of 10: the batch that brings the 11th
    column is named, not the first batch of the write."""
    stored = TableInfo({f"c{i}": "integer" for i in range(8)}, [])
    b1 = crm_batch([{"id": 1, "c8": 1}], "crm_1_1")  # id and c8: 10 columns
    b2 = crm_batch([{"id": 2, "c9": 1}], "crm_1_2")  # c9: the 11th
    (tw,) = plan_writes([b1, b2], max_columns=10)
    with pytest.raises(PoisonBatch, match="would have 11 columns") as info:
        plan_table(stored, tw, max_columns=10)
    assert info.value.batch_id == "crm_1_2"
    (alone,) = plan_writes([b1], max_columns=10)
    assert plan_table(stored, alone, max_columns=10).add == {"id": "integer", "c8": "integer"}


def test_a_table_already_wider_than_a_lowered_limit_still_takes_rows() -> None:
    """DCL_MAX_COLUMNS lowered below a stored table's width: rows into its columns still go."""
    stored = TableInfo({"id": "integer", "c8": "integer", "c9": "integer"}, ["id"])
    (tw,) = plan_writes([crm_batch([{"id": 1, "c8": 2}])], max_columns=2)
    assert not plan_table(stored, tw, max_columns=2).needed
