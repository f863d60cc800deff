"""Message format v1: round trip, the guide's own example, unknown fields, and typed rejects."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from aam_dcl.errors import MalformedJson, PayloadTooLarge, WrongShape
from aam_dcl.messages import Batch, FullRefresh, decode, encode
from aam_dcl.schema import table_batch

# Verbatim from the configuration guide's "Message Format" section (the JSON string value).
GUIDE_PAYLOAD = (
    '{"batch_id":"salesforce_1762299908994_1","connector":"salesforce",'
    '"connector_config_id":"salesforce-demo-001","tables":[{"name":"opportunities",'
    '"schema":{"columns":[{"name":"account_name","type":"string"},'
    '{"name":"opportunity_id","type":"string"},{"name":"opportunity_name","type":"string"},'
    '{"name":"stage","type":"string"},{"name":"amount","type":"numeric"},'
    '{"name":"close_date","type":"datetime"},{"name":"created_at","type":"datetime"}]},'
    '"samples":[...],"stats":{"total_count":7,"sample_count":7}}]}'
)
MAX = 1024 * 1024


def test_guide_example_is_accepted_verbatim_as_schema_only() -> None:
    batch = decode({b"payload": GUIDE_PAYLOAD.encode()}, MAX)
    assert batch.batch_id == "salesforce_1762299908994_1"
    assert batch.connector_config_id == "salesforce-demo-001"
    (table,) = batch.tables
    assert table.name == "opportunities"
    assert [c.type for c in table.schema.columns][-3:] == ["numeric", "datetime", "datetime"]
    assert table.records is None  # schema-only: registers the schema, writes no rows
    assert table.total_count == 7
    assert batch.record_count == 0


def test_round_trip_keeps_records_schema_and_emitted_at() -> None:
    records = [{"id": "1", "amount": 10.5}, {"id": "2", "amount": 3}]
    original = Batch(
        batch_id="hubspot_1_1",
        connector="hubspot",
        connector_config_id="hubspot-1",
        tables=[table_batch("deals", records, primary_key=["id"], max_samples=1)],
        tenant_id="acme",
        emitted_at=1234.5,
    )
    decoded = decode({b"payload": encode(original)}, MAX)
    assert decoded == original
    assert decoded.tables[0].samples == records[:1]


def test_unknown_fields_are_ignored() -> None:
    body = orjson.loads(GUIDE_PAYLOAD.replace("[...]", "[]"))
    body["producer"] = "someone-else"
    body["tables"][0]["lineage"] = {"x": 1}
    batch = decode({b"payload": orjson.dumps(body), b"trace_id": b"abc"}, MAX)
    assert batch.batch_id == "salesforce_1762299908994_1"


@pytest.mark.parametrize(
    ("fields", "error", "text"),
    [
        ({b"payload": b"{not json"}, MalformedJson, "not valid JSON"),
        ({b"payload": b"[1, 2]"}, WrongShape, "JSON object"),
        ({b"data": b"{}"}, WrongShape, "no 'payload' field"),
        ({b"payload": b'{"connector": "x", "tables": []}'}, WrongShape, "'batch_id'"),
        ({b"payload": b'{"batch_id": "b", "connector": "x"}'}, WrongShape, "'tables'"),
        (
            {b"payload": b'{"batch_id":"b","connector":"x","tables":[{"name":"t","schema":{}}]}'},
            WrongShape,
            "schema.columns",
        ),
        (
            {
                b"payload": b'{"batch_id":"b","connector":"x","tables":[{"name":"t",'
                b'"schema":{"columns":[{"name":"a","type":"money"}]}}]}'
            },
            WrongShape,
            "'money'",
        ),
        (
            {
                b"payload": b'{"batch_id":"b","connector":"x","tables":[{"name":"t",'
                b'"schema":{"columns":[]},"records":[1]}]}'
            },
            WrongShape,
            "records[0]",
        ),
        ({b"payload": b'{"format_version": 2, "batch_id": "b"}'}, WrongShape, "format_version"),
    ],
)
def test_bad_entries_raise_a_typed_error_that_says_what_is_wrong(
    fields: dict[bytes, bytes], error: type[Exception], text: str
) -> None:
    with pytest.raises(error) as info:
        decode(fields, MAX)
    assert text in str(info.value)


def test_oversize_payload_is_rejected_before_parsing() -> None:
    """The size check comes first: an oversize payload is rejected even if it is not JSON."""
    with pytest.raises(PayloadTooLarge, match="AAM_MAX_PAYLOAD_BYTES=1024"):
        decode({b"payload": b"x" * 1025}, 1024)


def test_deeply_nested_json_is_rejected_not_crashing() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    with pytest.raises(MalformedJson):
        decode({b"payload": deep}, MAX)


def test_deleted_keys_and_the_full_refresh_marker_round_trip() -> None:
    table = table_batch("deals", [], primary_key=["id"], max_samples=0)
    table.deleted = [{"id": "7"}, {"id": "9"}]
    table.full_refresh = FullRefresh(run_start_ms=1762299908994, first_chunk=3, chunks=2)
    original = Batch("hs_1762299908994_5", "hs", "hs-1", [table], emitted_at=1.0)
    decoded = decode({b"payload": encode(original)}, MAX)
    assert decoded == original
    assert decoded.tables[0].deleted == [{"id": "7"}, {"id": "9"}]


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("deleted", {"id": 1}),
        ("deleted", [["1"]]),
        ("full_refresh", {"run_start_ms": 1, "first_chunk": 0, "chunks": 1}),
        ("full_refresh", {"run_start_ms": 1, "first_chunk": 1}),
        ("full_refresh", {"run_start_ms": "1", "first_chunk": 1, "chunks": 1}),
        ("full_refresh", [1, 1, 1]),
    ],
)
def test_a_malformed_deleted_list_or_marker_is_wrong_shape_naming_it(
    member: str, value: object
) -> None:
    body = orjson.loads(GUIDE_PAYLOAD.replace("[...]", "[]"))
    body["tables"][0][member] = value
    with pytest.raises(WrongShape, match=f"opportunities.*'{member}'"):
        decode({b"payload": orjson.dumps(body)}, MAX)


def test_a_decimal_is_encoded_as_its_own_digits() -> None:
    records = [{"id": "1", "amount": Decimal("1129863635.240000000000000001")}]
    batch = Batch("x_1_1", "x", "x", [table_batch("t", records, max_samples=0)], emitted_at=1.0)
    assert b'"amount":1129863635.240000000000000001' in encode(batch)
    records[0]["amount"] = Decimal("NaN")
    with pytest.raises(orjson.JSONEncodeError, match="Decimal"):  # NaN has no JSON form
        encode(batch)


def test_a_producers_long_emitted_at_does_not_take_the_exact_parse() -> None:
    """time.time() has 16-17 digits: only other numbers that long need the exact parse."""
    from aam_dcl.messages import loads

    assert type(loads(b'{"a":2.5,"emitted_at":1796173003.2934568}')["a"]) is float
    assert type(loads(b'{"emitted_at":1796173003.2934568,"a":2.5}')["a"]) is float
    exact = loads(b'{"a":1129863635.240000000001,"emitted_at":1796173003.2934568}')
    assert exact["a"] == Decimal("1129863635.240000000001")
    after = loads(b'{"emitted_at":1.5,"a":12345678901234567.5}')
    assert after["a"] == Decimal("12345678901234567.5")


def test_long_digit_runs_inside_strings_do_not_take_the_exact_parse() -> None:
    """An 18-digit id or a phone number is text: the fast parse keeps floats as floats; a
    long number wherever a JSON number can start is read exactly."""
    from aam_dcl.messages import loads

    body = loads(b'{"id":"006300000000000000","tel":"+155512345678901234","a":2.5}')
    assert type(body["a"]) is float
    exact = [
        (b'{"n":12345678901234567.5}', Decimal("12345678901234567.5")),
        (b'{"n":-1.2345678901234567e5}', Decimal("-1.2345678901234567e5")),
        (b'{"a":1,"n":[1,12345678901234567.25]}', Decimal("12345678901234567.25")),
        (b'{"n":[12345678901234567.5]}', Decimal("12345678901234567.5")),
        (b'{"n": 12345678901234567.5}', Decimal("12345678901234567.5")),
        (b'{"a":2.5,"n":123456789012345678901}', 123456789012345678901),
    ]
    for raw, value in exact:
        n = loads(raw)["n"]
        assert (n[-1] if isinstance(n, list) else n) == value, raw
        assert type(n[-1] if isinstance(n, list) else n) is type(value), raw
